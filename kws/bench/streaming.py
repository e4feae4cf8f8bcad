"""The bench's detection stream: built from the test split (:mod:`kws.bench.streams`), run through the path
of ``kws listen --input`` with the int8 streaming model at the shipped defaults, and scored
(:mod:`kws.bench.scoring`) at those defaults and over a threshold sweep of one recorded score trace."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from kws.bench.events import KIND_KEYWORD, KIND_UNKNOWN
from kws.bench.inputs import ModelFiles
from kws.bench.options import BenchOptions
from kws.bench.report import Detection, DetectionFigures, OperatingPoint, Streaming
from kws.bench.scoring import DetectionScore, score_detections
from kws.bench.speed import BENCH_THREADS
from kws.bench.streams import StreamSet, composition, plan_stream, render_stream
from kws.bench.utterances import Utterance, file_utterances, negative_utterances
from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.data.audio import AudioError, int16_to_float, load_audio
from kws.data.splits import PreparedData

logger = logging.getLogger(__name__)

SWEEP_THRESHOLDS: tuple[float, ...] = (
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    0.97,
    0.98,
    0.99,
    0.995,
    0.999,
)
"""Detection thresholds of the DET sweep (the shipped default is added if missing)."""
SHORT_STREAM_SHARE = 0.9
"""A stream shorter than this share of the requested duration gets a note (not enough material)."""
BUFFERED_QUANTILE = 0.9
DETECTION_TIME_DIGITS, DETECTION_CONFIDENCE_DIGITS = 3, 4
"""Decimals of a detection's time (s) and confidence in the report."""


def stream_noises(prepared: PreparedData, split: str, sample_rate: int) -> tuple[list[np.ndarray], str]:
    """Noise recordings for the stream's bed, and a description: the data's ``_background_noise_`` files; if
    none, the ``split`` split's ``_silence_`` clips (the test archive's noise clips) end to end; else none
    (the bed falls back to white noise)."""
    if prepared.noises:
        names = ", ".join(p.name for p in prepared.corpus.noise_files)
        return list(prepared.noises), f"_background_noise_ recordings ({names})"
    silence = [c.path for c in prepared.corpus.clips if c.word == SILENCE_LABEL and c.split == split]
    clips = []
    for path in silence:
        try:
            clips.append(load_audio(path, sample_rate))
        except AudioError as exc:
            logger.warning("skipping %s", exc)
    if clips:
        return [np.concatenate(clips)], f"{len(clips)} {SILENCE_LABEL} clips of the {split} split, end to end"
    return [], "white noise (the data has no background-noise recordings)"


def unknown_utterances(prepared: PreparedData, split: str, labels: list[str]) -> list[Utterance]:
    """The ``split`` split's clips of words that are not among ``labels`` (the ``_unknown_`` clips)."""
    label_set = set(labels)
    clips = [c for c in prepared.corpus.clips if c.split == split and c.word not in label_set]
    words = {str(c.path): c.word for c in clips}
    return file_utterances([c.path for c in clips], KIND_UNKNOWN, lambda p: words[str(p)])


def build_stream(
    options: BenchOptions, prepared: PreparedData, labels: list[str], sample_rate: int, path: Path
) -> StreamSet:
    """Plan and render the long stream of the ``options.split`` split's keyword and ``_unknown_`` clips and
    the ``--negatives`` into ``path`` (16-bit WAV, ``sample_rate`` Hz)."""
    data = prepared.splits[options.split]
    keywords = [
        Utterance(
            KIND_KEYWORD,
            labels[y],
            data.paths[i],
            data.audio.shape[1] / sample_rate,
            audio=int16_to_float(data.audio[i]),
        )
        for i, y in enumerate(data.labels)
        if labels[y] not in (SILENCE_LABEL, UNKNOWN_LABEL)
    ]
    unknowns = unknown_utterances(prepared, options.split, labels)
    negatives = [u for folder in options.negatives for u in negative_utterances(folder)]
    if not options.negatives:
        logger.warning("no --negatives: the stream's only non-keyword speech is %s clips", UNKNOWN_LABEL)
    noises, noise_source = stream_noises(prepared, options.split, sample_rate)
    seconds = options.stream_minutes * 60.0
    plan = plan_stream(keywords, unknowns, negatives, seconds, options.seed, options.snr_db)
    logger.info("rendering a %.1f min stream (%d events) to %s", options.stream_minutes, len(plan), path)
    events, duration = render_stream(plan, noises, sample_rate, path, options.seed)
    comp = composition(events, duration, len(keywords), len(negatives), noise_source, options.snr_db, options.seed)
    if duration < SHORT_STREAM_SHARE * seconds:
        note = (
            f"the stream is {duration / 60:.1f} min, shorter than the {options.stream_minutes:g} "
            "min asked for: not enough non-keyword material"
        )
        comp = dataclasses.replace(comp, notes=(*comp.notes, note))
    return StreamSet(path=path, sample_rate=sample_rate, seconds=duration, events=events, composition=comp)


def chunk_latencies(
    score: DetectionScore, detections: list[Any], stream: StreamSet, info: Any, chunk_frames: int
) -> list[float]:
    """Latencies of the hits including the runtime's buffering: a frame is only computed when the chunk that
    ends it has arrived (the last frame of its model call), s."""
    out = []
    for di, ei in score.hit_pairs:
        frame = detections[di].frame
        last = (frame // chunk_frames + 1) * chunk_frames - 1
        available = (last * info.hop_samples + info.window_samples) / info.sample_rate
        out.append(available - stream.events[ei].word_end)
    return out


def bench_config(info: Any) -> Any:
    """The operating point every bench stream runs at: what ``kws listen`` uses for this model without options
    (:func:`kws.runtime.config.spotter_config`: the built-in defaults, then the model's own metadata settings:
    calibrated thresholds, reset period / lanes, patience)."""
    from kws.runtime.config import spotter_config

    return spotter_config(info)


def run_stream(options: BenchOptions, files: ModelFiles, stream: StreamSet) -> Streaming:
    """The int8 streaming model over the stream: one run through the path of ``kws listen --input``
    (detections and the runtime's own statistics at the shipped defaults), one recorded run (the score
    trace), and a threshold sweep over that trace."""
    from kws.runtime import detect_file, detections_from_scores, load_model, stream_scores
    from kws.runtime.config import frames_for

    model = load_model(files.stream_int8, BENCH_THREADS)
    config = bench_config(model.info)
    logger.info("running the stream through the live path (%s)", files.stream_int8.name)
    detections, stats = detect_file(model, stream.path, config=config, threads=BENCH_THREADS)
    logger.info("recording the score trace for the threshold sweep")
    trace = stream_scores(model, stream.path, config=config, threads=BENCH_THREADS)
    replay = detections_from_scores(trace, config)
    replay_matches = [(d.frame, d.keyword) for d in replay] == [(d.frame, d.keyword) for d in detections]
    if not replay_matches:
        logger.warning(
            "the score-trace replay does not reproduce the live detections (%d vs %d)",
            len(replay),
            len(detections),
        )

    def figures(dets: list[Any], threshold: float) -> DetectionScore:
        return score_detections(dets, stream.events, stream.seconds, options.tolerance, threshold)

    default = figures(detections, config.threshold)
    chunk_frames = frames_for(config.chunk_ms, model.info.hop_ms, 1)
    buffered = chunk_latencies(default, detections, stream, model.info, chunk_frames)
    sweep = [
        figures(detections_from_scores(trace, dataclasses.replace(config, threshold=t)), t)
        for t in sorted(set(SWEEP_THRESHOLDS) | {config.threshold})
    ]
    return Streaming(
        model=str(files.stream_int8),
        quantization=model.info.quantization,
        config=dataclasses.asdict(config),
        stats=stats.to_dict(),
        default=OperatingPoint.from_score(
            default,
            latency_buffered_median_s=float(np.median(buffered)) if buffered else float("nan"),
            latency_buffered_p90_s=float(np.quantile(buffered, BUFFERED_QUANTILE)) if buffered else float("nan"),
        ),
        replay_matches_live=replay_matches,
        sweep=tuple(DetectionFigures.from_score(s) for s in sweep),
        detections=tuple(
            Detection(
                time=round(d.time, DETECTION_TIME_DIGITS),
                keyword=d.keyword,
                confidence=round(d.confidence, DETECTION_CONFIDENCE_DIGITS),
            )
            for d in detections
        ),
        tolerance_s=options.tolerance,
    )


def verify_mixed_stream(
    options: BenchOptions, files: ModelFiles, stream: StreamSet, verifier: Any
) -> tuple[Any, float]:
    """``--verifier``: the mixed stream once more, through the verified path at the same operating point
    (:func:`kws.bench.verifier_bench.verify_mixed`)."""
    from kws.bench.verifier_bench import verify_mixed
    from kws.runtime import load_model

    model = load_model(files.stream_int8, BENCH_THREADS)
    logger.info("running the stream through the verified path (%s)", verifier.path.name)
    return verify_mixed(model, bench_config(model.info), verifier, stream, options.tolerance)
