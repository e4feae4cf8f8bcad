"""The checks and the comparison table of one ``kws export``, run on the files it staged.

Float: onnx.checker and strict shape inference, fp32 ONNX vs PyTorch on the parity clips, streaming = whole
clip, onnx's ReferenceEvaluator vs onnxruntime. Each int8 variant: structure, size and (with labelled clips)
accuracy against fp32, measured as a :class:`~kws.export.choice.VariantResult`; then the variant to ship is
chosen (:func:`~kws.export.choice.choose_quantization`). A variant that is not shipped cannot fail the export.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kws.export import checks as ck
from kws.export.choice import VariantResult, choose_quantization
from kws.export.clips import EvalSet, ExportClips
from kws.export.options import ExportOptions, ExportPaths, Source
from kws.format import QUANT_NONE
from kws.train.evaluate import accuracy

logger = logging.getLogger("kws.export.pipeline")  # the name kws export's log lines have always had

REFERENCE_CLIPS = 2
"""Clips run through the (slow, pure-Python) ONNX reference evaluator."""


@dataclass(frozen=True)
class Probe:
    """What every model of one export is run on.

    Attributes:
        parity: float32 ``[n, clip_samples]``, the parity clips.
        torch_parity: PyTorch's scores ``[n, n_labels]`` on them.
        onnx_parity: the fp32 whole-clip ONNX model's scores ``[n, n_labels]`` on them.
        eval_set: labelled clips measuring accuracy, or None.
        threads: intra-op threads of the sessions and the latency measurements.
        timing: measure latencies.
    """

    parity: np.ndarray
    torch_parity: np.ndarray
    onnx_parity: np.ndarray
    eval_set: EvalSet | None
    threads: int
    timing: bool


@dataclass(frozen=True)
class Verdict:
    """Every check, the comparison table and the int8 variant chosen (``none``: none made)."""

    passed: bool
    quantization: str
    reason: str
    checks: tuple[ck.Check, ...]
    rows: tuple[ck.ModelRow, ...]


def _agreement(scores: np.ndarray, reference: np.ndarray) -> float:
    return float((scores.argmax(1) == reference.argmax(1)).mean())


def check_export(
    staged: ExportPaths,
    candidates: Mapping[str, ExportPaths],
    source: Source,
    clips: ExportClips,
    options: ExportOptions,
) -> Verdict:
    """Run every check on the staged float files (``staged``) and int8 variants (``candidates``), fill the
    comparison table and choose the variant to ship."""
    logger.info("checking")
    threads, timing, parity = options.threads, options.timing, clips.parity
    checks = ck.check_structure(staged.clip) + ck.check_structure(staged.stream)
    clip_fp32 = ck.session(staged.clip, threads)
    stream_fp32 = ck.session(staged.stream, threads)
    torch_parity = ck.torch_clip_scores(source.model, parity)
    onnx_parity = ck.onnx_clip_scores(clip_fp32, parity)
    checks += ck.compare_scores("fp32 parity", f"{staged.clip.name} vs PyTorch", onnx_parity, torch_parity)
    checks += ck.check_streaming(stream_fp32, onnx_parity, parity, staged.stream.name)
    checks.append(ck.check_reference(staged.clip, {"audio": parity[:REFERENCE_CLIPS]}))
    features = source.config.features
    feeds = ck.stream_feeds(staged.stream, parity[0], features.context_samples, features.hop_samples)
    checks.append(ck.check_reference(staged.stream, feeds))

    eval_set = clips.eval_set if clips.eval_set is not None and clips.eval_set.labels is not None else None
    probe = Probe(parity, torch_parity, onnx_parity, eval_set, threads, timing)
    torch_row, fp32_row = _float_rows(staged, source, probe, clip_fp32, stream_fp32)
    variants = [measure_variant(v, paths, staged, fp32_row, probe) for v, paths in candidates.items()]
    if variants:
        chosen, reason = choose_quantization(variants)
    else:
        chosen, reason = QUANT_NONE, "--quantization none"
    for variant in variants:  # a variant that is not shipped cannot fail the export
        shipped = variant.variant == chosen
        checks += variant.checks if shipped else [dataclasses.replace(c, required=False) for c in variant.checks]
    return Verdict(
        passed=all(c.passed is not False for c in checks if c.required),
        quantization=chosen,
        reason=reason,
        checks=tuple(checks),
        rows=(torch_row, fp32_row, *(v.row for v in variants)),
    )


def _float_rows(
    staged: ExportPaths, source: Source, probe: Probe, clip_fp32: Any, stream_fp32: Any
) -> tuple[ck.ModelRow, ck.ModelRow]:
    """The table rows of the PyTorch model and the fp32 ONNX files."""
    data = probe.eval_set
    torch_accuracy = fp32_accuracy = fp32_stream_accuracy = None
    if data is not None:
        torch_accuracy = accuracy(ck.torch_clip_scores(source.model, data.audio), data.labels)
        fp32_accuracy = accuracy(ck.onnx_clip_scores(clip_fp32, data.audio), data.labels)
        fp32_stream_accuracy = accuracy(ck.streamed_clip_scores(stream_fp32, data.audio), data.labels)
    torch_ms = fp32_ms = fp32_us = None
    if probe.timing:
        torch_ms = 1e3 * ck.clip_latency_torch(source.model, probe.parity[0], probe.threads)
        fp32_ms = 1e3 * ck.clip_latency_onnx(clip_fp32, probe.parity[0])
        fp32_us = 1e6 * ck.stream_call_latency(stream_fp32)
    torch_row = ck.ModelRow("PyTorch", "checkpoint", accuracy=torch_accuracy, agreement=1.0, clip_ms=torch_ms)
    fp32_row = ck.ModelRow(
        "ONNX fp32",
        staged.clip.name,
        size_bytes=staged.clip.stat().st_size,
        accuracy=fp32_accuracy,
        stream_accuracy=fp32_stream_accuracy,
        agreement=_agreement(probe.onnx_parity, probe.torch_parity),
        clip_ms=fp32_ms,
        stream_us=fp32_us,
        stream_size_bytes=staged.stream.stat().st_size,
    )
    return torch_row, fp32_row


def measure_variant(
    variant: str, paths: ExportPaths, fp32: ExportPaths, fp32_row: ck.ModelRow, probe: Probe
) -> VariantResult:
    """The table row, the checks (subjects ``VARIANT/FILE``) and the decision figures of one int8 variant."""
    clip_q, stream_q = ck.session(paths.clip_int8, probe.threads), ck.session(paths.stream_int8, probe.threads)
    q_parity = ck.onnx_clip_scores(clip_q, probe.parity)
    q_stream_parity = ck.streamed_clip_scores(stream_q, probe.parity)
    data = probe.eval_set
    clip_accuracy = stream_accuracy = None
    if data is not None:
        clip_accuracy = accuracy(ck.onnx_clip_scores(clip_q, data.audio), data.labels)
        stream_eval = ck.streamed_clip_scores(stream_q, data.audio)
        stream_accuracy = accuracy(stream_eval, data.labels)
        hits, what = stream_eval.argmax(1) == data.labels, "streaming accuracy"
    else:
        hits, what = q_stream_parity.argmax(1) == probe.onnx_parity.argmax(1), "streaming top-1 agreement with fp32"
    clip_ms = stream_us = None
    if probe.timing:
        clip_ms = 1e3 * ck.clip_latency_onnx(clip_q, probe.parity[0])
        stream_us = 1e6 * ck.stream_call_latency(stream_q)
    found = ck.check_structure(paths.clip_int8) + ck.check_structure(paths.stream_int8)
    found += ck.check_int8(f"int8 {variant} clip", fp32.clip, paths.clip_int8, fp32_row.accuracy, clip_accuracy)
    found += ck.check_int8(
        f"int8 {variant} stream", fp32.stream, paths.stream_int8, fp32_row.stream_accuracy, stream_accuracy
    )
    deviation = float(np.abs(q_stream_parity - q_parity).max())
    agree = float((q_stream_parity.argmax(1) == q_parity.argmax(1)).mean())
    found.append(
        ck.Check(
            f"int8 {variant}: streaming vs whole clip",
            paths.stream_int8.name,
            f"max |diff| {deviation:.2e}, top-1 agree {agree:.0%}",
            "informative",
            None,
        )
    )
    row = ck.ModelRow(
        f"ONNX int8 {variant}",
        paths.clip_int8.name,
        size_bytes=paths.clip_int8.stat().st_size,
        accuracy=clip_accuracy,
        stream_accuracy=stream_accuracy,
        agreement=_agreement(q_parity, probe.torch_parity),
        clip_ms=clip_ms,
        stream_us=stream_us,
        stream_size_bytes=paths.stream_int8.stat().st_size,
    )
    return VariantResult(
        variant=variant,
        row=row,
        checks=tuple(dataclasses.replace(c, subject=f"{variant}/{c.subject}") for c in found),
        hits=hits,
        what=what,
        stream_us=stream_us if stream_us is not None else float("nan"),
    )
