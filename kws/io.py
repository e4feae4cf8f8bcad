"""Small torch-free file-system helpers shared by the commands: output folders, atomic writes, stale temporaries
of killed writes, live processes, lock files."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from kws.errors import KWSError

logger = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to another user
        return True
    return True


def ensure_writable_dir(out_dir: str | Path, error: type[KWSError] = KWSError) -> Path:
    """Create ``out_dir`` if needed and make sure a file can be created in it, before any long work.

    Raises:
        error: the path is not a folder, cannot be created or is not writable (one line).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise error(f"output path {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".kws-write-test-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise error(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from None
    return out_dir


_TMP_SUFFIX = ".tmp"
_TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
"""The names :func:`atomic_write` gives its temporary files: ``.NAME.XXXXXXXX.tmp`` (``tempfile.mkstemp``)."""


def current_umask() -> int:
    """The process umask (from /proc where available: reading it with ``os.umask`` briefly changes it)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def make_readable(path: str | Path) -> None:
    """Give a file the permissions a newly created file gets (``0o666 & ~umask``; temporary files are 0600)."""
    os.chmod(path, 0o666 & ~current_umask())


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a kill never leaves a half-written file there.

    The final file gets the permissions of a newly created file (``0o666 & ~umask``), not the 0600 of the
    temporary file. A kill -9 mid-write can leave the temporary (``.NAME.XXXXXXXX.tmp``) behind:
    :func:`clean_stale_temporaries` removes those.

    Raises:
        KWSError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise KWSError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    try:
        write(Path(tmp))
        make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def clean_stale_temporaries(
    folder: str | Path, names: Iterable[str] | None = None, min_age_s: float = 600.0
) -> list[tuple[Path, int]]:
    """Remove the temporary files an interrupted :func:`atomic_write` left in ``folder`` (not recursive).

    Only files named like atomic_write's own temporaries (``.NAME.XXXXXXXX.tmp``) are touched, and only
    regular files. A temporary being written right now by another process must not be removed: a caller that
    holds a lock on the folder (``kws train`` does) passes ``min_age_s=0``; others
    keep the default, which spares every file modified in the last ``min_age_s`` seconds.

    Args:
        names: only temporaries of these final file names (e.g. ``["last.pt"]``); None: any name.

    Returns:
        the removed files and their sizes in bytes (a line is logged when any were removed).
    """
    folder = Path(folder)
    wanted = None if names is None else set(names)
    removed: list[tuple[Path, int]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TMP_PATTERN.match(entry.name)
        if match is None or (wanted is not None and match["name"] not in wanted):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < min_age_s:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append((Path(entry.path), info.st_size))
    if removed:
        logger.info(
            "removed %d stale temporary file(s) of an interrupted write from %s (%d bytes): %s",
            len(removed),
            folder,
            sum(size for _, size in removed),
            ", ".join(p.name for p, _ in removed),
        )
    return removed


class LockBusy(KWSError):
    """Another process holds the lock; ``holder`` is its pid as the lock file records it (or ``unknown``)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by process {holder}")
        self.holder = holder


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created if needed) for the duration of the block.

    The lock dies with its process (no stale lock after a kill); the file keeps the holder's pid. Without
    ``fcntl`` (not POSIX) nothing is locked.

    Args:
        wait: when another process holds the lock, wait until it is released (calling ``on_wait(holder)``
            first), instead of raising :class:`LockBusy` at once.

    Raises:
        OSError: the lock file cannot be created or opened.
        LockBusy: another process holds the lock and ``wait`` is False.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            if not wait:
                raise LockBusy(path, holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
