"""Decoded-audio cache: each data folder decoded once into a memory-mapped int16 array plus an index (torch-free).

Decoding tens of thousands of small WAV/FLAC files is the slow part of starting a run on the full dataset, and
every process of a distributed run (and every later run) would repeat it. :func:`open_cache` decodes a folder
once into ``CACHE_DIR/NAME-HASH-KIND/``:

* ``audio.int16``: the samples of every file, back to back (int16; read with ``numpy.memmap``, so the pages are
  shared by every process on the machine through the page cache and only the clips a batch touches are read);
* ``index.json``: the format version, the key, each file's offset and length, the files that could not be read
  (with their error) and the CRC-32 of ``audio.int16``.

Two kinds of cache hold exactly what :func:`kws.data.splits.load_split` would otherwise compute:

* ``clips`` (Speech Commands folders): each file's clip window, ``fit_length(load_audio(path, rate,
  max_seconds=clip_seconds), clip_samples)`` as int16, one row ``[clip_samples]`` per file;
* ``files`` (``--negatives`` folders of long recordings, cropped at random offsets): each whole file as int16, for
  files already at the target rate (a crop of those is bit-identical to a windowed read); files at another rate
  are listed as ``direct`` and read from disk as before.

The key is the SHA-256 of the cache format, the kind, the rate, the clip length and the folder's file list (each
file's relative path, size and modification time in ns): a file added, removed or rewritten changes it and the
cache is rebuilt. A cache whose index does not parse, whose key differs, whose data file has the wrong size or
whose checksum does not match is rebuilt, never trusted. Building takes an exclusive lock (``flock`` on
``.lock`` in the cache's folder), so concurrent processes (the ranks of one run, or two runs) build it once; the
new files are renamed into place, the index last, so a killed build leaves no cache that looks valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws.data.audio import AudioError, fit_length, float_to_int16, load_audio
from kws.errors import KWSError
from kws.io import file_lock

logger = logging.getLogger(__name__)

CACHE_FORMAT = "kws-audio-cache"
CACHE_VERSION = 1
CACHE_ENV = "KWS_CACHE_DIR"
"""Environment variable naming the default cache folder of ``kws train`` (else ``$XDG_CACHE_HOME/kws``)."""
DATA_FILE, INDEX_FILE, LOCK_FILE = "audio.int16", "index.json", ".lock"
CLIPS, FILES = "clips", "files"
_CHUNK = 16 << 20
_PATH_PLACEHOLDER = "{path}"

Progress = Callable[[Iterable, int, str], Iterable]


class CacheError(KWSError):
    """The cache folder cannot be created, locked or written."""


def default_cache_dir() -> Path:
    """``$KWS_CACHE_DIR``, else ``$XDG_CACHE_HOME/kws``, else ``~/.cache/kws``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "kws"
    try:
        return Path.home() / ".cache" / "kws"
    except RuntimeError:  # no home directory
        return Path(".kws-cache").resolve()


@dataclass(frozen=True)
class FileEntry:
    """One file of a cached folder: ``audio.int16[offset : offset + length]`` (samples)."""

    offset: int
    length: int


class AudioCache:
    """An opened, verified cache of one folder.

    Attributes:
        root: the folder (resolved); ``root_given``: as the caller named it (for messages).
        kind: ``clips`` or ``files``.
        audio: int16 memmap, ``[files, clip_samples]`` for ``clips``, ``[samples]`` for ``files``.
        entries: relative path -> :class:`FileEntry` of every cached file.
        errors: relative path -> the error of each file that could not be read.
        direct: relative paths of files that are not cached (another sample rate): read them from disk.
        nbytes: size of ``audio.int16`` in bytes.
    """

    def __init__(self, root: Path, folder: Path, kind: str, index: dict, audio: np.ndarray) -> None:
        self.root_given = root
        self.root = root.resolve()
        self.folder = folder
        self.kind = kind
        self.audio = audio
        self.entries = {
            name: FileEntry(int(off), int(n))
            for name, off, n in zip(index["files"], index["offsets"], index["lengths"], strict=True)
        }
        self.errors: dict[str, str] = dict(index["errors"])
        self.direct: frozenset[str] = frozenset(index["direct"])
        self.nbytes = int(audio.nbytes)

    def row(self, name: str) -> int | None:
        """The row of a ``clips`` cache holding the file ``name`` (relative to the root, posix); None for a file
        the cache does not hold.

        Raises:
            AudioError: the file could not be read when the cache was built (the message reading it gives).
        """
        if name in self.errors:
            raise AudioError(self.errors[name].replace(_PATH_PLACEHOLDER, str(self.root_given / name)))
        entry = self.entries.get(name)
        return None if entry is None else entry.offset // max(self.audio.shape[-1], 1)

    def samples(self, name: str) -> np.ndarray | None:
        """The whole int16 audio ``[samples]`` of the file ``name`` in a ``files`` cache (a view of the memmap);
        None for a file it does not hold (see :attr:`direct`).

        Raises:
            AudioError: as :meth:`row`.
        """
        if name in self.direct:
            return None
        if name in self.errors:
            raise AudioError(self.errors[name].replace(_PATH_PLACEHOLDER, str(self.root_given / name)))
        entry = self.entries.get(name)
        if entry is None:
            return None
        return self.audio[entry.offset : entry.offset + entry.length]


def crop(samples: np.ndarray, sample_rate: int, clip_samples: int, position: float) -> np.ndarray:
    """The clip :func:`kws.data.splits.load_split` reads from a long file at ``position`` (``load_audio(path,
    sample_rate, max_seconds=clip_samples / sample_rate, position=position)``, padded), computed from the whole
    file's samples when the file is already at ``sample_rate``: int16 ``[clip_samples]``, bit-identical."""
    max_seconds = clip_samples / sample_rate
    want = int(np.ceil(max_seconds * sample_rate))
    start = int(round(position * (len(samples) - want))) if len(samples) > want else 0
    window = samples[start : start + want][: int(round(max_seconds * sample_rate))]
    return fit_length(window, clip_samples)


def _folder_name(root: Path, kind: str, sample_rate: int, clip_samples: int) -> str:
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name)[:60] or "root"
    size = clip_samples if kind == CLIPS else "full"
    return f"{name}-{digest}-{kind}-{size}@{sample_rate}"


def cache_key(root: Path, names: Sequence[str], kind: str, sample_rate: int, clip_samples: int) -> str:
    """SHA-256 of the format, kind, rate, clip length and every file's (relative path, size, mtime in ns)."""
    h = hashlib.sha256(f"{CACHE_FORMAT}:{CACHE_VERSION}:{kind}:{sample_rate}:{clip_samples}\n".encode())
    for name in names:
        try:
            st = os.stat(root / name)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{name}\t{stamp}\n".encode())
    return h.hexdigest()


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _read_valid(folder: Path, key: str, kind: str, clip_samples: int) -> tuple[dict, np.ndarray] | None:
    """The index and memmap of the cache in ``folder`` if it is complete and matches ``key``, else None (with the
    reason logged at debug level)."""
    index_path, data_path = folder / INDEX_FILE, folder / DATA_FILE
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("audio cache %s: unreadable index (%s); rebuilding it", folder, type(exc).__name__)
        return None
    try:
        if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
            return None
        if index.get("key") != key:
            logger.info("audio cache %s is stale (the folder changed); rebuilding it", folder)
            return None
        total = int(index["samples"])
        files, offsets, lengths = index["files"], index["offsets"], index["lengths"]
        if not (len(files) == len(offsets) == len(lengths)) or not isinstance(index["errors"], dict):
            raise ValueError("inconsistent index")
        expected_offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]]) if lengths else []
        if sum(lengths) != total or list(expected_offsets) != list(offsets) or not isinstance(index["direct"], list):
            raise ValueError("inconsistent index")
        if kind == CLIPS and any(n != clip_samples for n in lengths):
            raise ValueError("inconsistent index")
        crc = int(index["crc32"])
    except (KeyError, TypeError, ValueError, AttributeError):
        logger.warning("audio cache %s: corrupt index; rebuilding it", folder)
        return None
    try:
        size = data_path.stat().st_size
        if size != 2 * total:
            logger.warning("audio cache %s: %s has %d bytes, not %d; rebuilding it", folder, DATA_FILE, size, 2 * total)
            return None
        if _crc32(data_path) != crc:
            logger.warning("audio cache %s: %s fails its checksum; rebuilding it", folder, DATA_FILE)
            return None
        if total == 0:
            audio = np.zeros((0, clip_samples) if kind == CLIPS else (0,), np.int16)
        else:
            audio = np.memmap(data_path, dtype=np.int16, mode="r", shape=(total,))
            if kind == CLIPS:
                audio = audio.reshape(-1, clip_samples)
    except OSError as exc:
        logger.warning("audio cache %s: %s (%s); rebuilding it", folder, DATA_FILE, exc.strerror or exc)
        return None
    return index, audio


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` (:func:`kws.io.file_lock`), waiting for another process that holds
    it (it is building)."""

    def waiting(holder: str) -> None:
        logger.info("waiting for another process to finish the audio cache %s", folder)

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(folder / LOCK_FILE, wait=True, on_wait=waiting))
        except OSError as exc:
            raise CacheError(f"cannot lock the audio cache {folder}: {exc.strerror or exc}") from None
        yield


def _decode(path: Path, kind: str, sample_rate: int, clip_samples: int) -> np.ndarray | None:
    """The int16 audio a cache holds for ``path``; None for a ``files`` entry at another rate (read directly)."""
    if kind == CLIPS:
        samples = load_audio(path, sample_rate, max_seconds=clip_samples / sample_rate)
        return float_to_int16(fit_length(samples, clip_samples))
    import soundfile as sf

    try:
        rate = int(sf.info(str(path)).samplerate)
    except Exception:  # unreadable: load_audio below gives the usual message
        rate = sample_rate
    if rate != sample_rate:
        return None
    return float_to_int16(load_audio(path, sample_rate))


def _build(
    folder: Path,
    root: Path,
    names: Sequence[str],
    key: str,
    kind: str,
    sample_rate: int,
    clip_samples: int,
    progress: Progress | None,
) -> None:
    """Decode the files ``root/NAME`` into ``folder`` (data first, index last, each renamed into place)."""
    started = time.monotonic()
    tmp_data = folder / f".{DATA_FILE}.{os.getpid()}.tmp"
    tmp_index = folder / f".{INDEX_FILE}.{os.getpid()}.tmp"
    cached, offsets, lengths, direct, errors = [], [], [], [], {}
    total, crc = 0, 0
    items: Iterable[str] = names if progress is None else progress(names, len(names), f"caching {root.name}")
    try:
        (folder / INDEX_FILE).unlink(missing_ok=True)  # from here on, the old cache is gone
        with open(tmp_data, "wb") as out:
            for name in items:
                path = root / name
                try:
                    audio = _decode(path, kind, sample_rate, clip_samples)
                except AudioError as exc:
                    errors[name] = str(exc).replace(str(path), _PATH_PLACEHOLDER)
                    continue
                if audio is None:
                    direct.append(name)
                    continue
                data = np.ascontiguousarray(audio, np.int16).tobytes()
                out.write(data)
                crc = zlib.crc32(data, crc)
                cached.append(name)
                offsets.append(total)
                lengths.append(len(audio))
                total += len(audio)
        index = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "key": key,
            "root": str(root),
            "kind": kind,
            "sample_rate": sample_rate,
            "clip_samples": clip_samples,
            "samples": total,
            "crc32": crc,
            "files": cached,
            "offsets": offsets,
            "lengths": lengths,
            "direct": direct,
            "errors": errors,
        }
        tmp_index.write_text(json.dumps(index))
        os.replace(tmp_data, folder / DATA_FILE)
        os.replace(tmp_index, folder / INDEX_FILE)
    except OSError as exc:
        raise CacheError(f"cannot write the audio cache {folder}: {exc.strerror or exc}") from None
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_index.unlink(missing_ok=True)
    logger.info(
        "audio cache of %s: %d files (%.1f MiB) decoded in %.1f s into %s%s",
        root,
        len(cached),
        2 * total / 2**20,
        time.monotonic() - started,
        folder,
        f"; {len(errors)} unreadable" if errors else "",
    )


def open_cache(
    cache_dir: str | Path,
    root: str | Path,
    names: Sequence[str],
    kind: str,
    sample_rate: int,
    clip_samples: int,
    progress: Progress | None = None,
) -> AudioCache:
    """The verified cache of the files ``root/NAME``, built first if it is missing, stale or corrupt.

    Args:
        cache_dir: the folder that holds every cache (one sub-folder per data folder and kind).
        root: the data folder.
        names: its audio files, relative to ``root`` (posix): the cache's file list, whose sizes and
            modification times are part of the key.
        kind: ``clips`` or ``files`` (see the module docstring).
        sample_rate: Hz of the decoded audio.
        clip_samples: samples per clip (``clips``); for ``files``, the crop length (part of the folder name).
        progress: wraps the iterable of names while building (e.g. a tqdm bar).

    Raises:
        CacheError: the cache folder cannot be created, locked or written.
    """
    if kind not in (CLIPS, FILES):
        raise ValueError(f"unknown cache kind {kind!r}")
    root = Path(root).expanduser()
    names = sorted(set(names))
    folder = Path(cache_dir).expanduser() / _folder_name(root.resolve(), kind, sample_rate, clip_samples)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create the audio cache folder {folder}: {exc.strerror or exc}") from None
    key = cache_key(root, names, kind, sample_rate, clip_samples)
    with _locked(folder):
        found = _read_valid(folder, key, kind, clip_samples)
        if found is None:
            _build(folder, root, names, key, kind, sample_rate, clip_samples, progress)
            found = _read_valid(folder, key, kind, clip_samples)
            if found is None:
                raise CacheError(f"the audio cache {folder} could not be verified right after it was written")
    index, audio = found
    return AudioCache(root, folder, kind, index, audio)
