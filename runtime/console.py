"""The process side of ``kws listen``: stdout that may be closed, full or a vanished pipe; stderr that may be
missing or must be muted while a C library prints on its own; SIGINT and SIGTERM, deferred while the runtime's
extension modules are imported (stdlib only).

Errors the user can fix (a closed or read-only stdout, a write that fails) are :class:`OutputError`, one line
from the CLI; a reader that goes away (``kws listen ... | head -1``) is :class:`OutputClosed`, a quiet stop.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TextIO

from kws.errors import KWSError

STDOUT_HINT = "detections are written to stdout; redirect it (> FILE, > /dev/null) instead"


class OutputError(KWSError):
    """stdout is closed or cannot be written (a full disk, a read-only descriptor)."""


class OutputClosed(Exception):
    """The reader of stdout went away (EPIPE): listening stops quietly."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGINT), handled like Ctrl-C: stop, print the summary, exit cleanly."""


class StopSignals:
    """SIGINT and SIGTERM during ``kws listen``, installed first thing in :func:`kws.runtime.listen.run`.

    SIGINT is handled explicitly too: a process started in the background (``cmd &``, nohup, some service
    managers) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler; listening must
    stop on it all the same. Until :meth:`arm` a signal is only recorded: while numpy and onnxruntime are
    imported, an exception raised inside an extension module's initialisation would surface as an unrelated
    ImportError with a traceback. :meth:`arm` raises a recorded signal; after it a signal raises at once
    (:class:`Terminated`, a KeyboardInterrupt); :meth:`defer` records them again (while the summary is
    printed).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._armed = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be restored
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        if self._armed:
            raise Terminated()

    def arm(self) -> None:
        self._armed = True
        if self.received is not None:
            raise Terminated()

    def defer(self) -> None:
        self._armed = False


def write(out: TextIO, text: str) -> None:
    """Write and flush ``text``: a broken pipe raises OutputClosed, any other failure OutputError."""
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        raise OutputClosed() from None
    except (OSError, ValueError) as exc:  # EBADF, ENOSPC, EIO...; ValueError: a closed file object
        raise OutputError(f"cannot write to stdout: {getattr(exc, 'strerror', None) or exc}") from None


def checked_stdout() -> TextIO:
    """``sys.stdout`` if detections can be written to it.

    Raises:
        OutputError: it is closed (``>&-``) or open for reading only.
    """
    out = sys.stdout
    if out is None or getattr(out, "closed", False):
        raise OutputError(f"stdout is closed: {STDOUT_HINT}")
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a file descriptor (e.g. captured in a test)
        return out
    try:
        import fcntl
    except ImportError:  # not POSIX
        return out
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        raise OutputError(f"stdout is closed: {STDOUT_HINT}") from None
    if mode == os.O_RDONLY:
        raise OutputError(f"stdout is open for reading only: {STDOUT_HINT}")
    return out


def discard_stdout() -> None:
    """Point stdout at /dev/null after a failed write, so the interpreter's last flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    try:
        _point_at_devnull(fd)
    except OSError:
        pass


@contextlib.contextmanager
def muted_c_stderr() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block (C libraries that print on their own)."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr at all: nothing to mute
        yield
        return
    try:
        _point_at_devnull(2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _point_at_devnull(fd: int) -> None:
    """File descriptor ``fd`` now writes to /dev/null.

    Raises:
        OSError: /dev/null cannot be opened or ``fd`` is not open.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def print_err(text: str) -> None:
    """One line on stderr, if there is a stderr to write to."""
    if sys.stderr is None:
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class StdoutGuard:
    """``with StdoutGuard() as guard:`` around everything that writes detections.

    A reader that went away (:class:`OutputClosed`) ends the block quietly and sets ``guard.closed``; any other
    write failure (:class:`OutputError`) propagates. Either way stdout is first pointed at /dev/null, so that
    the interpreter's last flush cannot fail again.
    """

    def __init__(self) -> None:
        self.closed = False

    def __enter__(self) -> StdoutGuard:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if kind is None or not issubclass(kind, (OutputClosed, OutputError)):
            return False
        discard_stdout()
        self.closed = issubclass(kind, OutputClosed)
        return self.closed
