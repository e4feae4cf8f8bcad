"""The checks ``kws export`` runs on what it wrote, and the measurements of its comparison table.

Every check returns a :class:`Check` (pass, fail, or skipped with the reason), so one failure never hides the
others and the whole report is always printed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from kws.export.streaming import StreamBuffer, StreamSource, pool_scores, stream_chunks, stream_model
from kws.format import INPUT_AUDIO, OUTPUT_SCORES, frames_in
from kws.runtime.model import make_session

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
"""Largest allowed difference between two float implementations' class scores (softmax probabilities, an
absolute bound), or between their raw outputs (logits, LSTM states) relative to ``max(1, |output|)``."""

INT8_ACCURACY_TOLERANCE = 0.5
"""Largest allowed accuracy loss of an int8 model against the float ONNX model (percentage points)."""

INT8_SIZE_RATIO = 0.30
"""Largest allowed int8 file size as a fraction of the float file."""

STREAM_CHUNK_HOPS: tuple[int, ...] = (1, 3, 10)
"""Hops per call at which streaming is compared with the whole-clip model (plus one call for the clip)."""

STREAM_BUFFER_PIECES: tuple[int, ...] = (1237, 4001, 160)
"""Sizes (samples) of the odd-sized pieces fed through :class:`StreamBuffer` in the streaming check."""

BENCH_HOPS = 10
"""Hops per streaming call in the latency measurement (the runtime's typical call: 200 ms at 20 ms hops)."""

CLIP_TIMING_RUNS, STREAM_TIMING_RUNS, WARMUP_RUNS = 30, 200, 5
ORT_BATCH = 64


@dataclass(frozen=True)
class Check:
    """One line of the check table.

    Attributes:
        name: what is checked.
        subject: the file (or pair of implementations) checked.
        value: the measured value, formatted.
        limit: the requirement, formatted.
        passed: True / False, or None when the check was skipped or is informative only.
        required: whether a failure fails the export (False for an int8 variant that is not shipped).
    """

    name: str
    subject: str
    value: str
    limit: str
    passed: bool | None
    required: bool = True

    @property
    def status(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]
        return status if self.required or self.passed is None else f"{status} (not shipped)"


def session(path: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session set up as the device runtime's (:func:`kws.runtime.model.make_session`)."""
    return make_session(path, threads)


# ------------------------------------------------------------------------------------------- structure


def check_structure(path: Path) -> list[Check]:
    """``onnx.checker`` (full check) and strict shape inference on one file."""
    checks = []
    name = Path(path).name
    try:
        onnx.checker.check_model(str(path), full_check=True)
        checks.append(Check("onnx.checker (full)", name, "ok", "no error", True))
    except Exception as exc:  # the checker raises ValidationError and several others
        checks.append(Check("onnx.checker (full)", name, _one_line(exc), "no error", False))
    try:
        model = onnx.load(str(path))
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        checks.append(Check("shape inference (strict)", name, "ok", "no error", True))
    except Exception as exc:
        checks.append(Check("shape inference (strict)", name, _one_line(exc), "no error", False))
    return checks


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- scores


def onnx_clip_scores(sess: Any, clips: np.ndarray, batch: int = ORT_BATCH) -> np.ndarray:
    """Scores ``[clips, n_labels]`` of the whole-clip model for float32 clips ``[clips, samples]``."""
    out = [sess.run([OUTPUT_SCORES], {INPUT_AUDIO: clips[i : i + batch]})[0] for i in range(0, len(clips), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def torch_clip_scores(model: Any, clips: np.ndarray, batch: int = ORT_BATCH) -> np.ndarray:
    """Scores of the PyTorch model (softmax of ``model.classify``)."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(clips), batch):
            out.append(torch.softmax(model.classify(torch.from_numpy(clips[i : i + batch])), -1).numpy())
    return np.concatenate(out)


def streamed_clip_scores(stream: StreamSource, clips: np.ndarray, hops: int = BENCH_HOPS) -> np.ndarray:
    """Scores ``[clips, n_labels]`` of each clip streamed through the streaming model (the runtime's step).

    Each clip is streamed ``hops`` frames per call from zero state; its per-frame logits are pooled as the
    whole-clip model pools them (``kws.pooling``).
    """
    model = stream_model(stream)
    info = model.info
    return (
        np.stack(
            [
                pool_scores(
                    model.frame_outputs(stream_chunks(clip, info.context_samples, info.hop_samples, hops))[0],
                    info.pooling,
                )
                for clip in clips
            ]
        )
        if len(clips)
        else np.zeros((0, 0), np.float32)
    )


def top1_agrees(scores: np.ndarray, reference: np.ndarray, tolerance: float) -> np.ndarray:
    """Per clip (``[..., n_labels]`` probabilities): ``scores`` picks the reference's top class, or one the
    reference scores within ``tolerance`` of it (a tie that rounding may break either way; with larger
    differences the max |diff| check fails anyway)."""
    scores, reference = np.atleast_2d(scores), np.atleast_2d(reference)
    picked = np.take_along_axis(reference, scores.argmax(-1)[..., None], -1)[..., 0]
    return picked >= reference.max(-1) - tolerance


def compare_scores(
    name: str, subject: str, scores: np.ndarray, reference: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> list[Check]:
    """Max abs difference of the probabilities within ``tolerance`` and the same top-1 class on every clip
    (two classes the reference scores within ``tolerance`` of each other count as a tie)."""
    diff = float(np.abs(scores - reference).max())
    same = top1_agrees(scores, reference, tolerance)
    ties = int(np.sum(same & (scores.argmax(-1) != reference.argmax(-1))))
    return [
        Check(f"{name}: max |diff| of scores", subject, f"{diff:.2e}", f"<= {tolerance:.0e}", diff <= tolerance),
        Check(
            f"{name}: same top-1",
            subject,
            f"{int(same.sum())}/{len(same)} clips" + (f" ({ties} a tie within {tolerance:.0e})" if ties else ""),
            "every clip",
            bool(same.all()),
        ),
    ]


def check_streaming(stream: StreamSource, clip_scores: np.ndarray, clips: np.ndarray, subject: str) -> list[Check]:
    """Streaming a clip (several chunk sizes, and odd-sized pieces through a buffer) gives its clip scores.

    The per-frame logits of all calls (the runtime's step) are pooled as the whole-clip model pools them.
    """
    model = stream_model(stream)
    context_samples, hop_samples, pooling = model.info.context_samples, model.info.hop_samples, model.info.pooling
    worst: dict[str, float] = {}
    agree: dict[str, bool] = {}
    for clip, reference in zip(clips, clip_scores, strict=True):
        whole = frames_in(len(clip), model.info.window_samples, hop_samples)
        feeds: dict[str, list[np.ndarray]] = {
            f"{h} hop{'s' if h > 1 else ''}": list(stream_chunks(clip, context_samples, hop_samples, h))
            for h in (*STREAM_CHUNK_HOPS, whole)
        }
        buffer = StreamBuffer(context_samples, hop_samples)
        pieces, start, i = [], 0, 0
        while start < len(clip):
            size = STREAM_BUFFER_PIECES[i % len(STREAM_BUFFER_PIECES)]
            pieces.extend(buffer.push(clip[start : start + size]))
            start, i = start + size, i + 1
        feeds["odd pieces, buffered"] = pieces
        for label, chunks in feeds.items():
            scores = pool_scores(model.frame_outputs(chunks)[0], pooling)
            worst[label] = max(worst.get(label, 0.0), float(np.abs(scores - reference).max()))
            agree[label] = agree.get(label, True) and bool(top1_agrees(scores, reference, PARITY_TOLERANCE).all())
    return [
        Check(
            f"streaming = whole clip ({label})",
            subject,
            f"{worst[label]:.2e}, top-1 {'same' if agree[label] else 'DIFFERS'}",
            f"<= {PARITY_TOLERANCE:.0e}",
            worst[label] <= PARITY_TOLERANCE and agree[label],
        )
        for label in worst
    ]


def check_reference(path: Path, feeds: dict[str, np.ndarray], tolerance: float = PARITY_TOLERANCE) -> Check:
    """``onnx.reference.ReferenceEvaluator`` (an independent ONNX implementation) agrees with onnxruntime.

    Each output is compared on its own scale: the largest difference divided by ``max(1, max |output|)``, so
    probabilities and LSTM states (within [-1, 1]) get an absolute bound and logits a relative one.
    """
    from onnx.reference import ReferenceEvaluator

    name = Path(path).name
    limit = f"<= {tolerance:.0e} x max(1, |output|)"
    try:
        expected = session(path).run(None, feeds)
        actual = ReferenceEvaluator(str(path)).run(None, feeds)
        diff = max(scaled_difference(np.asarray(a, np.float32), e) for a, e in zip(actual, expected, strict=True))
    except Exception as exc:  # also outputs of other counts or shapes
        return Check("ReferenceEvaluator = onnxruntime", name, _one_line(exc), limit, False)
    return Check("ReferenceEvaluator = onnxruntime", name, f"{diff:.2e}", limit, diff <= tolerance)


def scaled_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max(1, max |expected|)``: absolute for values within [-1, 1], else relative."""
    expected = np.asarray(expected, np.float64)
    if expected.size == 0:
        return 0.0
    scale = max(1.0, float(np.abs(expected).max()))
    return float(np.abs(np.asarray(actual, np.float64) - expected).max()) / scale


def stream_feeds(
    stream_path: Path, clip: np.ndarray, context_samples: int, hop_samples: int, hops: int = 3, lanes: int = 2
) -> dict[str, np.ndarray]:
    """One streaming call's inputs: the first ``hops`` frames of ``clip`` and small random states."""
    rng = np.random.default_rng(0)
    states = stream_model(stream_path).info.states
    feeds = {s.input: (rng.standard_normal(s.zeros(lanes).shape) * 0.1).astype(np.float32) for s in states}
    feeds[INPUT_AUDIO] = clip[None, : context_samples + hops * hop_samples].astype(np.float32)
    return feeds


# ------------------------------------------------------------------------------------------ int8 checks


def check_int8(
    name: str, fp32_path: Path, int8_path: Path, fp32_accuracy: float | None, int8_accuracy: float | None
) -> list[Check]:
    """File size at most INT8_SIZE_RATIO of the float file; accuracy within INT8_ACCURACY_TOLERANCE points.

    The accuracy check is skipped (``passed=None``) when either accuracy is None (no labelled data).
    """
    ratio = Path(int8_path).stat().st_size / Path(fp32_path).stat().st_size
    checks = [
        Check(
            f"{name}: size / fp32 size",
            Path(int8_path).name,
            f"{ratio:.1%}",
            f"<= {INT8_SIZE_RATIO:.0%}",
            ratio <= INT8_SIZE_RATIO,
        )
    ]
    if fp32_accuracy is None or int8_accuracy is None:
        checks.append(
            Check(
                f"{name}: accuracy vs fp32",
                Path(int8_path).name,
                "no labelled data (--data)",
                f"loss <= {INT8_ACCURACY_TOLERANCE} points",
                None,
            )
        )
    else:
        loss = 100 * (fp32_accuracy - int8_accuracy)
        checks.append(
            Check(
                f"{name}: accuracy vs fp32",
                Path(int8_path).name,
                f"{100 * int8_accuracy:.2f}% vs {100 * fp32_accuracy:.2f}% ({-loss:+.2f})",
                f"loss <= {INT8_ACCURACY_TOLERANCE} points",
                loss <= INT8_ACCURACY_TOLERANCE,
            )
        )
    return checks


# --------------------------------------------------------------------------------------------- timing


def median_seconds(fn: Callable[[], Any], runs: int, warmup: int = WARMUP_RUNS) -> float:
    """Median wall time of ``fn()`` over ``runs`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def clip_latency_onnx(sess: Any, clip: np.ndarray, runs: int = CLIP_TIMING_RUNS) -> float:
    """Median single-clip latency of a whole-clip session (seconds)."""
    feed = {INPUT_AUDIO: clip[None].astype(np.float32)}
    return median_seconds(lambda: sess.run(None, feed), runs)


def clip_latency_torch(model: Any, clip: np.ndarray, threads: int, runs: int = CLIP_TIMING_RUNS) -> float:
    """Median single-clip latency of the PyTorch model with ``threads`` threads (seconds)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.from_numpy(clip[None].astype(np.float32))
        with torch.no_grad():
            return median_seconds(lambda: model.classify(x), runs)
    finally:
        torch.set_num_threads(before)


def stream_call_latency(
    stream: StreamSource, hops: int = BENCH_HOPS, lanes: int = 1, runs: int = STREAM_TIMING_RUNS
) -> float:
    """Median latency of one streaming call with ``hops`` new frames and ``lanes`` lanes (seconds)."""
    model = stream_model(stream)
    rng = np.random.default_rng(0)
    size = model.info.context_samples + hops * model.info.hop_samples
    feed = model.feeds((rng.standard_normal((1, size)) * 0.1).astype(np.float32), model.initial_states(lanes))
    return median_seconds(lambda: model.session.run(None, feed), runs)


# --------------------------------------------------------------------------------------------- tables


@dataclass
class ModelRow:
    """One line of the comparison table (None: not measured)."""

    name: str
    file: str
    size_bytes: int | None = None
    accuracy: float | None = None
    stream_accuracy: float | None = None  # clips streamed BENCH_HOPS hops per call, logits pooled
    agreement: float | None = None  # top-1 agreement with PyTorch on the parity clips
    clip_ms: float | None = None
    stream_us: float | None = None
    stream_size_bytes: int | None = None


def format_checks(checks: Sequence[Check]) -> str:
    rows = [("check", "file", "value", "requirement", "")] + [
        (c.name, c.subject, c.value, c.limit, c.status) for c in checks
    ]
    return _table(rows)


def format_models(rows: Sequence[ModelRow], threads: int) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None or value != value else format(value, spec)

    def pct(value: float | None, digits: int) -> str:
        return "-" if value is None or value != value else f"{100 * value:.{digits}f}%"

    header = (
        "model",
        "accuracy (clip)",
        "accuracy (stream)",
        "top-1 = PyTorch",
        "clip file",
        "stream file",
        f"clip latency ({threads} thr)",
        f"stream call ({BENCH_HOPS} hops)",
    )
    table = [header] + [
        (
            r.name,
            pct(r.accuracy, 2),
            pct(r.stream_accuracy, 2),
            pct(r.agreement, 1),
            "-" if r.size_bytes is None else f"{r.size_bytes / 1024:.0f} KiB",
            "-" if r.stream_size_bytes is None else f"{r.stream_size_bytes / 1024:.0f} KiB",
            fmt(None if r.clip_ms is None else r.clip_ms, ".2f") + (" ms" if r.clip_ms is not None else ""),
            fmt(r.stream_us, ".0f") + (" us" if r.stream_us is not None else ""),
        )
        for r in rows
    ]
    return _table(table)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
