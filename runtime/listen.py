"""Detect keywords live from a microphone, an audio file or raw PCM on stdin (onnxruntime, no torch).

One line per detection on stdout (time, keyword, confidence; --json for JSON lines); a summary on stderr at
the end (end of input, Ctrl-C or SIGTERM).

examples:
  kws listen                                   # shipped model, default microphone
  kws listen --list-devices
  kws listen --device "USB" --threshold 0.8 --threshold yes=0.9
  kws listen --model models/kws.stream.int8.onnx --input recording.wav --json
  arecord -f S16_LE -r 16000 -c 1 | kws listen --input -
  kws listen --verifier verifier.onnx --verify-threshold 0.3   # a second stage confirms each detection

exit status: 0 at the end of the input, on Ctrl-C or SIGTERM while listening, and when the reader of stdout
goes away (e.g. `kws listen ... | head -1`: listening stops quietly, the summary still goes to stderr);
2 for an error (one line on stderr: a bad option, model or input, a closed or unwritable stdout, a lost
microphone); 130 for Ctrl-C or SIGTERM before listening started.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from kws.errors import ConfigError
from kws.runtime.config import (
    DEFAULT_LANES,
    DEFAULT_PATIENCE,
    DEFAULT_RESET_PERIOD_MS,
    DEFAULT_THREADS,
    DEFAULT_THRESHOLD,
    MAX_CHUNK_MS,
    MAX_INPUT_CHANNELS,
    MAX_INPUT_RATE,
    MAX_LANES,
    MAX_PATIENCE,
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
    spotter_config,
)
from kws.runtime.console import StdoutGuard, StopSignals, checked_stdout, print_err, write

if TYPE_CHECKING:  # imported in run(), with start-up signals deferred (see StopSignals)
    from kws.runtime.detect import Detection, KeywordSpotter
    from kws.runtime.model import ModelInfo
    from kws.runtime.sources import AudioSource
    from kws.runtime.verifier import VerifiedSpotter

PROG = "kws listen"

RUNTIME_MODULES = (
    "numpy", "onnxruntime", "kws.runtime.detect", "kws.runtime.sources", "kws.runtime.files",
    "kws.runtime.microphone", "kws.runtime.stream", "kws.runtime.verifier",
)  # fmt: skip
"""Imported by :func:`run` while SIGINT/SIGTERM are deferred: extension modules that take a while to load."""
OPTIONAL_MODULES = ("soundfile", "soxr")
"""Imported then too if they are installed (a missing one is reported where it is needed)."""


@dataclass(frozen=True)
class DetectionOption:
    """A numeric option of ``kws listen`` that sets one :class:`SpotterConfig` field (its default is the
    field's, or the model's own setting if ``from_model``; its range that of :data:`kws.runtime.config.RANGES`)."""

    name: str
    kind: type
    help: str
    from_model: bool = False


DETECTION_OPTIONS: dict[str, DetectionOption] = {
    "--smoothing-ms": DetectionOption(
        "smoothing_ms",
        float,
        f"moving-average window of the posteriors, 0..{MAX_SMOOTHING_MS:g} (default: %(default)g)",
    ),
    "--refractory-ms": DetectionOption(
        "refractory_ms",
        float,
        f"no detection for this long after one, 0..{MAX_REFRACTORY_MS:.0f} (default: %(default)g)",
    ),
    "--chunk-ms": DetectionOption(
        "chunk_ms", float, f"audio per model call, in whole hops, up to {MAX_CHUNK_MS:g} (default: %(default)g)"
    ),
    "--lanes": DetectionOption(
        "lanes",
        int,
        f"LSTM states, reset in turn to stay in sync over long streams, 1..{MAX_LANES} (default: 1 if the "
        f"model's kws.reset_period_ms is 0, else {DEFAULT_LANES})",
        from_model=True,
    ),
    "--reset-period-ms": DetectionOption(
        "reset_period_ms",
        float,
        f"each lane is reset to zero state this often, up to {MAX_RESET_PERIOD_MS:.0f}; 0: never, with --lanes 1 "
        f"(default: the model's kws.reset_period_ms, else {DEFAULT_RESET_PERIOD_MS:g})",
        from_model=True,
    ),
    "--patience": DetectionOption(
        "patience",
        int,
        f"consecutive frames over its threshold a keyword needs, 1..{MAX_PATIENCE} (default: the model's "
        f"kws.patience, else {DEFAULT_PATIENCE})",
        from_model=True,
    ),
}
"""The detection options, in the order of ``--help``."""


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
    model.add_argument("--verifier", metavar="PATH",
                       help="second stage: a verifier file (`kws teacher --export-verifier`) that confirms or rejects "
                            "each detection on the audio around it (default: none, the first stage alone)")  # fmt: skip
    model.add_argument("--verify-threshold", type=float, metavar="P",
                       help="with --verifier: its probability of the detected keyword needed to report it, "
                            "0..1 (default: the verifier's kws.verifier.threshold)")  # fmt: skip

    detect = parser.add_argument_group("detection")
    detect.add_argument("--threshold", "-t", action="append", default=[], metavar="[KEYWORD=]VALUE",
                        help="smoothed posterior needed to report a keyword: a default (e.g. 0.8) or one keyword's "
                             f"(e.g. yes=0.9), in (0, 1]; repeatable (default: the model's kws.thresholds, else "
                             f"{DEFAULT_THRESHOLD}; a default given here replaces them all)")  # fmt: skip
    defaults = {f.name: f.default for f in fields(SpotterConfig)}
    for option, spec in DETECTION_OPTIONS.items():
        default = None if spec.from_model else defaults[spec.name]
        detect.add_argument(option, type=spec.kind, default=default, help=spec.help)

    parser.add_argument("--json", action="store_true", help="one JSON object per detection")


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every check of the command line, before anything is loaded, and the :class:`SpotterConfig` fields it sets
    (those the model may set, :data:`DetectionOption.from_model`, and the thresholds only where given).

    In order: ``--threads``, the raw PCM format, options meant for another input (mistakes, not silently
    ignored), the detection options (in the order of :class:`SpotterConfig`'s fields), then the thresholds. The
    combination is checked with the model's settings (:func:`config_from_args`).

    Raises:
        ConfigError: an option is out of its range (named as on the command line) or belongs to another input.
    """
    check_threads(args.threads, "--threads")
    if args.raw_rate is not None:
        check_range("--raw-rate", args.raw_rate, MIN_INPUT_RATE, MAX_INPUT_RATE)
    check_range("--raw-channels", args.raw_channels, 1, MAX_INPUT_CHANNELS)
    if args.device is not None and args.input is not None:
        raise ConfigError("--device selects a microphone; it cannot be combined with --input")
    if args.realtime and (args.input is None or args.input == "-"):
        raise ConfigError("--realtime paces an audio file: use it with --input FILE")
    if (args.raw_rate is not None or args.raw_channels != 1) and args.input != "-":
        raise ConfigError("--raw-rate/--raw-channels describe raw PCM on stdin: use them with --input -")
    if args.verify_threshold is not None:
        if args.verifier is None:
            raise ConfigError("--verify-threshold sets the second stage's threshold: use it with --verifier FILE")
        check_range("--verify-threshold", args.verify_threshold, 0, 1)
    option_of = {spec.name: option for option, spec in DETECTION_OPTIONS.items()}
    values = {f.name: getattr(args, f.name) for f in fields(SpotterConfig) if f.name in option_of}
    values = {name: value for name, value in values.items() if value is not None}
    for name, value in values.items():
        low, high, low_excluded = RANGES[name]
        check_range(option_of[name], value, low, high, low_excluded=low_excluded)
    default, per_keyword = parse_thresholds(args.threshold)
    for keyword, value in [(None, default), *per_keyword.items()]:
        if value is not None:
            check_range("--threshold" + (f" {keyword}" if keyword else ""), value, 0, 1, low_excluded=True)
    if default is not None:
        values["threshold"] = default
    if per_keyword:
        values["thresholds"] = per_keyword
    return values


def config_from_args(args: argparse.Namespace, model: ModelInfo | None = None) -> SpotterConfig:
    """The :class:`SpotterConfig` of the command line for ``model``: its own settings (None: a model without
    any), then the options given (:func:`kws.runtime.config.spotter_config`).

    Raises:
        ConfigError: as :func:`explicit_settings`, or the combination is invalid.
    """
    return spotter_config(model, **explicit_settings(args))


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


def _printer(out: TextIO, as_json: bool, live: bool) -> Callable[[Detection], None]:
    def emit(detection: Detection) -> None:
        write(out, format_detection(detection, as_json, datetime.now() if live else None) + "\n")

    return emit


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
    with StopSignals() as stops:
        out = checked_stdout()
        if not args.list_devices:
            explicit = explicit_settings(args)  # the combination is checked with the model's settings
        _import_runtime(args.list_devices or args.input is None)
        stops.arm()
        if args.list_devices:
            return _list_devices(out)
        return _listen(args, explicit, out, stops)


def _list_devices(out: TextIO) -> int:
    from kws.runtime.microphone import format_devices, list_input_devices

    with StdoutGuard():
        write(out, format_devices(list_input_devices()) + "\n")
    return 0


def _listen(args: argparse.Namespace, explicit: dict[str, Any], out: TextIO, stops: StopSignals) -> int:
    from kws.runtime.detect import KeywordSpotter
    from kws.runtime.model import load_model
    from kws.runtime.sources import open_source
    from kws.runtime.stream import StreamRunner

    model = load_model(args.model, args.threads)
    config = spotter_config(model.info, **explicit)
    spotter = KeywordSpotter(model, config, threads=args.threads)
    verified = _verified(spotter, args)
    chunk_seconds = spotter.engine.chunk_frames * spotter.info.hop_samples / spotter.sample_rate
    source = open_source(
        args.input, spotter.sample_rate, chunk_seconds, device=args.device, realtime=args.realtime,
        raw_rate=args.raw_rate, raw_channels=args.raw_channels,
    )  # fmt: skip
    _announce(spotter, source, config, explicit, verified)
    runner = StreamRunner(verified or spotter, source, _printer(out, args.json, source.live))
    guard = StdoutGuard()
    try:
        with guard:  # the reader of stdout may go away (e.g. `| head -1`): stop quietly
            runner.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a normal way to stop listening
        pass
    finally:
        stops.defer()
        note = " (stopped: the reader of stdout went away)" if guard.closed else ""
        print_err(f"{PROG}: {runner.stats.summary()}{note}")
        if verified is not None:
            print_err(f"{PROG}: {verified.summary()}")
    return 0


def _verified(spotter: KeywordSpotter, args: argparse.Namespace) -> VerifiedSpotter | None:
    """The spotter wrapped with the ``--verifier`` second stage (None without it)."""
    if args.verifier is None:
        return None
    from kws.runtime.verifier import VerifiedSpotter, Verifier

    return VerifiedSpotter(spotter, Verifier(args.verifier, args.threads, threshold=args.verify_threshold))


def threshold_source(info: ModelInfo, explicit: dict[str, Any]) -> str:
    """Where the thresholds come from, for the announce line: "" for none from the model (as before models
    carried thresholds), else `` (from the model)`` or `` (from the model but KEYWORD..., from the options or the
    default)``."""
    if not info.thresholds or "threshold" in explicit:
        return ""
    own = {k for k, _ in info.thresholds} - set(explicit.get("thresholds", {}))
    if not own:
        return ""
    others = [k for k in info.keywords if k not in own]
    return " (from the model" + (f" but {', '.join(others)}: options or default" if others else "") + ")"


def _announce(spotter: KeywordSpotter, source: AudioSource, config: SpotterConfig, explicit: dict[str, Any],
              verified: VerifiedSpotter | None = None) -> None:  # fmt: skip
    info = spotter.info
    engine = spotter.engine
    rate = f"{source.sample_rate} Hz"
    if source.input_rate != source.sample_rate:
        rate = f"{source.input_rate} Hz resampled to {rate}"
    thresholds = ", ".join(f"{k}={config.threshold_for(k):g}" for k in info.keywords)
    lanes = (f"{config.lanes} lane(s) reset every {engine.period_frames * info.hop_ms:g} ms"
             if engine.period_frames else "1 lane, never reset")  # fmt: skip
    patience = f"; patience {config.patience} frames" if config.patience != DEFAULT_PATIENCE else ""
    print_err(f"{PROG}: {info.path.name} ({info.quantization}), {source.description} at {rate}; "
              f"{engine.chunk_frames * info.hop_ms:g} ms per call, {lanes}; thresholds {thresholds}"
              f"{threshold_source(info, explicit)}{patience}"
              + (f"; {verified.verifier.describe()}" if verified is not None else "")
              + ("; Ctrl-C to stop" if source.live else ""))  # fmt: skip
