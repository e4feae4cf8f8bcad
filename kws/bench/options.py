"""The options of ``kws bench``, declared once: each field of :class:`BenchOptions` carries its flag and
argparse settings, from which :func:`add_arguments`, :func:`options_from_args` and
:meth:`BenchOptions.command` (the command line that reproduces a run) are derived.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kws.bench import BenchError
from kws.bench.scoring import MATCH_TOLERANCE_SECONDS
from kws.bench.streams import SNR_DB
from kws.constants import SPLITS

DEFAULT_NAME = "kws"
"""File name stem of the four ONNX files."""
DEFAULT_STREAM_MINUTES = 30.0
LATENCY_RUNS = 200
"""Timed runs per single-clip latency."""
SPLIT_MODES = ("auto", "official", "speaker-hash")
COMMAND = ("kws", "bench")


def _option(flag: str, default: Any = dataclasses.MISSING, **argparse_settings: Any) -> Any:
    """A field of :class:`BenchOptions` with its command-line ``flag`` and argparse settings (``help``,
    ``type``, ``nargs``, ``metavar``, ...); a field without ``default`` is a required option."""
    return dataclasses.field(default=default, metadata={"flag": flag, "argparse": argparse_settings})


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """Everything a bench run is made from (the command line), in the order of ``kws bench --help``.

    Attributes:
        checkpoint: a checkpoint written by ``kws train``.
        models: folder of the four ONNX files (None: export the checkpoint into ``OUT/models``).
        data: Speech Commands folder(s) holding the test speakers.
        negatives: folders of non-keyword speech recordings.
        stream_minutes: requested stream duration (min).
        negative_hours: hours of the separate negative-only stream (None or 0: none).
        snr_db: range of the event speech level over the noise bed (dB).
        tolerance: seconds after the end of a word during which its detection is a hit.
        latency_runs: timed runs per single-clip latency.
        verifier: a second-stage verifier file to measure (None: none).
        out: the report folder.
    """

    checkpoint: Path = _option(
        "--checkpoint", type=Path, metavar="PT", help="a checkpoint written by `kws train` (e.g. runs/v2/best.pt)"
    )
    models: Path | None = _option(
        "--models",
        None,
        type=Path,
        metavar="DIR",
        help="exported ONNX files NAME.onnx, NAME.int8.onnx, NAME.stream.onnx, NAME.stream.int8.onnx "
        "(default: export the checkpoint into OUT/models)",
    )
    name: str = _option("--name", DEFAULT_NAME, help="file name stem in --models (default: %(default)s)")
    data: tuple[str, ...] = _option(
        "--data",
        nargs="+",
        action="extend",
        metavar="DIR",
        help="Speech Commands folder(s) holding the test speakers (the test archive, the full "
        "dataset, or several combined; repeatable)",
    )
    split: str = _option("--split", "test", choices=SPLITS, help="which split (default: %(default)s)")
    split_mode: str = _option(
        "--split-mode",
        "auto",
        choices=list(SPLIT_MODES),
        help="how speakers are split: auto = as the checkpoint's training did; a mode that contradicts it is "
        "refused (default: %(default)s)",
    )
    negatives: tuple[Path, ...] = _option(
        "--negatives",
        (),
        type=Path,
        nargs="+",
        action="extend",
        metavar="DIR",
        help="folder(s) of non-keyword speech recordings (any audio files under DIR, any rate), e.g. "
        "wake_word_negatives: the half `kws train --negatives` never uses is streamed; without it only "
        "unknown-word clips are non-keyword speech; repeatable",
    )
    stream_minutes: float = _option(
        "--stream-minutes",
        DEFAULT_STREAM_MINUTES,
        type=float,
        metavar="MIN",
        help="length of the detection stream (default: %(default)g)",
    )
    negative_hours: float | None = _option(
        "--negative-hours",
        None,
        type=float,
        metavar="H",
        help="also stream H hours of non-keyword audio only: passes over the held-out negatives, the test "
        "split's unknown words and noise, each with other noise, SNR, gain and simulated reverberation, "
        "streamed chunk by chunk, never written to disk unless --keep-stream (default: none)",
    )
    carry_state: bool = _option(
        "--carry-state",
        False,
        action="store_true",
        help="negative stream: never reset the spotter between passes, so its LSTM state (and every buffer) is "
        "carried through all H hours as one stream; shows whether the state drifts (default: each pass starts "
        "fresh)",
    )
    snr_db: tuple[float, float] = _option(
        "--snr-db",
        SNR_DB,
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="speech level over the background noise, uniform in this range (default: %(default)s)",
    )
    tolerance: float = _option(
        "--tolerance",
        MATCH_TOLERANCE_SECONDS,
        type=float,
        metavar="S",
        help="a detection up to S seconds after the end of the word is a hit (default: %(default)g)",
    )
    seed: int = _option("--seed", 0, type=int, help="seed of the stream (default: %(default)s)")
    latency_runs: int = _option(
        "--latency-runs",
        LATENCY_RUNS,
        type=int,
        metavar="N",
        help="timed runs per single-clip latency (default: %(default)s)",
    )
    keep_stream: bool = _option(
        "--keep-stream",
        False,
        action="store_true",
        help="keep the stream as OUT/stream.wav (and the negative stream as OUT/negative_stream.wav)",
    )
    verifier: Path | None = _option(
        "--verifier",
        None,
        type=Path,
        metavar="ONNX",
        help="also run both streams through this second-stage verifier (`kws teacher --export-verifier`), as "
        "`kws listen --verifier` does: recall and false accepts with and without it, CPU per check, added latency "
        "(default: none)",
    )
    out: Path = _option("--out", type=Path, metavar="DIR", help="report folder (created if missing)")

    def command(self) -> str:
        """The full command line that reproduces this run: every option explicit, switches last."""
        parts, switches = list(COMMAND), []
        for f in dataclasses.fields(self):
            value, flag = getattr(self, f.name), f.metadata["flag"]
            if isinstance(value, bool):
                switches += [flag] if value else []
            elif value is not None and value != ():
                parts += [flag, *map(_word, value if isinstance(value, tuple) else (value,))]
        return shlex.join(parts + switches)

    def validate(self) -> None:
        """Refuse values argparse lets through (before any slow work).

        Raises:
            BenchError: a non-positive stream length, a negative (or infinite) --negative-hours, LOW > HIGH, a
                negative tolerance, no timed run, or a negatives folder that does not exist.
        """
        if self.stream_minutes <= 0:
            raise BenchError(f"--stream-minutes must be positive, got {self.stream_minutes:g}")
        if self.negative_hours is not None and not 0 <= self.negative_hours < math.inf:
            raise BenchError(f"--negative-hours must be >= 0, got {self.negative_hours:g}")
        if self.carry_state and not self.negative_hours:
            raise BenchError("--carry-state needs --negative-hours")
        if self.carry_state and self.verifier is not None:
            raise BenchError("--carry-state and --verifier cannot be combined: run them as two benches")
        if not self.snr_db[0] <= self.snr_db[1]:
            raise BenchError(f"--snr-db needs LOW <= HIGH, got {self.snr_db[0]:g} {self.snr_db[1]:g}")
        if self.tolerance < 0 or self.latency_runs < 1:
            raise BenchError("need --tolerance >= 0 and --latency-runs >= 1")
        for folder in self.negatives:
            if not Path(folder).expanduser().is_dir():
                raise BenchError(f"negatives folder {folder} does not exist")


def _word(value: Any) -> str:
    """One value as the command line spells it (floats in the shortest form: ``1``, ``0.5``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parser_default(f: dataclasses.Field) -> Any:
    """What argparse starts from: nothing for a required or repeatable (``extend``) option, a list for a
    fixed number of values (as ``%(default)s`` shows it), else the field's default."""
    if f.default is dataclasses.MISSING or f.metadata["argparse"].get("action") == "extend":
        return None
    return list(f.default) if isinstance(f.default, tuple) else f.default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of :class:`BenchOptions` on ``parser``, in declaration order."""
    for f in dataclasses.fields(BenchOptions):
        settings = dict(f.metadata["argparse"])
        if f.default is dataclasses.MISSING:
            settings["required"] = True
        elif (default := _parser_default(f)) is not None:
            settings["default"] = default
        parser.add_argument(f.metadata["flag"], **settings)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The options parsed by a parser set up by :func:`add_arguments` (lists as tuples; an absent
    repeatable option as ``()``)."""
    values = {}
    for f in dataclasses.fields(BenchOptions):
        value = getattr(args, f.name)
        is_tuple = isinstance(f.default, tuple) or f.metadata["argparse"].get("nargs") is not None
        values[f.name] = tuple(value or ()) if is_tuple else value
    return BenchOptions(**values)
