"""Detect keywords live from a microphone, an audio file or raw PCM on stdin (onnxruntime, no torch).

One line per detection on stdout (time, keyword, confidence; --json for JSON lines); a summary on stderr at
the end (end of input, Ctrl-C or SIGTERM).

examples:
  kws listen                                   # shipped model, default microphone
  kws listen --list-devices
  kws listen --device "USB" --threshold 0.8 --threshold yes=0.9
  kws listen --model models/kws.stream.int8.onnx --input recording.wav --json
  arecord -f S16_LE -r 16000 -c 1 | kws listen --input -
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import TextIO

from kws.config import ConfigError
from kws.runtime.config import (
    DEFAULT_CHUNK_MS,
    DEFAULT_LANES,
    DEFAULT_REFRACTORY_MS,
    DEFAULT_RESET_PERIOD_MS,
    DEFAULT_SMOOTHING_MS,
    DEFAULT_THREADS,
    DEFAULT_THRESHOLD,
    SpotterConfig,
    parse_thresholds,
)
from kws.runtime.detect import Detection, KeywordSpotter
from kws.runtime.sources import AudioSource, format_devices, list_input_devices, open_source
from kws.runtime.stream import StreamRunner

PROG = "kws listen"


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
    source.add_argument("--raw-rate", type=int, metavar="HZ", help="rate of --input - (default: the model's)")
    source.add_argument("--raw-channels", type=int, default=1, metavar="N",
                        help="interleaved channels of --input - (default: %(default)s)")  # fmt: skip

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "-m",
        metavar="PATH",
        help="streaming ONNX model (default: the shipped kws/pretrained/kws.stream.int8.onnx)",
    )
    model.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                       help="onnxruntime intra-op threads (default: %(default)s)")  # fmt: skip

    detect = parser.add_argument_group("detection")
    detect.add_argument(
        "--threshold",
        "-t",
        action="append",
        default=[],
        metavar="[KEYWORD=]VALUE",
        help=f"smoothed posterior needed to report a keyword: a default (e.g. 0.8) "
        f"or one keyword's (e.g. yes=0.9); repeatable (default: {DEFAULT_THRESHOLD})",
    )
    detect.add_argument(
        "--smoothing-ms",
        type=float,
        default=DEFAULT_SMOOTHING_MS,
        help="moving-average window of the posteriors (default: %(default)g)",
    )
    detect.add_argument(
        "--refractory-ms",
        type=float,
        default=DEFAULT_REFRACTORY_MS,
        help="no detection for this long after one (default: %(default)g)",
    )
    detect.add_argument(
        "--chunk-ms",
        type=float,
        default=DEFAULT_CHUNK_MS,
        help="audio per model call, in whole hops (default: %(default)g)",
    )
    detect.add_argument(
        "--lanes",
        type=int,
        default=DEFAULT_LANES,
        help="LSTM states, reset in turn to stay in sync over long streams (default: %(default)s)",
    )
    detect.add_argument("--reset-period-ms", type=float, default=DEFAULT_RESET_PERIOD_MS,
                        help="each lane is reset to zero state this often; 0: never, with --lanes 1 "
                             "(default: %(default)g)")  # fmt: skip

    parser.add_argument("--json", action="store_true", help="one JSON object per detection")


def config_from_args(args: argparse.Namespace) -> SpotterConfig:
    """The :class:`SpotterConfig` of the command line."""
    default, per_keyword = parse_thresholds(args.threshold)
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
    """SIGTERM, handled like Ctrl-C: stop, print the summary, exit cleanly."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def _printer(out: TextIO, as_json: bool, live: bool) -> Callable[[Detection], None]:
    def emit(detection: Detection) -> None:
        out.write(format_detection(detection, as_json, datetime.now() if live else None) + "\n")
        out.flush()

    return emit


def run(args: argparse.Namespace) -> int:
    """``kws listen``: returns 0 at the end of the input or on Ctrl-C/SIGTERM; errors raise KWSError."""
    if args.list_devices:
        print(format_devices(list_input_devices()))
        return 0
    _check_source_options(args)
    config = config_from_args(args)
    spotter = KeywordSpotter(args.model, config, threads=args.threads)
    chunk_seconds = spotter.engine.chunk_frames * spotter.info.hop_samples / spotter.sample_rate
    source = open_source(
        args.input, spotter.sample_rate, chunk_seconds, device=args.device, realtime=args.realtime,
        raw_rate=args.raw_rate, raw_channels=args.raw_channels,
    )  # fmt: skip
    _announce(spotter, source, config)
    runner = StreamRunner(spotter, source, _printer(sys.stdout, args.json, source.live))
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGINT too: a process started in the background (`cmd &`, nohup, some service managers) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler; listening must stop on it all the same.
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, _on_sigterm) for s in stop_signals} if main_thread else {}
    try:
        runner.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal way to stop listening
        pass
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        print(f"{PROG}: {runner.stats.summary()}", file=sys.stderr, flush=True)
    return 0


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
    print(f"{PROG}: {info.path.name} ({info.quantization}), {source.description} at {rate}; "
          f"{engine.chunk_frames * info.hop_ms:g} ms per call, {lanes}; thresholds {thresholds}"
          + ("; Ctrl-C to stop" if source.live else ""), file=sys.stderr, flush=True)  # fmt: skip
