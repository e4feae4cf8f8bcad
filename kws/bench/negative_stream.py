"""``kws bench --negative-hours H``: the negative-only stream (:mod:`kws.bench.negative_passes`) run through
the live path, pass by pass, and its false accepts at the shipped defaults and over the threshold sweep.

Each pass is produced slot by slot and fed chunk by chunk (the chunks ``kws listen --input`` reads) to one
:class:`~kws.runtime.detect.KeywordSpotter` through :class:`~kws.runtime.stream.StreamRunner`, the runtime's
own loop; the spotter is reset between passes (each pass is a stream of its own), unless ``--carry-state``:
then nothing is ever reset and the passes are one stream of H hours (each pass scored on its own times). The
pass's recorded score trace gives the sweep (``detections_from_scores``), then is dropped: memory is bounded by one pass
(``PASS_SECONDS_MAX``), not by H. Nothing is written to disk unless ``--keep-stream``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kws.bench.events import KIND_NEGATIVE, KIND_UNKNOWN, StreamEvent
from kws.bench.inputs import ModelFiles
from kws.bench.negative_passes import (
    NoiseChoice,
    PassPlan,
    cached,
    noise_choices,
    pass_blocks,
    pass_room,
    plan_passes,
    replay_seconds,
)
from kws.bench.negative_report import FalseAccepts, NegativePass, NegativeStream, NegativeSweepPoint
from kws.bench.options import BenchOptions
from kws.bench.scoring import SECONDS_PER_HOUR, score_detections
from kws.bench.speed import BENCH_THREADS
from kws.bench.streaming import SWEEP_THRESHOLDS, bench_config, stream_noises, unknown_utterances
from kws.bench.utterances import negative_utterances
from kws.bench.verifier_bench import VerifiedPass, negative_verifier_stream, verified_pass
from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.data.reverb import METHOD_NOISE, method
from kws.data.splits import PreparedData
from kws.runtime.sources import AudioSource
from kws.runtime.verifier import VerifiedSpotter

logger = logging.getLogger(__name__)

NEGATIVE_STREAM_FILE = "negative_stream.wav"
"""``--keep-stream``: the negative stream, all passes end to end, in OUT."""
SUMMED_STATS = ("audio_seconds", "wall_seconds", "cpu_seconds", "model_seconds", "model_calls", "overflows",
                "detections")  # fmt: skip
"""The runtime's StreamStats fields added up over the passes."""
MS_PER_S = 1000.0


class BlockSource(AudioSource):
    """Blocks from a generator (int16 ``[n]`` each, at the model rate) re-cut into the runtime's chunks of
    ``chunk_seconds``, as :class:`~kws.runtime.files.FileSource` gives a file to ``kws listen --input``;
    each block is also written to ``writer`` if given (``--keep-stream``)."""

    def __init__(self, blocks: Iterable[np.ndarray], sample_rate: int, chunk_seconds: float,
                 writer: Any = None) -> None:  # fmt: skip
        super().__init__(sample_rate, sample_rate, "negative stream")
        self._blocks, self._writer = blocks, writer
        self._chunk = max(1, round(chunk_seconds * sample_rate))

    def __iter__(self) -> Iterator[np.ndarray]:
        pending = np.zeros(0, np.int16)
        for block in self._blocks:
            if self._writer is not None:
                self._writer.write(block)
            pending = np.concatenate([pending, block]) if len(pending) else block
            whole = len(pending) // self._chunk * self._chunk
            for start in range(0, whole, self._chunk):
                yield self._convert(pending[start : start + self._chunk])
            pending = pending[whole:]
        if len(pending):
            yield self._convert(pending)


def _noise_choices(prepared: PreparedData, split: str, sample_rate: int) -> tuple[list[Any], str]:
    recordings, description = stream_noises(prepared, split, sample_rate)
    files = prepared.corpus.noise_files
    if prepared.noises and len(files) == len(recordings):
        names = [p.name for p in files]
    else:
        names = [f"recording {i + 1}" for i in range(len(recordings))]
    return noise_choices(recordings, names, description, sample_rate), description


def _summed(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The passes' StreamStats added up, with the rates per audio second."""
    total: dict[str, Any] = {k: sum(s[k] for s in stats) for k in SUMMED_STATS}
    audio = total["audio_seconds"]
    total["passes"] = len(stats)
    total["real_time_factor"] = total["wall_seconds"] / audio if audio else 0.0
    total["cpu_ms_per_audio_second"] = MS_PER_S * total["cpu_seconds"] / audio if audio else 0.0
    total["model_ms_per_audio_second"] = MS_PER_S * total["model_seconds"] / audio if audio else 0.0
    return total


def _seconds_of(events: list[StreamEvent], kind: str) -> float:
    return sum(e.end - e.start for e in events if e.kind == kind)


@dataclasses.dataclass(frozen=True)
class _PassRun:
    """One pass run: its report entry, the runtime's statistics, notes, and false accepts per sweep threshold
    (``total`` and ``real``: during the negative recordings)."""

    result: NegativePass
    stats: dict[str, Any]
    notes: tuple[str, ...]
    swept: dict[float, Counter[str]]
    verified: VerifiedPass | None = None


def _run_pass(
    spotter: Any,
    plan: PassPlan,
    material: list[Any],
    noise: NoiseChoice,
    options: BenchOptions,
    chunk_seconds: float,
    thresholds: list[float],
    writer: Any,
) -> _PassRun:
    """Stream one pass through ``spotter`` (the live path, recording the scores), score it at the spotter's
    threshold and at every threshold of the sweep, and reset the spotter (``--carry-state``: only drop its
    recorded scores; the pass's detection and score times are taken from where the pass began)."""
    from kws.runtime import StreamRunner, detections_from_scores

    config, sample_rate = spotter.config, spotter.sample_rate
    began = spotter.audio_seconds if options.carry_state else 0.0  # where this pass starts in the spotter's stream
    events: list[StreamEvent] = []
    room = pass_room(plan, sample_rate, options.seed)
    blocks = pass_blocks(plan, material, noise, room, sample_rate, options.seed, events)
    found: list[Any] = []
    stats = StreamRunner(spotter, BlockSource(blocks, sample_rate, chunk_seconds, writer), found.append).run()
    seconds = plan.samples / sample_rate
    verified = None
    if isinstance(spotter, VerifiedSpotter):  # --verifier: `found` is what it confirmed; the first stage's own
        verified = verified_pass(spotter, stats, found, events, seconds, options.tolerance)
        found = verified.run.candidates
    trace = spotter.trace()
    state_max_abs = max(float(np.abs(state).max()) for state in spotter.engine.states)
    if options.carry_state:
        found = [dataclasses.replace(d, time=d.time - began) for d in found]
        trace = dataclasses.replace(trace, times=trace.times - began)
        spotter.clear_trace()
    else:
        spotter.reset()
    default = score_detections(found, events, seconds, options.tolerance, config.threshold)
    swept: dict[float, Counter[str]] = {}
    for t in thresholds:
        if t == config.threshold:
            s = default
        else:
            again = detections_from_scores(trace, dataclasses.replace(config, threshold=t))
            s = score_detections(again, events, seconds, options.tolerance, t)
        swept[t] = Counter(total=s.false_accepts, real=s.false_accepts_by_context.get(KIND_NEGATIVE, 0))
    replay = detections_from_scores(trace, config)  # carried: smoothing and refractory start afresh at the pass
    same = [(round(d.time, 6), d.keyword) for d in replay] == [(round(d.time, 6), d.keyword) for d in found]
    notes = () if same else (f"pass {plan.index}: the score-trace replay does not reproduce the live detections",)
    keywords = {k: int(v["false_accepts"]) for k, v in default.per_keyword.items() if v["false_accepts"]}
    real = default.false_accepts_by_context.get(KIND_NEGATIVE, 0)
    logger.info("negative pass %d: %.1f min, %d false accepts", plan.index, seconds / 60, default.false_accepts)
    result = NegativePass(
        index=plan.index,
        start_s=plan.start / sample_rate,
        seconds=seconds,
        noise=noise.name,
        snr_db=plan.snr_db,
        gain_db=plan.gain_db,
        reverb=room.description if room is not None else "none",
        rt60_s=plan.rt60_s,
        real_speech_events=sum(e.kind == KIND_NEGATIVE for e in events),
        unknown_events=sum(e.kind == KIND_UNKNOWN for e in events),
        total=FalseAccepts.of(default.false_accepts, seconds),
        real_speech=FalseAccepts.of(real, _seconds_of(events, KIND_NEGATIVE)),
        false_accepts_by_context=default.false_accepts_by_context,
        false_accepts_per_keyword=dict(sorted(keywords.items())),
        state_max_abs=state_max_abs,
    )
    return _PassRun(result, stats.to_dict(), notes, swept, verified)


def _sweep_points(
    thresholds: list[float],
    swept: dict[float, Counter[str]],
    mixed_sweep: tuple[Any, ...],
    seconds: float,
    real_seconds: float,
) -> tuple[NegativeSweepPoint, ...]:
    """The sweep's points: the negative stream's false accepts, and the DET point they give with the mixed
    stream's (recall from the mixed stream; false accepts of both over both streams' non-keyword hours)."""
    mixed = {r.threshold: r for r in mixed_sweep}
    points = []
    for t in thresholds:
        m, negative = mixed.get(t), FalseAccepts.of(swept[t]["total"], seconds)
        combined = negative
        if m is not None:
            mixed_seconds = m.nonkeyword_hours * SECONDS_PER_HOUR
            combined = FalseAccepts.of(m.false_accepts + swept[t]["total"], mixed_seconds + seconds)
        points.append(
            NegativeSweepPoint(
                threshold=t,
                recall=m.recall if m is not None else None,
                negative=negative,
                real_speech=FalseAccepts.of(swept[t]["real"], real_seconds),
                combined=combined,
            )
        )
    return tuple(points)


def run_negative_stream(
    options: BenchOptions,
    files: ModelFiles,
    prepared: PreparedData,
    labels: list[str],
    sample_rate: int,
    mixed_sweep: tuple[Any, ...],
    out: Path,
    verifier: Any = None,
) -> tuple[NegativeStream, Any]:
    """``options.negative_hours`` hours of non-keyword audio through the live path, scored per pass.

    Args:
        mixed_sweep: the mixed stream's sweep (:class:`~kws.bench.report.DetectionFigures` per threshold),
            for the recall and the combined false accepts of each DET point.
        out: the report folder (``--keep-stream`` writes ``NEGATIVE_STREAM_FILE`` there).
        verifier: a :class:`~kws.runtime.verifier.Verifier` (``--verifier``): each pass runs through the verified
            path too; the report's figures stay the first stage's, the verifier's come back beside them.

    Returns:
        the report, and the verifier's figures (:class:`~kws.bench.verification.VerifierStream`; None without).

    Raises:
        StreamSetError: no non-keyword material, or a recording that cannot be read.
    """
    import soundfile as sf

    from kws.runtime import KeywordSpotter, load_model

    started = time.perf_counter()
    negatives = cached([u for folder in options.negatives for u in negative_utterances(folder)], sample_rate)
    unknowns = cached(unknown_utterances(prepared, options.split, labels), sample_rate)
    material = negatives + unknowns
    choices, noise_source = _noise_choices(prepared, options.split, sample_rate)
    passes = plan_passes(options.negative_hours, material, len(choices), sample_rate, options.seed, options.snr_db)
    model = load_model(files.stream_int8, BENCH_THREADS)
    config = bench_config(model.info)  # the mixed stream's operating point
    spotter: Any = KeywordSpotter(model, config, record_scores=True)
    if verifier is not None:
        spotter = VerifiedSpotter(spotter, verifier, record_checks=True)
    chunk_seconds = spotter.engine.chunk_frames * spotter.info.hop_samples / sample_rate
    thresholds = sorted(set(SWEEP_THRESHOLDS) | {config.threshold})
    swept: dict[float, Counter[str]] = {t: Counter() for t in thresholds}
    per_keyword: Counter[str] = Counter()
    results, stats, notes, verified = [], [], [], []
    kept = out / NEGATIVE_STREAM_FILE if options.keep_stream else None
    writer = sf.SoundFile(str(kept), "w", samplerate=sample_rate, channels=1, subtype="PCM_16") if kept else None
    logger.info("negative stream: %g h in %d passes of %.1f min", options.negative_hours, len(passes),
                passes[0].samples / sample_rate / 60)  # fmt: skip
    try:
        for plan in passes:
            run = _run_pass(spotter, plan, material, choices[plan.noise], options, chunk_seconds, thresholds, writer)
            results.append(run.result)
            stats.append(run.stats)
            notes += run.notes
            for t, counts in run.swept.items():
                swept[t].update(counts)
            per_keyword.update(run.result.false_accepts_per_keyword)
            verified += [run.verified] if run.verified is not None else []
    finally:
        if writer is not None:
            writer.close()
    total_seconds = sum(p.seconds for p in results)
    real_seconds = sum(p.real_speech.hours for p in results) * SECONDS_PER_HOUR
    sweep = _sweep_points(thresholds, swept, mixed_sweep, total_seconds, real_seconds)
    if not negatives:
        notes.append("no --negatives: the negative stream's only speech is unknown-word clips (no real-speech row)")
    if method() == METHOD_NOISE and any(p.rt60_s is not None for p in passes):
        notes.append("pyroomacoustics is not installed: reverberation is a decaying-noise tail, not a room")
    if (pass_seconds := passes[0].samples / sample_rate) < replay_seconds(material):
        notes.append(
            f"a pass ({pass_seconds / 60:.1f} min) is shorter than one replay of the material "
            f"({replay_seconds(material) / 60:.1f} min with its gaps): each pass plays another seeded part of it"
        )
    keyword_names = [x for x in labels if x not in (SILENCE_LABEL, UNKNOWN_LABEL)]
    report = NegativeStream(
        hours_requested=float(options.negative_hours),
        seconds=total_seconds,
        threshold=config.threshold,
        real_speech_files=len(negatives),
        real_speech_seconds=sum(u.seconds for u in negatives),
        unknown_clips=len(unknowns),
        unknown_seconds=sum(u.seconds for u in unknowns),
        noise_source=noise_source,
        reverb_method=method(),
        total=FalseAccepts.of(sum(p.total.false_accepts for p in results), total_seconds),
        real_speech=FalseAccepts.of(sum(p.real_speech.false_accepts for p in results), real_seconds),
        per_keyword={k: FalseAccepts.of(per_keyword[k], total_seconds) for k in keyword_names},
        passes=tuple(results),
        sweep=sweep,
        stats=_summed(stats),
        wall_seconds=time.perf_counter() - started,
        kept=str(kept) if kept is not None else None,
        notes=tuple(notes),
        carried=options.carry_state,
    )
    return report, negative_verifier_stream(verified) if verified else None
