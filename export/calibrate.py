"""Per-keyword detection thresholds chosen on held-out negative audio to a false-accept budget (``kws calibrate``).

examples:
  kws calibrate models/kws.stream.int8.onnx --data speech_commands_v0.02 --negatives wake_word_negatives \\
      --fa-per-hour 0.5 -o models/kws.stream.calibrated.int8.onnx
  kws calibrate MODEL --data DIR --negatives DIR --reset-period-ms 0 -o OUT   # one lane, state carried forever

A calibration stream is built (the bench's stream builder, :mod:`kws.bench.streams`) from audio no part of the
model was chosen on by its training: the ``validation`` split of the data folders (the model's keywords and other
words, split by the data layout's rule) and the "calibration" part of the ``--negatives`` recordings
(:func:`kws.data.layout.negative_split`: never used by ``kws train``, never streamed by ``kws bench``), over
background noise. It runs once through the runtime's own path (:func:`kws.runtime.stream.stream_scores`) with the
requested lanes, and the recorded posteriors are re-decided at every threshold of
:data:`CALIBRATION_THRESHOLDS`; the detections are scored against the planted words
(:func:`kws.bench.scoring.score_detections`). Each keyword gets the lowest threshold from which on its false
accepts (its detections that match no planted word of it) stay within its share of the budget:
``--fa-per-hour`` / keywords, per hour of non-keyword audio. The model is then copied with ``kws.thresholds``
and ``kws.reset_period_ms`` (and ``kws.patience`` if given) in its metadata, which ``kws listen`` uses.

A stream too short to resolve the budget is reported as such, with the hours it would need (no false accept in
that long puts the rate below the budget with 95% confidence); the thresholds are then the lowest that gave no
more false accepts on this stream than the budget allows, a weaker claim than the budget itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kws.bench.events import KIND_KEYWORD, KIND_NEGATIVE
from kws.bench.scoring import MATCH_TOLERANCE_SECONDS, DetectionScore, poisson_upper
from kws.bench.streams import SNR_DB, StreamSet, composition, plan_stream, render_stream
from kws.bench.utterances import Utterance, file_utterances
from kws.constants import AUDIO_EXTENSIONS
from kws.errors import KWSError
from kws.runtime.config import DEFAULT_LANES, DEFAULT_RESET_PERIOD_MS, DEFAULT_THREADS, SpotterConfig

logger = logging.getLogger(__name__)

PROG = "kws calibrate"
CALIBRATION_SPLIT = "validation"
"""The data split whose keyword and other-word clips are planted in the calibration stream."""
DEFAULT_FA_PER_HOUR = 0.5
DEFAULT_MINUTES = 60.0
CALIBRATION_THRESHOLDS: tuple[float, ...] = (
    *(round(0.1 + 0.02 * i, 2) for i in range(45)), 0.99, 0.995, 0.999,
)  # fmt: skip
"""Thresholds tried, ascending (0.10, 0.12, ... 0.98, then 0.99, 0.995, 0.999)."""
SPLIT_MODES = ("auto", "official", "speaker-hash")


class CalibrationError(KWSError):
    """The calibration cannot run as asked (no keyword clips, no calibration negatives, a bad option)."""


@dataclass(frozen=True)
class CalibrationOptions:
    """What ``kws calibrate`` is asked (see the module docstring).

    Attributes:
        model: the streaming ONNX model to calibrate; out: where its calibrated copy goes.
        data: Speech Commands folders (their validation split is used); negatives: non-keyword speech folders.
        fa_per_hour: false-accept budget of all keywords together, per hour of non-keyword audio.
        reset_period_ms: lane reset period to calibrate for (ms; 0: one lane, never reset).
        patience: frames over threshold a detection needs (None: the runtime's default, not written).
        minutes: requested stream length (min).
        split_mode: how speakers are split (``auto``: the data layout's rule for these folders).
        seed: seed of the stream; snr_db: speech level over the noise (dB range); tolerance: seconds after a
            word during which its detection is a hit; threads: onnxruntime threads.
    """

    model: Path
    data: tuple[str, ...]
    negatives: tuple[str, ...]
    out: Path
    fa_per_hour: float = DEFAULT_FA_PER_HOUR
    reset_period_ms: float = DEFAULT_RESET_PERIOD_MS
    patience: int | None = None
    minutes: float = DEFAULT_MINUTES
    split_mode: str = "auto"
    seed: int = 0
    snr_db: tuple[float, float] = SNR_DB
    tolerance: float = MATCH_TOLERANCE_SECONDS
    threads: int = DEFAULT_THREADS

    def spotter_config(self) -> SpotterConfig:
        """The runtime settings calibrated for (thresholds aside): one lane for period 0, else the default lanes.

        Raises:
            CalibrationError: a non-positive budget, length or an unknown split mode.
            ConfigError: a reset period or patience out of the runtime's ranges.
        """
        if not self.fa_per_hour > 0 or not self.minutes > 0 or self.tolerance < 0:
            raise CalibrationError(f"--fa-per-hour and --minutes must be > 0 and --tolerance >= 0, got "
                                   f"{self.fa_per_hour:g}, {self.minutes:g}, {self.tolerance:g}")  # fmt: skip
        if self.split_mode not in SPLIT_MODES:
            raise CalibrationError(f"unknown split mode {self.split_mode!r} (use {', '.join(SPLIT_MODES)})")
        lanes = 1 if self.reset_period_ms == 0 else DEFAULT_LANES
        extra = {} if self.patience is None else {"patience": self.patience}
        return SpotterConfig(lanes=lanes, reset_period_ms=self.reset_period_ms, **extra)


@dataclass(frozen=True)
class KeywordCalibration:
    """One keyword's chosen threshold and what it gives on the calibration stream."""

    keyword: str
    threshold: float
    events: int
    hits: int
    false_accepts: int
    within_budget: bool

    @property
    def recall(self) -> float:
        return self.hits / self.events if self.events else float("nan")


@dataclass(frozen=True)
class Calibration:
    """The result of a calibration.

    Attributes:
        keywords: per keyword, in the model's order.
        config: the runtime settings calibrated for, with the chosen thresholds.
        score: every keyword at its threshold, on the stream.
        budget_per_keyword: false accepts per hour of non-keyword audio allowed to each keyword.
        needed_hours: non-keyword audio needed to resolve that budget (0 false accepts in that long: below it
            with 95% confidence).
        stream: the calibration stream (its WAV file is gone once :func:`calibrate` returns).
    """

    keywords: tuple[KeywordCalibration, ...]
    config: SpotterConfig
    score: DetectionScore
    budget_per_keyword: float
    needed_hours: float
    stream: StreamSet

    @property
    def resolved(self) -> bool:
        return self.score.nonkeyword_hours >= self.needed_hours

    @property
    def thresholds(self) -> dict[str, float]:
        return {k.keyword: k.threshold for k in self.keywords}

    def report(self) -> list[str]:
        """The report lines of ``kws calibrate``."""
        hours, comp = self.score.nonkeyword_hours, self.stream.composition
        lanes = f"{self.config.lanes} lane(s) reset every {self.config.reset_period_ms:g} ms"
        lines = [
            f"{PROG}: {self.stream.seconds / 60:.1f} min stream ({comp.keyword_events} keywords, "
            f"{comp.unknown_events} other words, {comp.negative_events} negatives from {comp.negative_files} "
            f"recordings), {hours:.2f} h of non-keyword audio; "
            + (lanes if self.config.reset_period_ms else "1 lane, never reset")
            + (f", patience {self.config.patience} frames" if self.config.patience != 1 else ""),
            *(f"{PROG}: note: {n}" for n in comp.notes),
        ]
        for k in self.keywords:
            rate = k.false_accepts / hours if hours else float("nan")
            lines.append(f"{PROG}: {k.keyword:<12} threshold {k.threshold:<6g} recall {100 * k.recall:5.1f}% "
                         f"({k.hits}/{k.events})  {k.false_accepts} false accepts = {rate:.2f}/h"
                         + ("" if k.within_budget else "  OVER BUDGET even at the highest threshold"))  # fmt: skip
        budget = f"{self.budget_per_keyword:.3g} false accepts/h per keyword"
        if self.resolved:
            lines.append(f"{PROG}: budget {budget}: resolved ({hours:.1f} h >= {self.needed_hours:.1f} h needed)")
        else:
            allowed = int(self.budget_per_keyword * hours)
            lines.append(f"{PROG}: budget {budget}: NOT resolved: {hours:.2f} h of non-keyword audio, "
                         f"{self.needed_hours:.1f} h needed; the thresholds only keep each keyword to at most "
                         f"{allowed} false accept(s) on this stream")  # fmt: skip
        lines.append(f"{PROG}: all keywords: recall {100 * self.score.recall:.1f}%, "
                     f"{self.score.fa_per_hour:.2f} false accepts/h")  # fmt: skip
        return lines


# ------------------------------------------------------------------------------------------- the stream


def calibration_negatives(folders: Sequence[str | Path]) -> list[Utterance]:
    """The "calibration" part of the non-keyword speech folders (:func:`kws.data.layout.negative_split`).

    Raises:
        DataError: a folder does not exist or holds no audio.
        CalibrationError: no readable calibration file in them.
    """
    from kws.data.layout import NEGATIVE_CALIBRATION, negative_files, negative_split

    paths = [p for folder in folders for p in negative_files(folder) if negative_split(p) == NEGATIVE_CALIBRATION]
    found = file_utterances(paths, KIND_NEGATIVE, lambda p: p.parent.name)
    if not found:
        where = ", ".join(map(str, folders))
        raise CalibrationError(f"no readable calibration audio ({', '.join(AUDIO_EXTENSIONS)}) under {where} "
                               "(a third of the files kws train never uses)")  # fmt: skip
    return found


def build_calibration_stream(options: CalibrationOptions, labels: Sequence[str], sample_rate: int,
                             path: Path) -> StreamSet:  # fmt: skip
    """Plan and render the calibration stream into ``path`` (16-bit WAV at ``sample_rate``).

    Raises:
        DataError: unusable data folders; CalibrationError: no keyword clip in the validation split.
    """
    from kws.bench.streaming import stream_noises, unknown_utterances
    from kws.config import DataConfig
    from kws.data.layout import load_corpus
    from kws.data.splits import PreparedData, load_noises

    corpus = load_corpus(DataConfig(roots=tuple(map(str, options.data))), options.split_mode)
    keyword_set = set(labels)
    clips = [c for c in corpus.clips if c.split == CALIBRATION_SPLIT and c.word in keyword_set]
    word = {str(c.path): c.word for c in clips}
    keywords = file_utterances([c.path for c in clips], KIND_KEYWORD, lambda p: word[str(p)])
    if not keywords:
        raise CalibrationError(f"no clip of the model's keywords in the {CALIBRATION_SPLIT} split of "
                               f"{', '.join(map(str, options.data))} (split mode {corpus.split_mode})")  # fmt: skip
    prepared = PreparedData(labels=list(labels), corpus=corpus, noises=load_noises(corpus, sample_rate), splits={},
                            summary={})  # fmt: skip
    unknowns = unknown_utterances(prepared, CALIBRATION_SPLIT, list(labels))
    negatives = calibration_negatives(options.negatives)
    noises, noise_source = stream_noises(prepared, CALIBRATION_SPLIT, sample_rate)
    plan = plan_stream(keywords, unknowns, negatives, options.minutes * 60.0, options.seed, options.snr_db)
    logger.info("rendering a %.1f min calibration stream (%d events, split mode %s)", options.minutes, len(plan),
                corpus.split_mode)  # fmt: skip
    events, seconds = render_stream(plan, noises, sample_rate, path, options.seed)
    comp = composition(events, seconds, len(keywords), len(negatives), noise_source, options.snr_db, options.seed)
    return StreamSet(path=path, sample_rate=sample_rate, seconds=seconds, events=events, composition=comp)


# ------------------------------------------------------------------------------------------ the choice


def lowest_within(counts: Sequence[int], allowed: float) -> int:
    """Index of the lowest threshold from which on (it and every higher one) the false accepts stay within
    ``allowed`` (the last index when even the highest threshold is over).

    Args:
        counts: the false accepts at each threshold, ascending thresholds.
    """
    chosen = len(counts) - 1
    for i in range(len(counts) - 1, -1, -1):
        if counts[i] > allowed:
            break
        chosen = i
    return chosen


def false_accepts(score: DetectionScore, keyword: str) -> int:
    """Detections of ``keyword`` matching no planted word of it."""
    return _figure(score, keyword, "false_accepts")


def _figure(score: DetectionScore, keyword: str, name: str) -> int:
    return int(score.per_keyword.get(keyword, {}).get(name, 0))


def calibrate(options: CalibrationOptions) -> Calibration:
    """Build the stream, run the model over it once and choose each keyword's threshold (nothing is written).

    Raises:
        ModelError, ConfigError, DataError, CalibrationError: one line each.
    """
    from kws.bench.scoring import score_detections
    from kws.runtime import detections_from_scores, load_model, stream_scores

    base = options.spotter_config()
    model = load_model(options.model, options.threads)
    info = model.info
    with tempfile.TemporaryDirectory(prefix="kws-calibrate-") as folder:
        stream = build_calibration_stream(options, info.keywords, info.sample_rate, Path(folder) / "stream.wav")
        logger.info("running the stream through the runtime (%s)", info.path.name)
        trace = stream_scores(model, stream.path, config=base)

    def score(config: SpotterConfig) -> DetectionScore:
        detections = detections_from_scores(trace, config)
        return score_detections(detections, stream.events, stream.seconds, options.tolerance)

    sweep = [score(dataclasses.replace(base, threshold=t)) for t in CALIBRATION_THRESHOLDS]
    hours = sweep[0].nonkeyword_hours
    budget = options.fa_per_hour / len(info.keywords)
    allowed = budget * hours
    top = len(CALIBRATION_THRESHOLDS) - 1
    index = {k: lowest_within([false_accepts(s, k) for s in sweep], allowed) for k in info.keywords}
    # Keywords interact (one detection suppresses others for the refractory time): with each at its own
    # threshold, a keyword still over its share is raised one step at a time until none is (or all are at the top).
    while True:
        config = dataclasses.replace(base, thresholds={k: CALIBRATION_THRESHOLDS[i] for k, i in index.items()})
        final = score(config)
        over = [k for k, i in index.items() if false_accepts(final, k) > allowed and i < top]
        if not over:
            break
        for k in over:
            index[k] += 1
    keywords = tuple(
        KeywordCalibration(
            keyword=k, threshold=CALIBRATION_THRESHOLDS[index[k]], events=_figure(final, k, "events"),
            hits=_figure(final, k, "hits"), false_accepts=false_accepts(final, k),
            within_budget=false_accepts(final, k) <= allowed,
        )
        for k in info.keywords
    )  # fmt: skip
    return Calibration(keywords=keywords, config=config, score=final, budget_per_keyword=budget,
                       needed_hours=poisson_upper(0) / budget, stream=stream)  # fmt: skip


def write_calibrated(source: Path, out: Path, result: Calibration, patience: int | None) -> None:
    """Copy the model ``source`` to ``out`` (atomically) with the calibrated settings in its metadata, then check
    that the runtime reads them back.

    Raises:
        ModelError: the written file does not read back as calibrated.
    """
    import onnx

    from kws.export.onnx_export import save_model, set_metadata
    from kws.format import ModelError, run_settings_props
    from kws.runtime import StreamingModel

    proto = onnx.load(str(source))
    set_metadata(proto, run_settings_props(result.thresholds, result.config.reset_period_ms, patience))
    save_model(proto, out)
    info = StreamingModel(out).info
    if dict(info.thresholds) != result.thresholds or info.reset_period_ms != result.config.reset_period_ms:
        raise ModelError(f"{out}: the calibrated settings did not read back")


# ------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``kws calibrate``."""
    parser.add_argument("model", type=Path, metavar="MODEL", help="streaming ONNX model (*.stream.int8.onnx)")
    parser.add_argument("--data", nargs="+", required=True, metavar="DIR",
                        help=f"Speech Commands folder(s): their {CALIBRATION_SPLIT} split is planted")  # fmt: skip
    parser.add_argument("--negatives", nargs="+", required=True, metavar="DIR",
                        help="folder(s) of non-keyword speech: their calibration part (a third of the files kws "
                             "train never uses; kws bench streams the rest) is streamed")  # fmt: skip
    parser.add_argument("--fa-per-hour", type=float, default=DEFAULT_FA_PER_HOUR, metavar="N",
                        help="false accepts per hour of non-keyword audio, all keywords together "
                             "(default: %(default)g)")  # fmt: skip
    parser.add_argument("--reset-period-ms", type=float, default=DEFAULT_RESET_PERIOD_MS, metavar="MS",
                        help=f"lane reset period to calibrate for; 0: one lane, never reset (default: %(default)g, "
                             f"{DEFAULT_LANES} lanes)")  # fmt: skip
    parser.add_argument("--patience", type=int, metavar="N",
                        help="frames over threshold a detection needs, written to the model (default: 1, "
                             "not written)")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, metavar="M",
                        help="length of the calibration stream (default: %(default)g)")  # fmt: skip
    parser.add_argument("--split-mode", choices=SPLIT_MODES, default="auto",
                        help="how speakers are split; auto: the data layout's rule for these folders, as "
                             "kws train's (default: %(default)s)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the stream (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="onnxruntime threads (default: 1)")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="OUT.onnx", help="the calibrated copy")


def run(args: argparse.Namespace) -> int:
    """``kws calibrate``: the report on stdout, the calibrated copy at ``--out``; errors raise KWSError."""
    options = CalibrationOptions(
        model=args.model, data=tuple(args.data), negatives=tuple(args.negatives), out=args.out,
        fa_per_hour=args.fa_per_hour, reset_period_ms=args.reset_period_ms, patience=args.patience,
        minutes=args.minutes, split_mode=args.split_mode, seed=args.seed, threads=args.threads,
    )  # fmt: skip
    result = calibrate(options)
    for line in result.report():
        print(line)
    write_calibrated(options.model, options.out, result, options.patience)
    print(f"{PROG}: wrote {options.out} (kws.thresholds, kws.reset_period_ms in its metadata)")
    return 0
