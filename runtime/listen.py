"""Detect keywords live from a microphone, an audio file or raw PCM on stdin (onnxruntime, no torch).

One line per detection on stdout (time, keyword, confidence; --json for JSON lines); a summary on stderr at
the end (end of input, Ctrl-C or SIGTERM).

examples:
  kws listen                                   # shipped model, default microphone
  kws listen --list-devices
  kws listen --device "USB" --threshold 0.8 --threshold yes=0.9
  kws listen --model models/kws.stream.int8.onnx --input recording.wav --json
  arecord -f S16_LE -r 16000 -c 1 | kws listen --input -

exit status: 0 at the end of the input, on Ctrl-C or SIGTERM while listening, and when the reader of stdout
goes away (e.g. `kws listen ... | head -1`: listening stops quietly, the summary still goes to stderr);
2 for an error (one line on stderr: a bad option, model or input, a closed or unwritable stdout, a lost
microphone); 130 for Ctrl-C or SIGTERM before listening started.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from kws.config import ConfigError
from kws.errors import KWSError
from kws.runtime.config import (
    DEFAULT_CHUNK_MS,
    DEFAULT_LANES,
    DEFAULT_REFRACTORY_MS,
    DEFAULT_RESET_PERIOD_MS,
    DEFAULT_SMOOTHING_MS,
    DEFAULT_THREADS,
    DEFAULT_THRESHOLD,
    MAX_CHUNK_MS,
    MAX_INPUT_CHANNELS,
    MAX_INPUT_RATE,
    MAX_LANES,
    MAX_REFRACTORY_MS,
    MAX_RESET_PERIOD_MS,
    MAX_SMOOTHING_MS,
    MAX_THREADS,
    MIN_INPUT_RATE,
    RANGES,
    SpotterConfig,
    check_range,
    check_threads,
    parse_thresholds,
)

if TYPE_CHECKING:  # imported in run(), with start-up signals deferred (see _StopSignals)
    from kws.runtime.detect import Detection, KeywordSpotter
    from kws.runtime.sources import AudioSource

PROG = "kws listen"

RUNTIME_MODULES = (
    "numpy", "onnxruntime", "kws.runtime.detect", "kws.runtime.sources", "kws.runtime.files",
    "kws.runtime.microphone", "kws.runtime.stream",
)  # fmt: skip
"""Imported by :func:`run` while SIGINT/SIGTERM are deferred: extension modules that take a while to load."""
OPTIONAL_MODULES = ("soundfile", "soxr")
"""Imported then too if they are installed (a missing one is reported where it is needed)."""

DETECTION_OPTIONS = {
    "--chunk-ms": "chunk_ms", "--lanes": "lanes", "--reset-period-ms": "reset_period_ms",
    "--smoothing-ms": "smoothing_ms", "--refractory-ms": "refractory_ms",
}  # fmt: skip
"""Option -> :class:`SpotterConfig` field (ranges in :data:`kws.runtime.config.RANGES`)."""


class OutputError(KWSError):
    """stdout is closed or cannot be written (a full disk, a read-only descriptor)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``kws listen``."""
    source = parser.add_argument_group("input (default: the default microphone)")
    source.add_argument("--input", "-i", metavar="FILE|-",
                        help="an audio file (WAV/FLAC/OGG, any rate, channels, bit depth), or - for raw "
                             "signed 16-bit little-endian PCM on stdin")  # fmt: skip
    source.add_argument("--device", "-d", metavar="NAME|INDEX",
                        help="microphone: index or (part of) a name from --list-devices")  # fmt: skip
    source.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    source.add_argument(
        "--realtime",
        action="store_true",
        help="with --input FILE: process at real-time speed instead of as fast as possible",
    )
    source.add_argument(
        "--raw-rate",
        type=int,
        metavar="HZ",
        help=f"rate of --input -, {MIN_INPUT_RATE}..{MAX_INPUT_RATE} (default: the model's)",
    )
    source.add_argument("--raw-channels", type=int, default=1, metavar="N",
                        help=f"interleaved channels of --input -, 1..{MAX_INPUT_CHANNELS} "
                             "(default: %(default)s)")  # fmt: skip

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "-m",
        metavar="PATH",
        help="streaming ONNX model (default: the shipped kws/pretrained/kws.stream.int8.onnx)",
    )
    model.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                       help=f"onnxruntime intra-op threads, 1..{MAX_THREADS} (default: %(default)s)")  # fmt: skip

    detect = parser.add_argument_group("detection")
    detect.add_argument(
        "--threshold",
        "-t",
        action="append",
        default=[],
        metavar="[KEYWORD=]VALUE",
        help=f"smoothed posterior needed to report a keyword: a default (e.g. 0.8) "
        f"or one keyword's (e.g. yes=0.9), in (0, 1]; repeatable (default: {DEFAULT_THRESHOLD})",
    )
    detect.add_argument(
        "--smoothing-ms",
        type=float,
        default=DEFAULT_SMOOTHING_MS,
        help=f"moving-average window of the posteriors, 0..{MAX_SMOOTHING_MS:g} (default: %(default)g)",
    )
    detect.add_argument(
        "--refractory-ms",
        type=float,
        default=DEFAULT_REFRACTORY_MS,
        help=f"no detection for this long after one, 0..{MAX_REFRACTORY_MS:.0f} (default: %(default)g)",
    )
    detect.add_argument(
        "--chunk-ms",
        type=float,
        default=DEFAULT_CHUNK_MS,
        help=f"audio per model call, in whole hops, up to {MAX_CHUNK_MS:g} (default: %(default)g)",
    )
    detect.add_argument(
        "--lanes",
        type=int,
        default=DEFAULT_LANES,
        help=f"LSTM states, reset in turn to stay in sync over long streams, 1..{MAX_LANES} (default: %(default)s)",
    )
    detect.add_argument("--reset-period-ms", type=float, default=DEFAULT_RESET_PERIOD_MS,
                        help=f"each lane is reset to zero state this often, up to {MAX_RESET_PERIOD_MS:.0f}; 0: never, "
                             "with --lanes 1 "
                             "(default: %(default)g)")  # fmt: skip

    parser.add_argument("--json", action="store_true", help="one JSON object per detection")


def config_from_args(args: argparse.Namespace) -> SpotterConfig:
    """The :class:`SpotterConfig` of the command line.

    Raises:
        ConfigError: an option is out of its range (named as on the command line) or the combination is
            invalid.
    """
    for option, name in DETECTION_OPTIONS.items():
        low, high, low_excluded = RANGES[name]
        check_range(option, getattr(args, name), low, high, low_excluded=low_excluded)
    default, per_keyword = parse_thresholds(args.threshold)
    for keyword, value in [(None, default), *per_keyword.items()]:
        if value is not None:
            check_range("--threshold" + (f" {keyword}" if keyword else ""), value, 0, 1, low_excluded=True)
    return SpotterConfig(
        chunk_ms=args.chunk_ms, lanes=args.lanes, reset_period_ms=args.reset_period_ms,
        smoothing_ms=args.smoothing_ms, refractory_ms=args.refractory_ms,
        threshold=DEFAULT_THRESHOLD if default is None else default, thresholds=per_keyword,
    )  # fmt: skip


def format_detection(detection: Detection, as_json: bool, wall: datetime | None) -> str:
    """One output line: ``[HH:MM:SS.mmm]  12.34 s  yes  0.93`` or a JSON object."""
    if as_json:
        record = detection.to_dict()
        record["confidence"] = round(detection.confidence, 4)
        record["time"] = round(detection.time, 3)
        if wall is not None:
            record["wall_time"] = wall.isoformat(timespec="milliseconds")
        return json.dumps(record)
    clock = f"{wall:%H:%M:%S}.{wall.microsecond // 1000:03d}  " if wall is not None else ""
    return f"{clock}{detection.time:9.2f} s  {detection.keyword:<12} {detection.confidence:.2f}"


class _Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGINT), handled like Ctrl-C: stop, print the summary, exit cleanly."""


class _OutputClosed(Exception):
    """The reader of stdout went away (EPIPE): listening stops quietly."""


class _StopSignals:
    """SIGINT and SIGTERM during ``kws listen``, installed first thing in :func:`run`.

    SIGINT is handled explicitly too: a process started in the background (``cmd &``, nohup, some service
    managers) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler; listening must
    stop on it all the same. Until :meth:`arm` a signal is only recorded: while numpy and onnxruntime are
    imported, an exception raised inside an extension module's initialisation would surface as an unrelated
    ImportError with a traceback. :meth:`arm` raises a recorded signal; after it a signal raises at once
    (:class:`_Terminated`, a KeyboardInterrupt); :meth:`defer` records them again (while the summary is
    printed).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._armed = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopSignals:
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
            raise _Terminated()

    def arm(self) -> None:
        self._armed = True
        if self.received is not None:
            raise _Terminated()

    def defer(self) -> None:
        self._armed = False


def _printer(out: TextIO, as_json: bool, live: bool) -> Callable[[Detection], None]:
    def emit(detection: Detection) -> None:
        _write(out, format_detection(detection, as_json, datetime.now() if live else None) + "\n")

    return emit


def _write(out: TextIO, text: str) -> None:
    """Write and flush ``text``: a broken pipe raises _OutputClosed, any other failure OutputError."""
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        raise _OutputClosed() from None
    except (OSError, ValueError) as exc:  # EBADF, ENOSPC, EIO...; ValueError: a closed file object
        raise OutputError(f"cannot write to stdout: {getattr(exc, 'strerror', None) or exc}") from None


def _stdout() -> TextIO:
    """``sys.stdout`` if detections can be written to it.

    Raises:
        OutputError: it is closed (``>&-``) or open for reading only.
    """
    out = sys.stdout
    hint = "detections are written to stdout; redirect it (> FILE, > /dev/null) instead"
    if out is None or getattr(out, "closed", False):
        raise OutputError(f"stdout is closed: {hint}")
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
        raise OutputError(f"stdout is closed: {hint}") from None
    if mode == os.O_RDONLY:
        raise OutputError(f"stdout is open for reading only: {hint}")
    return out


def _discard_stdout() -> None:
    """Point stdout at /dev/null after a failed write, so the interpreter's last flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def _print_err(text: str) -> None:
    """One line on stderr, if there is a stderr to write to."""
    if sys.stderr is None:
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _import_runtime(microphone: bool) -> None:
    """Import what listening needs (numpy, onnxruntime and the runtime modules: the slow part of start-up)."""
    for name in RUNTIME_MODULES:
        importlib.import_module(name)
    for name in (*OPTIONAL_MODULES, *(("sounddevice",) if microphone else ())):
        try:
            importlib.import_module(name)
        except (ImportError, OSError):  # reported with a hint where it is needed (sounddevice: PortAudio)
            pass


def run(args: argparse.Namespace) -> int:
    """``kws listen``: returns 0 at the end of the input, on Ctrl-C/SIGTERM while listening, or when the reader
    of stdout goes away; errors raise KWSError; a signal before listening starts raises KeyboardInterrupt."""
    with _StopSignals() as stops:
        out = _stdout()
        if not args.list_devices:
            _check_options(args)
            config = config_from_args(args)
        _import_runtime(args.list_devices or args.input is None)
        stops.arm()
        if args.list_devices:
            return _list_devices(out)
        return _listen(args, config, out, stops)


def _list_devices(out: TextIO) -> int:
    from kws.runtime.microphone import format_devices, list_input_devices

    try:
        _write(out, format_devices(list_input_devices()) + "\n")
    except _OutputClosed:
        _discard_stdout()
    except OutputError:
        _discard_stdout()
        raise
    return 0


def _listen(args: argparse.Namespace, config: SpotterConfig, out: TextIO, stops: _StopSignals) -> int:
    from kws.runtime.detect import KeywordSpotter
    from kws.runtime.sources import open_source
    from kws.runtime.stream import StreamRunner

    spotter = KeywordSpotter(args.model, config, threads=args.threads)
    chunk_seconds = spotter.engine.chunk_frames * spotter.info.hop_samples / spotter.sample_rate
    source = open_source(
        args.input, spotter.sample_rate, chunk_seconds, device=args.device, realtime=args.realtime,
        raw_rate=args.raw_rate, raw_channels=args.raw_channels,
    )  # fmt: skip
    _announce(spotter, source, config)
    runner = StreamRunner(spotter, source, _printer(out, args.json, source.live))
    note = ""
    try:
        runner.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal way to stop listening
        pass
    except _OutputClosed:  # the reader of stdout went away (e.g. `| head -1`): stop quietly
        _discard_stdout()
        note = " (stopped: the reader of stdout went away)"
    except OutputError:
        _discard_stdout()
        raise
    finally:
        stops.defer()
        _print_err(f"{PROG}: {runner.stats.summary()}{note}")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Mistakes found before anything is loaded: out-of-range numbers, options for another input."""
    check_threads(args.threads, "--threads")
    if args.raw_rate is not None:
        check_range("--raw-rate", args.raw_rate, MIN_INPUT_RATE, MAX_INPUT_RATE)
    check_range("--raw-channels", args.raw_channels, 1, MAX_INPUT_CHANNELS)
    _check_source_options(args)


def _check_source_options(args: argparse.Namespace) -> None:
    """Options that only make sense with another input are mistakes, not silently ignored."""
    if args.device is not None and args.input is not None:
        raise ConfigError("--device selects a microphone; it cannot be combined with --input")
    if args.realtime and (args.input is None or args.input == "-"):
        raise ConfigError("--realtime paces an audio file: use it with --input FILE")
    if (args.raw_rate is not None or args.raw_channels != 1) and args.input != "-":
        raise ConfigError("--raw-rate/--raw-channels describe raw PCM on stdin: use them with --input -")


def _announce(spotter: KeywordSpotter, source: AudioSource, config: SpotterConfig) -> None:
    info = spotter.info
    engine = spotter.engine
    rate = f"{source.sample_rate} Hz"
    if source.input_rate != source.sample_rate:
        rate = f"{source.input_rate} Hz resampled to {rate}"
    thresholds = ", ".join(f"{k}={config.threshold_for(k):g}" for k in info.keywords)
    lanes = (f"{config.lanes} lane(s) reset every {engine.period_frames * info.hop_ms:g} ms"
             if engine.period_frames else "1 lane, never reset")  # fmt: skip
    _print_err(f"{PROG}: {info.path.name} ({info.quantization}), {source.description} at {rate}; "
               f"{engine.chunk_frames * info.hop_ms:g} ms per call, {lanes}; thresholds {thresholds}"
               + ("; Ctrl-C to stop" if source.live else ""))  # fmt: skip
