"""Fetch, verify (SHA-256) and extract the official Speech Commands archives.

Needs network access to download.tensorflow.org; where there is none, it fails with a one-line message.
An archive you downloaded elsewhere can be verified and extracted with --archive FILE.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from kws.errors import KWSError
from kws.io import pid_alive

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


STAGING_PREFIX = ".extract-"
"""Extraction goes to ``OUT/.extract-PID-XXXX/`` and is renamed into place when complete."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _extract_filter(umask: int):
    """tarfile's ``data`` filter (no absolute paths, no links out, no devices), then the permissions that
    ``tar`` without ``-p`` gives a normal user: the archive's modes are not kept; files get
    ``0o666 & ~umask`` (``0o777`` if executable), folders the default ``0o777 & ~umask``."""

    def extract_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        member = tarfile.data_filter(member, dest_path)
        if member.isdir():
            return member.replace(mode=None, deep=False)  # os.mkdir's default: 0o777 & ~umask
        if member.isfile():
            base = 0o777 if member.mode is not None and member.mode & 0o100 else 0o666
            return member.replace(mode=base & ~umask, deep=False)
        return member

    return extract_filter


def clean_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the ``.extract-*`` folders that an interrupted (killed) extraction left in ``out_dir``.

    A staging folder is named after the process that writes it; one whose process is still running (another
    ``kws download`` into the same folder) is left alone. Returns the folders removed.
    """
    removed = []
    for path in sorted(out_dir.glob(STAGING_PREFIX + "*")):
        if not path.is_dir() or path.is_symlink():
            continue
        pid_text = path.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and pid_alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        logger.info(
            "removed %d partial extraction folder(s) left by an interrupted kws download in %s: %s",
            len(removed),
            out_dir,
            ", ".join(p.name for p in removed),
        )
    return removed


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
    if not hasattr(tarfile, "data_filter"):
        raise KWSError("safe extraction needs a Python with tarfile filters (3.10.12+, 3.11.4+, 3.12+)")
    umask = _umask()
    tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out_dir))
    try:
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; it becomes the dataset folder
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter=_extract_filter(umask))
        tmp.rename(target)
    except BaseException as exc:  # a failure or Ctrl-C: nothing half-extracted stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error)):
            raise KWSError(f"{archive}: not a valid Speech Commands archive ({exc})") from None
        if isinstance(exc, OSError):  # e.g. a full disk
            raise KWSError(f"cannot extract {archive} into {out_dir}: {exc.strerror or exc}") from None
        raise
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
    clean_stale_staging(args.out)
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
