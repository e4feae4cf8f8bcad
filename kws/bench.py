"""Accuracy, size, speed and streaming detection quality of one model, side by side, in one run.

Writes OUT/bench.md (the report), OUT/bench.json (every figure), OUT/accuracy.png (per-class recall of the
three models) and OUT/det_curve.png (miss rate vs false accepts per hour over a threshold sweep).

1. Accuracy of PyTorch, ONNX fp32 and ONNX int8 (whole-clip models) on a speaker-disjoint test split, read
   with the checkpoint's own data rules and the split mode its training used; per-class recall.
2. Size of every model file; single-clip latency (median, p95, 1 thread) of each.
3. A long stream (default 30 min) of test-split keywords, ``_unknown_`` words and non-keyword speech
   (``--negatives``) over background noise (:mod:`kws.streamset`), written as a WAV file and run through the
   path of ``kws listen --input`` with the int8 streaming model and the shipped defaults
   (:class:`~kws.runtime.config.SpotterConfig`): the runtime's own CPU time per audio second, keyword recall,
   false accepts per hour and detection latency; then, from one recorded score trace, the same for a sweep of
   thresholds.

examples:
  kws bench --checkpoint runs/v2/best.pt --data speech_commands_test_set_v0.02 \\
            --negatives wake_word_negatives --out bench/
  kws bench --checkpoint runs/v2/best.pt --models models/ --data sc_v2 --stream-minutes 120 --out bench/
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kws import __version__
from kws.audio import AudioError, int16_to_float, load_audio
from kws.checkpoint import model_from_checkpoint, run_config
from kws.config import RunConfig
from kws.constants import META_LABELS, META_QUANTIZATION, SILENCE_LABEL, SPLITS, UNKNOWN_LABEL
from kws.data import DataError, load_corpus
from kws.dataset import PreparedData, SplitData
from kws.errors import KWSError
from kws.evaluate import evaluation_data_config, format_with_interval, load_evaluation_data, wilson_interval
from kws.io import atomic_write, clean_stale_temporaries
from kws.streamset import (
    ENVELOPE_FRAME_SECONDS,
    KIND_KEYWORD,
    KIND_UNKNOWN,
    MATCH_TOLERANCE_SECONDS,
    POISSON_CONFIDENCE,
    SNR_DB,
    WORD_DB_ABOVE_FLOOR,
    WORD_DB_BELOW_PEAK,
    WORD_MAX_INNER_GAP_SECONDS,
    DetectionScore,
    StreamSet,
    Utterance,
    composition,
    negative_utterances,
    plan_stream,
    poisson_upper,
    render_stream,
    score_detections,
)

logger = logging.getLogger(__name__)

OUTPUTS = ("bench.md", "bench.json", "accuracy.png", "det_curve.png")
"""What `kws bench` writes into OUT (besides the exported models in OUT/models)."""
BENCH_THREADS = 1
"""Threads of every timed model (onnxruntime intra-op, PyTorch): the runtime's default on a device."""
LATENCY_RUNS = 200
LATENCY_WARMUP = 10
LATENCY_QUANTILE = 0.95
DEFAULT_STREAM_MINUTES = 30.0
DEFAULT_NAME = "kws"
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
AGREEMENT_WARNING = 0.98
"""Top-1 agreement of ONNX fp32 with PyTorch below which the files are probably not from the checkpoint."""
MS_PER_S = 1000.0
BYTES_PER_MIB = 1024.0 * 1024.0

# The project's requirements (issue 5).
TARGET_ACCURACY = 0.92
TARGET_RECALL = 0.95
TARGET_FA_PER_HOUR = 0.5
TARGET_LATENCY_S = 0.25

ANCHORS: tuple[dict[str, str], ...] = (
    {
        "source": "Hello Edge (Zhang et al. 2017), LSTM-L",
        "data": "Speech Commands v0.01, 12 classes, trained on the full dataset",
        "figure": "94.8% accuracy",
    },
    {
        "source": "Google kws_streaming (Rybakov et al. 2020), LSTM",
        "data": "Speech Commands v0.02, 12 classes, trained on the full dataset",
        "figure": "97.3% accuracy",
    },
    {
        "source": "openWakeWord, published target",
        "data": "its own wake words and test sets",
        "figure": "< 5% false rejects at < 0.5 false accepts per hour",
    },
)
"""Published figures, shown beside ours as orientation only: other data, other training sets."""

MODEL_TORCH, MODEL_FP32, MODEL_INT8, MODEL_STREAM_INT8 = (
    "PyTorch",
    "ONNX fp32",
    "ONNX int8",
    "ONNX int8 streaming",
)


class BenchError(KWSError):
    """``kws bench`` cannot run with these inputs (missing model files, mismatched models, ...)."""


@dataclass(frozen=True)
class BenchOptions:
    """Everything a bench run is made from (the command line).

    Attributes:
        stream_minutes: requested stream duration (min).
        snr_db: range of the event speech level over the noise bed (dB).
        tolerance: seconds after the end of a word during which its detection is a hit.
    """

    checkpoint: Path
    data: tuple[str, ...]
    out: Path
    models: Path | None = None
    name: str = DEFAULT_NAME
    split: str = "test"
    split_mode: str = "auto"
    negatives: tuple[Path, ...] = ()
    stream_minutes: float = DEFAULT_STREAM_MINUTES
    snr_db: tuple[float, float] = SNR_DB
    tolerance: float = MATCH_TOLERANCE_SECONDS
    seed: int = 0
    latency_runs: int = LATENCY_RUNS
    keep_stream: bool = False

    def command(self) -> str:
        """The full command line that reproduces this run (every option explicit)."""
        parts = ["kws", "bench", "--checkpoint", str(self.checkpoint)]
        if self.models is not None:
            parts += ["--models", str(self.models)]
        parts += [
            "--name",
            self.name,
            "--data",
            *self.data,
            "--split",
            self.split,
            "--split-mode",
            self.split_mode,
        ]
        if self.negatives:
            parts += ["--negatives", *map(str, self.negatives)]
        parts += [
            "--stream-minutes",
            f"{self.stream_minutes:g}",
            "--snr-db",
            f"{self.snr_db[0]:g}",
            f"{self.snr_db[1]:g}",
            "--tolerance",
            f"{self.tolerance:g}",
            "--seed",
            str(self.seed),
            "--latency-runs",
            str(self.latency_runs),
            "--out",
            str(self.out),
        ]
        if self.keep_stream:
            parts.append("--keep-stream")
        return shlex.join(parts)


@dataclass(frozen=True)
class ModelFiles:
    """The four ONNX files benchmarked, and where they came from."""

    clip: Path
    stream: Path
    clip_int8: Path
    stream_int8: Path
    origin: str
    notes: tuple[str, ...] = ()

    def all(self) -> dict[str, Path]:
        return {
            "clip": self.clip,
            "stream": self.stream,
            "clip_int8": self.clip_int8,
            "stream_int8": self.stream_int8,
        }


# ---------------------------------------------------------------------------------------------- inputs


def resolve_models(options: BenchOptions) -> ModelFiles:
    """The given ONNX files (``--models DIR``: ``NAME.onnx``, ``NAME.stream.onnx``, ``NAME.int8.onnx``,
    ``NAME.stream.int8.onnx``), or the checkpoint exported into ``OUT/models``.

    Raises:
        BenchError: a file is missing.
    """
    names = {
        "clip": f"{options.name}.onnx",
        "stream": f"{options.name}.stream.onnx",
        "clip_int8": f"{options.name}.int8.onnx",
        "stream_int8": f"{options.name}.stream.int8.onnx",
    }
    if options.models is not None:
        folder = Path(options.models).expanduser()
        if not folder.is_dir():
            raise BenchError(f"models folder {folder} does not exist")
        missing = [n for n in names.values() if not (folder / n).is_file()]
        if missing:
            raise BenchError(
                f"{folder} lacks {', '.join(missing)} (export with `kws export CHECKPOINT -o "
                f"{folder}`, or pass --name if the files have another stem)"
            )
        return ModelFiles(**{k: folder / n for k, n in names.items()}, origin=f"given: {folder}")
    from kws.export.pipeline import export_checkpoint

    out = Path(options.out) / "models"
    logger.info("exporting %s to %s (no --models given)", options.checkpoint, out)
    # real clips of the data folders for the parity checks and (static int8) calibration, as `kws export
    # --calibration DATA --data DATA` would use them, split by the same rule as the bench's own test clips
    result = export_checkpoint(
        options.checkpoint,
        out,
        name=options.name,
        calibration=options.data,
        data=options.data,
        split=options.split,
        split_mode=options.split_mode,
        quantization="dynamic",
        timing=False,
    )
    notes: list[str] = []
    if not result.passed:
        failed = [f"{c.name} ({c.subject}: {c.value}, needs {c.limit})" for c in result.checks if c.passed is False]
        notes.append(
            "the export FAILED these checks, so `kws export` would not install these files; they are "
            "benchmarked anyway: " + "; ".join(failed)
        )
        logger.warning(notes[-1])
    paths = result.paths
    return ModelFiles(
        paths.clip,
        paths.stream,
        paths.clip_int8,
        paths.stream_int8,
        origin=f"exported by kws bench into {out} (int8: {result.quantization})",
        notes=tuple(notes),
    )


def check_models(files: ModelFiles, labels: list[str]) -> dict[str, dict[str, Any]]:
    """Metadata of every file; each must have the checkpoint's labels.

    Raises:
        BenchError: a file is not a kws model or has other labels.
    """
    from kws.export.onnx_export import read_metadata

    info = {}
    for key, path in files.all().items():
        try:
            meta = read_metadata(path)
            file_labels = json.loads(meta[META_LABELS])
        except Exception as exc:  # onnx raises several types for a damaged file; KeyError, JSONDecodeError
            raise BenchError(f"{path} is not a kws ONNX model ({type(exc).__name__}: {exc})") from None
        if file_labels != labels:
            raise BenchError(f"{path} has labels {file_labels}, the checkpoint {labels}: not the same model")
        info[key] = {
            "path": str(path),
            "size_bytes": path.stat().st_size,
            "quantization": meta.get(META_QUANTIZATION, "unknown"),
        }
    return info


def training_overlap(config: RunConfig, mode: str, speakers: set[str]) -> int | None:
    """Test speakers that are also in the training split of the checkpoint's own training roots (None when
    those roots are not on this machine)."""
    roots = [Path(r).expanduser() for r in config.data.roots]
    if not roots or not all(r.is_dir() for r in roots):
        return None
    try:
        corpus = load_corpus(evaluation_data_config(config, config.data.roots), mode)
    except DataError:
        return None
    return len(speakers & {c.speaker for c in corpus.clips if c.split == "train"})


# -------------------------------------------------------------------------------------------- accuracy


def accuracy_reports(model: Any, files: ModelFiles, data: SplitData, labels: list[str]) -> dict[str, dict]:
    """Classification reports (:func:`kws.evaluate.classification_report`) of PyTorch, ONNX fp32 and ONNX
    int8 (whole-clip), and of the int8 streaming model fed each clip from zero state."""
    from kws.evaluate import classification_report, predict
    from kws.export import checks as ck
    from kws.runtime.model import load_model

    audio = data.float_audio(slice(None))
    stream_info = load_model(files.stream_int8, BENCH_THREADS).info
    scores = {
        MODEL_TORCH: predict(model, data.audio),
        MODEL_FP32: ck.onnx_clip_scores(ck.session(files.clip, BENCH_THREADS), audio),
        MODEL_INT8: ck.onnx_clip_scores(ck.session(files.clip_int8, BENCH_THREADS), audio),
        MODEL_STREAM_INT8: ck.stream_scores(
            ck.session(files.stream_int8, BENCH_THREADS),
            audio,
            stream_info.context_samples,
            stream_info.hop_samples,
            stream_info.pooling,
        ),
    }
    reports = {}
    for name, s in scores.items():
        report = classification_report(data.labels, s.argmax(1), labels)
        report["agreement_with_pytorch"] = float((s.argmax(1) == scores[MODEL_TORCH].argmax(1)).mean())
        reports[name] = report
    return reports


# ----------------------------------------------------------------------------------------------- speed


def latency_ms(fn: Callable[[], Any], runs: int, warmup: int = LATENCY_WARMUP) -> dict[str, float]:
    """Median and ``LATENCY_QUANTILE`` of the wall time of ``fn()`` over ``runs`` calls (ms)."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return {
        "median_ms": MS_PER_S * float(np.median(times)),
        "p95_ms": MS_PER_S * float(np.quantile(times, LATENCY_QUANTILE)),
        "runs": runs,
    }


def clip_latencies(model: Any, files: ModelFiles, clip: np.ndarray, runs: int) -> dict[str, dict[str, float]]:
    """Single-clip latency of each whole-clip model, ``BENCH_THREADS`` thread(s).

    Args:
        clip: float32 ``[clip_samples]``.
    """
    import torch

    from kws.constants import INPUT_AUDIO
    from kws.export import checks as ck

    out = {}
    before = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    try:
        x = torch.from_numpy(clip[None].astype(np.float32))
        with torch.no_grad():
            out[MODEL_TORCH] = latency_ms(lambda: model.classify(x), runs)
    finally:
        torch.set_num_threads(before)
    feed = {INPUT_AUDIO: clip[None].astype(np.float32)}
    for name, path in ((MODEL_FP32, files.clip), (MODEL_INT8, files.clip_int8)):
        sess = ck.session(path, BENCH_THREADS)
        out[name] = latency_ms(lambda s=sess: s.run(None, feed), runs)
    return out


# ---------------------------------------------------------------------------------------------- stream


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


def build_stream(
    options: BenchOptions, prepared: PreparedData, labels: list[str], sample_rate: int, path: Path
) -> StreamSet:
    """Plan and render the long stream (see :mod:`kws.streamset`) into ``path``."""
    from kws.streamset import file_utterances

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
    label_set = set(labels)
    unknown_clips = [c for c in prepared.corpus.clips if c.split == options.split and c.word not in label_set]
    words = {str(c.path): c.word for c in unknown_clips}
    unknowns = file_utterances([c.path for c in unknown_clips], KIND_UNKNOWN, lambda p: words[str(p)])
    negatives = [u for folder in options.negatives for u in negative_utterances(folder)]
    if not options.negatives:
        logger.warning("no --negatives: the stream's only non-keyword speech is %s clips", UNKNOWN_LABEL)
    noises, noise_source = stream_noises(prepared, options.split, sample_rate)
    seconds = options.stream_minutes * 60.0
    plan = plan_stream(keywords, unknowns, negatives, seconds, options.seed, options.snr_db)
    logger.info("rendering a %.1f min stream (%d events) to %s", options.stream_minutes, len(plan), path)
    events, duration = render_stream(plan, noises, sample_rate, path, options.seed)
    comp = composition(events, duration, len(keywords), len(negatives), noise_source, options.snr_db, options.seed)
    if duration < 0.9 * seconds:
        comp.notes.append(
            f"the stream is {duration / 60:.1f} min, shorter than the {options.stream_minutes:g} "
            "min asked for: not enough non-keyword material"
        )
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


def run_stream(options: BenchOptions, files: ModelFiles, stream: StreamSet) -> dict[str, Any]:
    """The int8 streaming model over the stream: one run through the path of ``kws listen --input``
    (detections and the runtime's own statistics at the shipped defaults), one recorded run (the score
    trace), and a threshold sweep over that trace."""
    from kws.runtime import SpotterConfig, detect_file, detections_from_scores, load_model, stream_scores
    from kws.runtime.config import frames_for

    config = SpotterConfig()
    model = load_model(files.stream_int8, BENCH_THREADS)
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

    default = score_detections(detections, stream.events, stream.seconds, options.tolerance, config.threshold)
    chunk_frames = frames_for(config.chunk_ms, model.info.hop_ms, 1)
    buffered = chunk_latencies(default, detections, stream, model.info, chunk_frames)
    sweep = []
    for t in sorted(set(SWEEP_THRESHOLDS) | {config.threshold}):
        dets = detections_from_scores(trace, dataclasses.replace(config, threshold=t))
        sweep.append(score_detections(dets, stream.events, stream.seconds, options.tolerance, t).to_dict())
    return {
        "model": str(files.stream_int8),
        "quantization": model.info.quantization,
        "config": dataclasses.asdict(config),
        "stats": stats.to_dict(),
        "default": {
            **default.to_dict(),
            "latency_buffered_median_s": float(np.median(buffered)) if buffered else float("nan"),
            "latency_buffered_p90_s": float(np.quantile(buffered, 0.9)) if buffered else float("nan"),
        },
        "replay_matches_live": replay_matches,
        "sweep": sweep,
        "detections": [
            {"time": round(d.time, 3), "keyword": d.keyword, "confidence": round(d.confidence, 4)} for d in detections
        ],
    }


# ---------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, load, OS and library versions of this machine."""
    import onnxruntime

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "kws": __version__,
    }
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_bytes": memory,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


# ------------------------------------------------------------------------------------------------ main


def bench(options: BenchOptions) -> dict[str, Any]:
    """Run every measurement and write OUT/bench.md, OUT/bench.json, OUT/accuracy.png, OUT/det_curve.png.

    Returns:
        the report (the contents of bench.json).

    Raises:
        KWSError: bad inputs (checkpoint, data, models, negatives), reported before the slow work.
    """
    from kws.export.pipeline import check_output_dir

    started = time.perf_counter()
    stages: dict[str, float] = {}

    def stage(name: str, t0: float) -> float:
        now = time.perf_counter()
        stages[name] = now - t0
        return now

    if options.stream_minutes <= 0:
        raise BenchError(f"--stream-minutes must be positive, got {options.stream_minutes:g}")
    if not options.snr_db[0] <= options.snr_db[1]:
        raise BenchError(f"--snr-db needs LOW <= HIGH, got {options.snr_db[0]:g} {options.snr_db[1]:g}")
    if options.tolerance < 0 or options.latency_runs < 1:
        raise BenchError("need --tolerance >= 0 and --latency-runs >= 1")
    for folder in options.negatives:
        if not Path(folder).expanduser().is_dir():
            raise BenchError(f"negatives folder {folder} does not exist")
    out = Path(options.out).expanduser()
    check_output_dir(out)
    clean_stale_temporaries(out, names=list(OUTPUTS))  # left by a killed earlier run
    machine = machine_info()
    model, labels, payload = model_from_checkpoint(options.checkpoint)
    config = run_config(payload)
    sample_rate = config.features.sample_rate

    t0 = time.perf_counter()
    # the test clips, split as the checkpoint's training split them (kws evaluate and kws export use the same)
    evaluation = load_evaluation_data(payload, options.data, options.split, options.split_mode)
    prepared, data = evaluation.prepared, evaluation.data
    mode, how = evaluation.split_mode, evaluation.split_mode_how
    speakers = {s for s, sil in zip(data.speakers, data.silence, strict=True) if not sil}
    t0 = stage("load test split", t0)

    files = resolve_models(options)
    model_info = check_models(files, labels)
    t0 = stage("models", t0)

    reports = accuracy_reports(model, files, data, labels)
    t0 = stage("accuracy", t0)
    latencies = clip_latencies(model, files, data.float_audio(0), options.latency_runs)
    t0 = stage("clip latency", t0)

    stream_path = out / "stream.wav"
    try:
        stream = build_stream(options, prepared, labels, sample_rate, stream_path)
        t0 = stage("stream build", t0)
        streaming = run_stream(options, files, stream)
        t0 = stage("stream runs and sweep", t0)
    finally:
        if not options.keep_stream:
            stream_path.unlink(missing_ok=True)

    weights = sum(v.numel() * v.element_size() for v in payload["model"].values())
    evaluation = payload.get("evaluation")
    split_summary = prepared.summary[options.split]
    report: dict[str, Any] = {
        "kws_version": __version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": options.command(),
        "cwd": Path.cwd().name,  # the folder's name only: a report carries no machine's absolute paths
        "machine": machine,
        "checkpoint": {
            "path": str(options.checkpoint),
            "size_bytes": Path(options.checkpoint).stat().st_size,
            "weights_bytes": int(weights),
            "labels": labels,
            "evaluation": evaluation,
        },
        "models": {"origin": files.origin, "notes": list(files.notes), "files": model_info},
        "data": {
            "roots": list(options.data),
            "split": options.split,
            "split_mode": mode,
            "split_mode_how": how,
            "clips": len(data),
            "speakers": len(speakers),
            "per_class": split_summary["per_class"],
            "skipped": len(data.skipped),
            "training_speaker_overlap": training_overlap(config, mode, speakers),
        },
        "accuracy": {
            name: {
                k: r[k]
                for k in (
                    "accuracy",
                    "accuracy_ci95",
                    "clips",
                    "per_class",
                    "agreement_with_pytorch",
                    "confusion_matrix",
                )
            }
            for name, r in reports.items()
        },
        "latency": latencies,
        "stream": {
            "composition": stream.composition.to_dict(),
            "kept": str(stream_path) if options.keep_stream else None,
            "events": [e.to_dict() for e in stream.events],
        },
        "streaming": streaming,
        "targets": {
            "accuracy": TARGET_ACCURACY,
            "recall": TARGET_RECALL,
            "fa_per_hour": TARGET_FA_PER_HOUR,
            "latency_s": TARGET_LATENCY_S,
        },
        "anchors": list(ANCHORS),
    }
    agreement = reports[MODEL_FP32]["agreement_with_pytorch"]
    if agreement < AGREEMENT_WARNING:
        report["models"]["notes"].append(
            f"ONNX fp32 agrees with the checkpoint on only {100 * agreement:.1f}% of the clips: the files "
            "are probably not an export of this checkpoint"
        )
        logger.warning(report["models"]["notes"][-1])
    report["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    plot_accuracy(report, out / "accuracy.png")
    plot_det(report, out / "det_curve.png")
    stage("plots", t0)
    stages["total"] = time.perf_counter() - started
    report["timing_s"] = stages
    text = json.dumps(_finite(report), indent=1)
    _write(out / "bench.json", lambda tmp: tmp.write_text(text))
    markdown = format_markdown(report)
    _write(out / "bench.md", lambda tmp: tmp.write_text(markdown))
    return report


def _write(path: Path, write: Callable[[Path], Any]) -> None:
    """Atomic write of an output file, readable as any new file (temporary files are private)."""
    from kws.export.onnx_export import make_readable

    atomic_write(path, lambda tmp: (write(tmp), make_readable(tmp)))


def _finite(value: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ report


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _pct_ci(x: float | None, interval: list[float] | None, digits: int = 1) -> str:
    """``"82.0% (77.4-86.0)"``: a proportion with its 95% confidence interval (Wilson score)."""
    return "n/a" if x is None or not math.isfinite(x) else format_with_interval(x, interval, digits)


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or not math.isfinite(seconds) else f"{MS_PER_S * seconds:.0f} ms"


def _rate(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < BYTES_PER_MIB else f"{n / BYTES_PER_MIB:.2f} MiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _status(ok: bool, interval: list[float] | None = None, target: float | None = None) -> str:
    """PASS/FAIL; with a confidence interval that contains the target, a note that the data cannot tell."""
    status = "PASS" if ok else "FAIL"
    if interval is not None and target is not None and interval[0] <= target <= interval[1]:
        status += " (the 95% CI includes the target)"
    return status


def hours_needed(fa_per_hour: float, confidence: float = POISSON_CONFIDENCE) -> float:
    """Hours of audio without a false accept needed to show a rate below ``fa_per_hour`` at ``confidence``."""
    return poisson_upper(0, confidence) / fa_per_hour


def format_markdown(report: dict[str, Any]) -> str:
    """The human-readable report (every figure comes from ``report``)."""
    acc, lat, st = report["accuracy"], report["latency"], report["streaming"]
    d, comp, m, data = st["default"], report["stream"]["composition"], report["machine"], report["data"]
    labels = report["checkpoint"]["labels"]
    n_classes = len(labels)
    cfg = st["config"]
    lines = [
        f"# kws bench: {Path(report['checkpoint']['path']).name}",
        "",
        f"{report['date']}, kws {report['kws_version']}. Command (run in a folder named `{report['cwd']}`):",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    for note in report["models"]["notes"]:
        lines += [f"> **Warning:** {note}", ""]

    # requirements
    int8 = acc[MODEL_INT8]["accuracy"]
    fa, fa_upper = d["fa_per_hour"], d["fa_per_hour_upper95"]
    nonkw_h = d["nonkeyword_hours"]
    lines += [
        "## The project's requirements",
        "",
        f"Measured on this machine in this run; streaming figures at the shipped defaults "
        f"(threshold {cfg['threshold']:g}, see below).",
        "",
    ]
    recall_ci = list(wilson_interval(d["hits"], d["keyword_events"]))
    rows = [
        [
            f"{n_classes}-class accuracy, ONNX int8 (test split, {acc[MODEL_INT8]['clips']} clips; 95% CI)",
            _pct_ci(int8, acc[MODEL_INT8].get("accuracy_ci95"), 2),
            f">= {_pct(report['targets']['accuracy'], 0)}",
            _status(
                int8 >= report["targets"]["accuracy"],
                acc[MODEL_INT8].get("accuracy_ci95"),
                report["targets"]["accuracy"],
            ),
        ],
        [
            f"keyword recall on the stream ({d['keyword_events']} keywords; 95% CI)",
            _pct_ci(d["recall"], recall_ci),
            f">= {_pct(report['targets']['recall'], 0)}",
            _status(d["recall"] >= report["targets"]["recall"], recall_ci, report["targets"]["recall"]),
        ],
        [
            f"false accepts per hour ({d['false_accepts']} in {60 * nonkw_h:.1f} min of non-keyword audio; "
            f"{POISSON_CONFIDENCE:.0%} upper bound {_rate(fa_upper)})",
            _rate(fa),
            f"<= {report['targets']['fa_per_hour']:g}",
            _status(fa is not None and math.isfinite(fa) and fa <= report["targets"]["fa_per_hour"]),
        ],
        [
            "median detection latency (detection time - end of the word)",
            _ms(d["latency_median_s"]),
            f"<= {_ms(report['targets']['latency_s'])}",
            _status(
                d["latency_median_s"] is not None
                and math.isfinite(d["latency_median_s"])
                and d["latency_median_s"] <= report["targets"]["latency_s"]
            ),
        ],
    ]
    lines += _table(["requirement", "measured", "target", "status"], rows)
    needed = hours_needed(report["targets"]["fa_per_hour"])
    lines += [
        "",
        f"Resolution: {d['false_accepts']} false accept(s) in {nonkw_h:.2f} h bound the rate below "
        f"{_rate(fa_upper)} per hour ({POISSON_CONFIDENCE:.0%} confidence). Showing <= "
        f"{report['targets']['fa_per_hour']:g} per hour at that confidence takes at least {needed:.1f} h "
        "of non-keyword audio without a false accept (a longer `--stream-minutes`).",
        "",
    ]

    lines += [
        "## Published figures (other data: for orientation only, not comparable one to one)",
        "",
        "These come from other papers and projects, trained and tested on other data (this project trains "
        "on about 300 clips per keyword).",
        "",
    ]
    lines += _table(["source", "data", "figure"], [[a["source"], a["data"], a["figure"]] for a in report["anchors"]])

    # machine
    load = m.get("load_average") or []
    lines += [
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({m['machine']}), {m['cores']} cores ({m['usable_cores']} usable by this "
        "process)" + (f", {m['memory_bytes'] / 2**30:.1f} GiB memory" if m.get("memory_bytes") else ""),
        f"- {m['platform']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- load average at the start {', '.join(f'{x:.2f}' for x in load) or 'n/a'}; at the end "
        f"{', '.join(f'{x:.2f}' for x in (m.get('load_average_end') or [])) or 'n/a'} (wall-clock "
        f"latencies are affected by other work on the machine; the CPU time per audio second much less)",
        f"- every timed model runs on {BENCH_THREADS} thread",
        "",
    ]

    # data
    overlap = data["training_speaker_overlap"]
    overlap_text = (
        "not checked (the checkpoint's training folders are not on this machine)"
        if overlap is None
        else f"{overlap} (checked against the training split of the checkpoint's own folders)"
    )
    lines += [
        "## Test data",
        "",
        f"- folders: {', '.join(f'`{r}`' for r in data['roots'])}",
        f"- split: `{data['split']}`, split mode `{data['split_mode']}` ({data['split_mode_how']}); the "
        "split is by speaker, so no test speaker is in training",
        f"- test speakers also in the training split: {overlap_text}",
        f"- {data['clips']} clips, {data['speakers']} speakers"
        + (f", {data['skipped']} unreadable files skipped" if data["skipped"] else ""),
        "",
    ]
    lines += _table(["class", *labels], [["clips", *(str(data["per_class"].get(k, 0)) for k in labels)]])
    ev = report["checkpoint"].get("evaluation")
    if ev:
        lines += [
            "",
            f"The checkpoint's own evaluation at the end of training: {_pct(ev.get('accuracy'), 2)} on "
            f"{ev.get('clips')} clips of {ev.get('split', 'its test split')}.",
        ]

    # accuracy
    names = list(acc)
    lines += [
        "",
        f"## Accuracy ({n_classes} classes, per-class recall)",
        "",
        f"{MODEL_STREAM_INT8}: the runtime's model, each clip streamed from zero state and pooled as the "
        "whole-clip model pools it. In brackets: the 95% confidence interval (Wilson score) of each figure, "
        "from the number of clips it is measured on.",
        "",
    ]
    rows = [["**accuracy**", *(f"**{_pct_ci(acc[n]['accuracy'], acc[n].get('accuracy_ci95'))}**" for n in names)]]
    rows += [
        [
            f"{k} ({acc[names[0]]['per_class'][k]['support']} clips)",
            *(_pct_ci(acc[n]["per_class"][k]["recall"], acc[n]["per_class"][k].get("recall_ci95")) for n in names),
        ]
        for k in labels
    ]
    rows += [["top-1 agreement with PyTorch", *(_pct(acc[n]["agreement_with_pytorch"]) for n in names)]]
    lines += _table(["class", *names], rows)

    # size and speed
    files = report["models"]["files"]
    lines += ["", "## Size and speed", "", f"Models: {report['models']['origin']}.", ""]
    rows = [
        [
            MODEL_TORCH,
            f"`{Path(report['checkpoint']['path']).name}` (with optimizer state: "
            f"{_size(report['checkpoint']['size_bytes'])})",
            _size(report["checkpoint"]["weights_bytes"]) + " (float32 weights)",
            f"{lat[MODEL_TORCH]['median_ms']:.2f}",
            f"{lat[MODEL_TORCH]['p95_ms']:.2f}",
        ]
    ]
    for name, key in ((MODEL_FP32, "clip"), (MODEL_INT8, "clip_int8")):
        f = files[key]
        rows.append(
            [
                name,
                f"`{Path(f['path']).name}` ({f['quantization']})",
                _size(f["size_bytes"]),
                f"{lat[name]['median_ms']:.2f}",
                f"{lat[name]['p95_ms']:.2f}",
            ]
        )
    for name, key in (("ONNX fp32 streaming", "stream"), (MODEL_STREAM_INT8, "stream_int8")):
        f = files[key]
        rows.append([name, f"`{Path(f['path']).name}` ({f['quantization']})", _size(f["size_bytes"]), "-", "-"])
    lines += _table(["model", "file", "size", "1-clip latency median (ms)", "p95 (ms)"], rows)
    s = st["stats"]
    lines += [
        "",
        f"Single-clip latency: {lat[MODEL_TORCH]['runs']} runs of one 1 s test clip after "
        f"{LATENCY_WARMUP} warm-up runs, wall clock.",
        "",
        f"Streaming runtime ({Path(st['model']).name}, {st['quantization']}, the path of `kws listen "
        f"--input` over the {comp['seconds'] / 60:.1f} min stream, shipped defaults): "
        f"**{s['cpu_ms_per_audio_second']:.2f} ms CPU per audio second** (the runtime's StreamStats: "
        f"process CPU time, reading and resampling included), real-time factor "
        f"{s['real_time_factor']:.4f}, {s['model_calls']} model calls of {s['model_ms_per_call']:.3f} ms.",
        "",
    ]

    # stream
    lines += ["## Streaming detection", "", "### The stream", ""]
    rows = [
        [
            "keywords",
            f"{comp['keyword_seconds'] / 60:.1f}",
            f"{comp['keyword_events']} events ({comp['keyword_word_seconds'] / 60:.1f} min of words) from "
            f"{comp['keyword_clips']} of {comp['keyword_clips_available']} test clips; "
            + ", ".join(f"{k} {v}" for k, v in comp["keywords_per_label"].items()),
        ],
        [
            f"{UNKNOWN_LABEL} words",
            f"{comp['unknown_seconds'] / 60:.1f}",
            f"{comp['unknown_events']} events from {comp['unknown_clips']} test clips",
        ],
        [
            "negative speech",
            f"{comp['negative_seconds'] / 60:.1f}",
            f"{comp['negative_events']} events from {comp['negative_files']} of "
            f"{comp['negative_files_available']} recordings",
        ],
        [
            "noise only",
            f"{comp['noise_only_seconds'] / 60:.1f}",
            f"{comp['gap_seconds'][0]:g}-{comp['gap_seconds'][1]:g} s before each event, and a tail",
        ],
        ["**total**", f"**{comp['seconds'] / 60:.1f}**", ""],
    ]
    lines += _table(["part", "minutes", "what"], rows)
    lines += [
        "",
        f"Noise bed under everything: {comp['noise_source']}, cross-faded stretches, each event's speech "
        f"at a random {comp['snr_db'][0]:g}-{comp['snr_db'][1]:g} dB over it (its active speech level; "
        f"the recordings' own noise comes on top). Events in random order, seed {comp['seed']}.",
    ]
    lines += [f"- {n}" for n in comp["notes"]]

    lines += [
        "",
        "### At the shipped defaults",
        "",
        "Operating point of `SpotterConfig()` (what `kws listen` uses without options): "
        + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in cfg.items() if k != "thresholds")
        + ".",
        "",
    ]
    lines += _table(
        ["figure", "value"],
        [
            [
                "keyword recall (95% CI)",
                f"{_pct_ci(d['recall'], recall_ci)} ({d['hits']} of {d['keyword_events']})",
            ],
            [
                "false accepts",
                f"{d['false_accepts']} ("
                + (", ".join(f"{k}: {v}" for k, v in d["false_accepts_by_context"].items()) or "none")
                + ")",
            ],
            [
                "false accepts per hour (headline)",
                f"{_rate(d['fa_per_hour'])} ({POISSON_CONFIDENCE:.0%} upper bound {_rate(d['fa_per_hour_upper95'])})",
            ],
            ["false accepts per hour of the whole stream", _rate(d["fa_per_hour_stream"])],
            [
                "false accepts outside keyword windows per non-keyword hour",
                _rate(d["fa_per_hour_nonkeyword"]),
            ],
            ["detection latency, median / p90", f"{_ms(d['latency_median_s'])} / {_ms(d['latency_p90_s'])}"],
            [
                "same, with the runtime's chunk buffering",
                f"{_ms(d['latency_buffered_median_s'])} / {_ms(d['latency_buffered_p90_s'])}",
            ],
            ["score-trace replay = live detections", "yes" if st["replay_matches_live"] else "**NO**"],
        ],
    )
    lines += [""]
    lines += _table(
        ["keyword", "events", "recall", "false accepts (as this keyword)", "median latency"],
        [
            [k, str(v["events"]), _pct(v["recall"]), str(v["false_accepts"]), _ms(v["latency_median_s"])]
            for k, v in d["per_keyword"].items()
        ],
    )

    lines += ["", "### Threshold sweep (DET curve: det_curve.png)", ""]
    rows = []
    for r in st["sweep"]:
        mark = " (default)" if r["threshold"] == cfg["threshold"] else ""
        rows.append(
            [
                f"{r['threshold']:g}{mark}",
                _pct(r["recall"]),
                _pct(r["miss_rate"]),
                str(r["false_accepts"]),
                _rate(r["fa_per_hour"]),
                _rate(r["fa_per_hour_stream"]),
                _rate(r["fa_per_hour_nonkeyword"]),
                _ms(r["latency_median_s"]),
                _ms(r["latency_p90_s"]),
            ]
        )
    lines += _table(
        [
            "threshold",
            "recall",
            "miss rate",
            "false accepts",
            "FA/h (headline)",
            "FA/h (whole stream)",
            "FA/h (outside keywords)",
            "latency median",
            "p90",
        ],
        rows,
    )

    lines += [
        "",
        "### How it is measured",
        "",
        "- The stream is written as 16-bit WAV and run through the path of `kws listen --input FILE` "
        "(`kws.runtime.detect_file`: file source, streaming engine, smoothing, threshold, refractory time), "
        "once for the detections and statistics above; a second, recorded run gives the score trace, "
        "from which `detections_from_scores` re-evaluates every threshold of the sweep.",
        f"- A keyword's word end is estimated from the clip's energy envelope "
        f"({MS_PER_S * ENVELOPE_FRAME_SECONDS:g} ms frames: the most energetic run of frames within "
        f"{WORD_DB_BELOW_PEAK:g} dB of the loudest one and {WORD_DB_ABOVE_FLOOR:g} dB over the clip's "
        f"noise floor, gaps up to {MS_PER_S * WORD_MAX_INNER_GAP_SECONDS:g} ms bridged).",
        f"- A detection of keyword k between the start of a k event and {report_tolerance(report):g} s after "
        f"the end of its word is a hit (the first one only); every other detection is a false accept: "
        f"a wrong keyword or a repeat during a keyword event, or any detection on non-keyword speech or "
        f"noise.",
        "- Headline false accepts per hour: every false accept, wherever it happened, per hour of "
        "non-keyword audio (the stream minus the keyword windows). Dividing by the whole stream would "
        "credit the keyword minutes as hours in which nothing went wrong; counting only false accepts "
        "outside the keyword windows would drop wrong-keyword detections. The headline is never below "
        "either of those two rates, which are shown beside it.",
        "- Latency: detection time (the end of the frame whose smoothed posterior crossed the threshold) "
        "minus the word's end; the buffered figure adds the wait for the rest of the runtime's chunk "
        f"({cfg['chunk_ms']:g} ms), which a live listener also sees.",
        "",
        "## Caveats",
        "",
        "- The background-noise recordings are also used to augment the training clips (Speech Commands has "
        "no held-out noise); the keyword, unknown-word and negative speech is unseen in training.",
        "- Test keywords are Speech Commands clips: one word, read out in isolation, recorded by the "
        "speakers' own microphones; continuous conversational speech is harder.",
        "",
        "## Figures",
        "",
        "![per-class recall](accuracy.png)",
        "",
        "![DET curve](det_curve.png)",
        "",
        "Stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.get("timing_s", {}).items()),
        "",
    ]
    return "\n".join(lines)


def report_tolerance(report: dict[str, Any]) -> float:
    """The matching tolerance of a report (s), from its command line."""
    parts = shlex.split(report["command"])
    return float(parts[parts.index("--tolerance") + 1]) if "--tolerance" in parts else MATCH_TOLERANCE_SECONDS


# ------------------------------------------------------------------------------------------------ plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(report: dict[str, Any], path: Path) -> None:
    """Per-class recall bars of PyTorch, ONNX fp32 and ONNX int8 (PNG)."""
    plt = _pyplot()
    labels = report["checkpoint"]["labels"]
    names = [MODEL_TORCH, MODEL_FP32, MODEL_INT8]
    width = 0.8 / len(names)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(labels) + 2), 5.0))
    for i, name in enumerate(names):
        a = report["accuracy"][name]
        recall = np.array([100 * a["per_class"][k]["recall"] for k in labels])
        ci = 100 * np.array([a["per_class"][k]["recall_ci95"] for k in labels]).reshape(-1, 2)
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            recall,
            width,
            yerr=np.stack([recall - ci[:, 0], ci[:, 1] - recall]),
            error_kw={"elinewidth": 0.6, "capsize": 1.5, "alpha": 0.6},
            label=f"{name}: {_pct_ci(a['accuracy'], a.get('accuracy_ci95'), 2)}",
        )
    ax.axhline(100 * report["targets"]["accuracy"], color="grey", ls="--", lw=0.8, label="accuracy target")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("recall (%), 95% confidence intervals")
    ax.set_ylim(0, 105)
    ax.set_title(
        f"per-class recall on {report['data']['clips']} test clips, {report['data']['speakers']} speakers",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    fig.tight_layout()
    _write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_det(report: dict[str, Any], path: Path) -> None:
    """DET-style curve (miss rate vs false accepts per hour over the threshold sweep) and the figures against
    the threshold (PNG)."""
    plt = _pyplot()
    st = report["streaming"]
    sweep = st["sweep"]
    t = np.array([r["threshold"] for r in sweep])
    fa = np.array([np.nan if r["fa_per_hour"] is None else r["fa_per_hour"] for r in sweep], dtype=float)
    miss = np.array([np.nan if r["miss_rate"] is None else 100 * r["miss_rate"] for r in sweep], dtype=float)
    lat = {
        q: np.array([np.nan if r[key] is None else MS_PER_S * r[key] for r in sweep], dtype=float)
        for q, key in (("median", "latency_median_s"), ("p90", "latency_p90_s"))
    }
    d, target, default_t = st["default"], report["targets"], st["config"]["threshold"]
    fig, (ax, ax2, ax4) = plt.subplots(1, 3, figsize=(15, 4.5))
    ax.plot(fa, miss, "o-", ms=3, label="threshold sweep")
    ax.plot(
        [d["fa_per_hour"]],
        [100 * d["miss_rate"]],
        "r*",
        ms=13,
        label=f"shipped default (threshold {default_t:g})",
    )
    ax.fill_between(
        [0, target["fa_per_hour"]],
        0,
        100 * (1 - target["recall"]),
        color="green",
        alpha=0.15,
        label=f"target: recall >= {100 * target['recall']:g}%, FA/h <= {target['fa_per_hour']:g}",
    )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 100)
    ax.set_xlabel("false accepts per hour (non-keyword audio)")
    ax.set_ylabel("miss rate (%)")
    comp = report["stream"]["composition"]
    ax.set_title(f"DET: {comp['seconds'] / 60:.0f} min stream, {comp['keyword_events']} keywords", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax2.plot(t, 100 - miss, "o-", ms=3, label="keyword recall (%)")
    ax2.set_ylim(0, 100)
    ax2.set_xlabel("threshold")
    ax2.set_ylabel("keyword recall (%)")
    ax3 = ax2.twinx()
    ax3.plot(t, fa, "^-", ms=3, color="tab:red", label="false accepts per hour")
    ax3.set_yscale("symlog", linthresh=1.0)
    ax3.set_ylim(bottom=0)
    ax3.set_ylabel("false accepts per hour", color="tab:red")
    ax2.axvline(default_t, color="grey", ls="--", lw=0.8)
    ax2.legend(handles=ax2.get_lines()[:1] + ax3.get_lines(), fontsize=8, loc="lower left")
    ax2.set_title("recall and false accepts vs threshold", fontsize=10)
    ax2.grid(True, alpha=0.3)

    ax4.plot(t, lat["median"], "s-", ms=3, label="median")
    ax4.plot(t, lat["p90"], "v-", ms=3, label="p90")
    ax4.axhline(MS_PER_S * target["latency_s"], color="green", ls="--", lw=0.8, label="median target")
    ax4.axvline(default_t, color="grey", ls="--", lw=0.8)
    ax4.set_xlabel("threshold")
    ax4.set_ylabel("detection time - end of word (ms)")
    ax4.set_title("detection latency vs threshold", fontsize=10)
    ax4.grid(True, alpha=0.3)
    ax4.legend(fontsize=8)
    fig.tight_layout()
    _write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="PT",
        help="a checkpoint written by `kws train` (e.g. runs/v2/best.pt)",
    )
    parser.add_argument(
        "--models",
        type=Path,
        metavar="DIR",
        help="exported ONNX files NAME.onnx, NAME.int8.onnx, NAME.stream.onnx, NAME.stream.int8.onnx "
        "(default: export the checkpoint into OUT/models)",
    )
    parser.add_argument("--name", default=DEFAULT_NAME, help="file name stem in --models (default: %(default)s)")
    parser.add_argument(
        "--data",
        nargs="+",
        action="extend",
        required=True,
        metavar="DIR",
        help="Speech Commands folder(s) holding the test speakers (the test archive, the full "
        "dataset, or several combined; repeatable)",
    )
    parser.add_argument("--split", default="test", choices=SPLITS, help="which split (default: %(default)s)")
    parser.add_argument(
        "--split-mode",
        default="auto",
        choices=["auto", "official", "speaker-hash"],
        help="how speakers are split: auto = as the checkpoint's training did; a mode that contradicts it is "
        "refused (default: %(default)s)",
    )
    parser.add_argument(
        "--negatives",
        type=Path,
        nargs="+",
        action="extend",
        metavar="DIR",
        help="folder(s) of non-keyword speech recordings (any audio files under DIR, any rate), e.g. "
        "wake_word_negatives: the half `kws train --negatives` never uses is streamed; without it only "
        "unknown-word clips are non-keyword speech; repeatable",
    )
    parser.add_argument(
        "--stream-minutes",
        type=float,
        default=DEFAULT_STREAM_MINUTES,
        metavar="MIN",
        help="length of the detection stream (default: %(default)g)",
    )
    parser.add_argument(
        "--snr-db",
        type=float,
        nargs=2,
        default=list(SNR_DB),
        metavar=("LOW", "HIGH"),
        help="speech level over the background noise, uniform in this range (default: %(default)s)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=MATCH_TOLERANCE_SECONDS,
        metavar="S",
        help="a detection up to S seconds after the end of the word is a hit (default: %(default)g)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the stream (default: %(default)s)")
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=LATENCY_RUNS,
        metavar="N",
        help="timed runs per single-clip latency (default: %(default)s)",
    )
    parser.add_argument("--keep-stream", action="store_true", help="keep the stream as OUT/stream.wav")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder (created if missing)")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    return BenchOptions(
        checkpoint=args.checkpoint,
        data=tuple(args.data),
        out=args.out,
        models=args.models,
        name=args.name,
        split=args.split,
        split_mode=args.split_mode,
        negatives=tuple(args.negatives or ()),
        stream_minutes=args.stream_minutes,
        snr_db=(float(args.snr_db[0]), float(args.snr_db[1])),
        tolerance=args.tolerance,
        seed=args.seed,
        latency_runs=args.latency_runs,
        keep_stream=args.keep_stream,
    )


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    report = bench(options)
    acc, d = report["accuracy"], report["streaming"]["default"]
    s = report["streaming"]["stats"]
    out = Path(options.out)
    for name in (MODEL_TORCH, MODEL_FP32, MODEL_INT8, MODEL_STREAM_INT8):
        print(f"{name:<20} accuracy {_pct_ci(acc[name]['accuracy'], acc[name].get('accuracy_ci95'), 2)} (95% CI)")
    print(
        f"stream {report['stream']['composition']['seconds'] / 60:.1f} min at threshold "
        f"{report['streaming']['config']['threshold']:g}: recall {_pct(d['recall'])}, "
        f"{_rate(d['fa_per_hour'])} false accepts/h, median latency {_ms(d['latency_median_s'])}, "
        f"{s['cpu_ms_per_audio_second']:.2f} ms CPU per audio second"
    )
    print(
        f"report: {out / 'bench.md'}\ndata: {out / 'bench.json'}\nplots: {out / 'accuracy.png'}, "
        f"{out / 'det_curve.png'}"
    )
    return 0
