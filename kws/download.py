"""Fetch, verify (SHA-256) and extract the official Speech Commands archives.

Needs network access to download.tensorflow.org; where there is none, it fails with a one-line message.
An archive you downloaded elsewhere can be verified and extracted with --archive FILE.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from kws.errors import KWSError

logger = logging.getLogger(__name__)

BASE_URL = "https://storage.googleapis.com/download.tensorflow.org/data/"
ARCHIVES: dict[str, tuple[str, str | None]] = {
    # name: (file, SHA-256 published with torchaudio's SPEECHCOMMANDS; None: not published, printed instead)
    "v0.01": ("speech_commands_v0.01.tar.gz", "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d"),
    "v0.02": ("speech_commands_v0.02.tar.gz", "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),
    "test-v0.02": ("speech_commands_test_set_v0.02.tar.gz", None),
}
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 30


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (atomically, with a progress bar)."""
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS)  # noqa: S310 (fixed https URL)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KWSError(
            f"cannot download {url} ({reason}); download it on a machine with network access and "
            f"run `kws download --archive FILE`"
        ) from None
    total = int(response.headers.get("Content-Length") or 0)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        from tqdm import tqdm

        with open(tmp, "wb") as out, tqdm(total=total or None, unit="B", unit_scale=True, desc=dest.name) as bar:
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(block)
                bar.update(len(block))
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def verify_and_extract(archive: Path, expected: str | None, out_dir: Path) -> Path:
    """Check the SHA-256, then extract into ``out_dir/NAME`` (via a temporary folder, so never half done)."""
    digest = sha256(archive)
    if expected and digest != expected:
        raise KWSError(f"{archive.name}: SHA-256 {digest} does not match the published {expected}")
    logger.info("%s: SHA-256 %s%s", archive.name, digest, " (verified)" if expected else "")
    target = out_dir / archive.name.removesuffix(".tar.gz")
    if target.exists():
        logger.info("%s already exists; not extracting again", target)
        return target
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=out_dir))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        tmp.rename(target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KWSError(f"{archive}: not a valid Speech Commands archive ({exc})") from None
    return target


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--version",
        dest="dataset",
        choices=list(ARCHIVES),
        default="v0.02",
        help="which archive: the full v0.01 or v0.02 dataset, or the v0.02 12-class test archive "
        "(default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("data"), help="where to extract (default: %(default)s)")
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="verify and extract an archive already downloaded, instead of fetching it",
    )


def run(args: argparse.Namespace) -> int:
    name, expected = ARCHIVES[args.dataset]
    args.out.mkdir(parents=True, exist_ok=True)
    archive = args.archive
    if archive is None:
        archive = args.out / name
        if not archive.exists():
            fetch(BASE_URL + name, archive)
    elif not archive.is_file():
        raise KWSError(f"archive {archive} does not exist")
    target = verify_and_extract(archive, expected, args.out)
    print(f"Speech Commands {args.dataset}: {target}")
    return 0
