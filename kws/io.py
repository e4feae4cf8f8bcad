"""Small torch-free file-system helpers shared by the commands (output folders, stale files of dead processes)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kws.errors import KWSError


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
