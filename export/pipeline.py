"""``export_checkpoint``: checkpoint -> four checked ONNX files (the library behind ``kws export``).

Steps: validate the inputs (checkpoint, output folder, data folders) before any slow work; export the float
whole-clip and streaming models; make the int8 variants; run every check of :mod:`kws.export.checks`; choose
the int8 variant to ship; then install the files.

Nothing is written at the final names until every file exists and every check passed: the files are made in
a private staging folder inside the output folder (``.NAME.export-PID-XXXXXXXX/``) and moved into place with
``os.replace`` (atomic per file). If a check fails, the staged files and the report go to ``DIR/NAME.rejected/``
instead, and the good files already in ``DIR`` are left alone. A staging folder left by a killed export (its
process is gone) is removed, with a log line, the next time ``kws export`` writes into that folder.

Real clips (``--data``, ``--calibration``) are read with the split rule of the checkpoint's own training
(:func:`kws.evaluate.resolve_split_mode`, shared with ``kws evaluate`` and ``kws bench``), so the accuracy
columns never score a clip the model was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kws.config import FeatureConfig
from kws.export import checks as ck
from kws.export.clips import PARITY_CLIPS, SYNTHETIC_SEED, EvalSet, check_roots, load_clips, synthetic_clips
from kws.export.files import (
    CALIBRATION_SPLIT,
    STAGING_INFIX,
    Source,
    check_data,
    check_output_dir,
    clean_stale_staging,
    install,
    load_calibration,
    make_models,
    open_checkpoint,
    prepare_output,
    reject,
    ship,
    staging_folder,
)
from kws.export.options import (
    CALIBRATION_CLIPS,
    DEFAULT_NAME,
    QUANT_AUTO,
    QUANT_BOTH,
    QUANTIZATION_CHOICES,
    ExportOptions,
    ExportPaths,
    Roots,
    as_roots,
)
from kws.format import QUANT_DYNAMIC, QUANT_NONE, QUANT_STATIC
from kws.io import atomic_write, clean_stale_temporaries, make_readable

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATION_CLIPS",
    "DEFAULT_NAME",
    "PARITY_CLIPS",
    "QUANT_AUTO",
    "QUANT_BOTH",
    "QUANT_NONE",
    "QUANTIZATION_CHOICES",
    "STAGING_INFIX",
    "SYNTHETIC_SEED",
    "EvalSet",
    "ExportOptions",
    "ExportPaths",
    "ExportResult",
    "Roots",
    "as_roots",
    "check_output_dir",
    "check_roots",
    "choose_quantization",
    "clean_stale_staging",
    "export_checkpoint",
    "export_files",
    "load_clips",
    "sign_test",
    "synthetic_clips",
]

REFERENCE_CLIPS = 2
"""Clips run through the (slow, pure-Python) ONNX reference evaluator."""

CHOICE_MARGIN = 0.25
"""Accuracy (or top-1 agreement) difference, in points, below which two int8 variants count as equal."""

CHOICE_SIGNIFICANCE = 0.05
"""A static variant counts as more accurate only if a sign test over the clips where the two variants
disagree gives a p-value below this (on a few hundred clips, one clip is a third of a point)."""

CHOICE_SPEEDUP = 0.9
"""Static QDQ is shipped on equal quality only if its streaming call takes less than this times dynamic's."""


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` made, measured and decided.

    Attributes:
        passed: every check passed (files installed at ``paths``); False: the files are in ``rejected_dir``.
        paths: the final paths of the files (present only when ``passed``).
        quantization: the int8 variant shipped as ``NAME.int8.onnx`` (``"dynamic"``/``"static-qdq"``), or
            ``"none"``.
        reason: why that variant was chosen.
        checks: every check, in the order run.
        rows: the comparison table (PyTorch, ONNX fp32, each int8 variant).
        report_path: the JSON report.
    """

    passed: bool
    paths: ExportPaths
    quantization: str
    reason: str
    checks: list[ck.Check] = field(default_factory=list)
    rows: list[ck.ModelRow] = field(default_factory=list)
    report_path: Path | None = None
    rejected_dir: Path | None = None
    threads: int = 1

    def format(self) -> str:
        """The printed report: the check table, then the comparison table, then the decision."""
        lines = [ck.format_checks(self.checks), "", ck.format_models(self.rows, self.threads), ""]
        lines.append(f"int8 shipped: {self.quantization} ({self.reason})")
        if self.passed:
            lines.append("all checks passed; wrote " + ", ".join(str(p) for p in self.paths.existing()))
        else:
            failed = sum(c.passed is False and c.required for c in self.checks)
            lines.append(
                f"{failed} check(s) FAILED: nothing installed; the files and the report are in {self.rejected_dir}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- decision


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` vs ``losses`` discordant pairs under "both equally likely"."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def choose_quantization(metrics: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """Pick the int8 variant to ship from measured quality and speed.

    Each variant's metrics hold ``passed`` (its checks), ``hits`` (per clip: the streaming int8 model, which
    is what the runtime runs, gets the label right, or, without labelled data, agrees with the float model's
    top-1), ``what`` (which of the two) and ``stream_us`` (one streaming call). Dynamic is the default;
    static QDQ is shipped only if it passes its checks and is more accurate by more than CHOICE_MARGIN points
    with a sign test over the clips where the two disagree at p < CHOICE_SIGNIFICANCE, or is as accurate
    (within the margin) and faster per streaming call by the factor CHOICE_SPEEDUP.
    """
    if len(metrics) == 1:
        ((name, m),) = metrics.items()
        return name, "the only variant made" + ("" if m["passed"] else " (it fails a check)")
    dyn, sta = metrics[QUANT_DYNAMIC], metrics[QUANT_STATIC]
    if dyn["passed"] != sta["passed"]:
        winner = QUANT_DYNAMIC if dyn["passed"] else QUANT_STATIC
        return winner, "the other variant fails a check"
    q_dyn, q_sta = 100 * float(np.mean(dyn["hits"])), 100 * float(np.mean(sta["hits"]))
    wins = int(np.sum(sta["hits"] & ~dyn["hits"]))
    losses = int(np.sum(dyn["hits"] & ~sta["hits"]))
    p_value = sign_test(wins, losses)
    speed = sta["stream_us"] / dyn["stream_us"]
    summary = (
        f"{dyn['what']} {q_dyn:.2f}% vs {q_sta:.2f}% on {len(dyn['hits'])} clips "
        f"(sign test p={p_value:.2f}), streaming call {dyn['stream_us']:.0f} vs {sta['stream_us']:.0f} us "
        "(dynamic vs static)"
    )
    if q_sta > q_dyn + CHOICE_MARGIN and p_value < CHOICE_SIGNIFICANCE:
        return QUANT_STATIC, f"static is more accurate: {summary}"
    if q_sta >= q_dyn - CHOICE_MARGIN and speed < CHOICE_SPEEDUP:
        return QUANT_STATIC, f"static is as accurate and faster: {summary}"
    return QUANT_DYNAMIC, f"static is not measurably better: {summary}"


# ------------------------------------------------------------------------------------------------- main


def export_files(checkpoint: str | Path, out_dir: str | Path, options: ExportOptions | None = None) -> ExportPaths:
    """Write ``OUT/NAME.onnx``, ``NAME.stream.onnx``, ``NAME.int8.onnx`` and ``NAME.stream.int8.onnx`` from
    ``checkpoint``, with no parity check and no measurement (``kws export`` checks them: export_checkpoint).

    The int8 files are dynamic quantization unless ``options.quantization`` is ``static`` (calibrated on the
    training split of ``options.calibration``); ``none`` makes the float files only. Nothing is chosen, so
    ``auto`` and ``both`` make dynamic. ``data``, ``split``, ``eval_clips``, ``threads`` and ``timing`` are not
    used. The files appear at their final names all together (staging folder, then ``os.replace``); the
    runtime needs nothing else (the models carry their metadata).

    Returns:
        the final paths (the int8 ones do not exist with ``quantization="none"``).

    Raises:
        KWSError (CheckpointError, DataError, ExportError): bad inputs, before any slow work.
    """
    options = options if options is not None else ExportOptions()
    source = open_checkpoint(checkpoint)
    variant = options.files_variant
    static = variant == QUANT_STATIC
    check_data(source, [(options.calibration if static else (), CALIBRATION_SPLIT)], options.split_mode)
    out_dir = prepare_output(out_dir)
    calibration = load_calibration(source, options).audio if static else None
    with staging_folder(out_dir, options.name) as staging:
        staged, candidates = make_models(
            staging, source, options.name, [variant] if variant else [], calibration, options.per_channel
        )
        if variant:
            ship(candidates[variant], staged)
        return install(staged, ExportPaths.under(out_dir, options.name))


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    name: str = DEFAULT_NAME,
    calibration: Roots = None,
    data: Roots = None,
    split: str = "test",
    split_mode: str = "auto",
    quantization: str = QUANT_AUTO,
    calibration_clips: int = CALIBRATION_CLIPS,
    eval_clips: int = 0,
    threads: int = 1,
    timing: bool = True,
    per_channel: bool = False,
) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir``: float and int8, whole-clip and streaming, all checked.

    Raises:
        KWSError (CheckpointError, DataError, ExportError): bad inputs, before any slow work.
    """
    options = ExportOptions(
        name=name,
        quantization=quantization,
        calibration=as_roots(calibration),
        calibration_clips=calibration_clips,
        data=as_roots(data),
        split=split,
        split_mode=split_mode,
        eval_clips=eval_clips,
        threads=threads,
        timing=timing,
        per_channel=per_channel,
    )
    source = open_checkpoint(checkpoint)
    check_data(source, [(options.data, split), (options.calibration, CALIBRATION_SPLIT)], split_mode)
    out_dir = prepare_output(out_dir)
    clean_stale_temporaries(out_dir, names=[f"{name}.export.json"])  # a report write that was killed
    features = source.config.features
    eval_set = (
        load_clips(source.payload, options.data, split, eval_clips, source.seed, split_mode) if options.data else None
    )
    calib_set = load_calibration(source, options) if options.calibration else None
    real = eval_set if eval_set is not None else calib_set
    if real is not None:
        parity = real.audio[np.unique(np.linspace(0, len(real.audio) - 1, PARITY_CLIPS).round().astype(int))]
        parity_source = real.source
    else:
        parity = synthetic_clips(features.clip_samples, features.sample_rate, PARITY_CLIPS)
        parity_source = "synthetic speech-like clips"
    logger.info("parity clips: %s", parity_source)

    with staging_folder(out_dir, name) as staging:
        result = _export_in(staging, source, options, parity, eval_set, calib_set)
        return _install(result, out_dir, name)


def _export_in(
    staging: Path,
    source: Source,
    options: ExportOptions,
    parity: np.ndarray,
    eval_set: EvalSet | None,
    calib_set: EvalSet | None,
) -> ExportResult:
    name, threads, timing = options.name, options.threads, options.timing
    model = source.model
    features = source.config.features
    ctx, hop = features.context_samples, features.hop_samples
    pooling = source.config.model.pooling
    staged, candidates = make_models(
        staging,
        source,
        name,
        options.variants,
        calib_set.audio if calib_set is not None else None,
        options.per_channel,
    )

    logger.info("checking")
    checks = ck.check_structure(staged.clip) + ck.check_structure(staged.stream)
    clip_fp32 = ck.session(staged.clip, threads)
    stream_fp32 = ck.session(staged.stream, threads)
    torch_parity = ck.torch_clip_scores(model, parity)
    onnx_parity = ck.onnx_clip_scores(clip_fp32, parity)
    checks += ck.compare_scores("fp32 parity", f"{staged.clip.name} vs PyTorch", onnx_parity, torch_parity)
    checks += ck.check_streaming(stream_fp32, onnx_parity, parity, staged.stream.name)
    checks.append(ck.check_reference(staged.clip, {"audio": parity[:REFERENCE_CLIPS]}))
    checks.append(ck.check_reference(staged.stream, ck.stream_feeds(staged.stream, parity[0], ctx, hop)))

    labelled = eval_set is not None and eval_set.labels is not None
    rows = [
        ck.ModelRow("PyTorch", "checkpoint", agreement=1.0),
        ck.ModelRow(
            "ONNX fp32",
            staged.clip.name,
            size_bytes=staged.clip.stat().st_size,
            stream_size_bytes=staged.stream.stat().st_size,
            agreement=float((onnx_parity.argmax(1) == torch_parity.argmax(1)).mean()),
        ),
    ]
    if labelled:
        rows[0].accuracy = ck.accuracy(ck.torch_clip_scores(model, eval_set.audio), eval_set.labels)
        rows[1].accuracy = ck.accuracy(ck.onnx_clip_scores(clip_fp32, eval_set.audio), eval_set.labels)
        rows[1].stream_accuracy = ck.accuracy(ck.streamed_clip_scores(stream_fp32, eval_set.audio), eval_set.labels)
    if timing:
        rows[0].clip_ms = 1e3 * ck.clip_latency_torch(model, parity[0], threads)
        rows[1].clip_ms = 1e3 * ck.clip_latency_onnx(clip_fp32, parity[0])
        rows[1].stream_us = 1e6 * ck.stream_call_latency(stream_fp32)

    metrics: dict[str, dict[str, Any]] = {}
    variant_checks: dict[str, list[ck.Check]] = {}
    for variant, paths in candidates.items():
        row, found, metrics[variant] = _measure_variant(
            variant, paths, staged, rows[1], eval_set if labelled else None, parity, torch_parity,
            onnx_parity, features, pooling, threads, timing,
        )  # fmt: skip
        rows.append(row)
        variant_checks[variant] = [dataclasses.replace(c, subject=f"{variant}/{c.subject}") for c in found]

    if metrics:
        chosen, reason = choose_quantization(metrics)
        ship(candidates[chosen], staged)
    else:
        chosen, reason = QUANT_NONE, "--quantization none"
    for variant, found in variant_checks.items():  # a variant that is not shipped cannot fail the export
        checks += found if variant == chosen else [dataclasses.replace(c, required=False) for c in found]
    passed = all(c.passed is not False for c in checks if c.required)
    return ExportResult(
        passed=passed,
        paths=staged,
        quantization=chosen,
        reason=reason,
        checks=checks,
        rows=rows,
        threads=threads,
    )


def _measure_variant(
    variant: str, paths: ExportPaths, fp32: ExportPaths, fp32_row: ck.ModelRow, eval_set: EvalSet | None,
    parity: np.ndarray, torch_parity: np.ndarray, onnx_parity: np.ndarray, features: FeatureConfig,
    pooling: str, threads: int, timing: bool,
) -> tuple[ck.ModelRow, list[ck.Check], dict[str, Any]]:  # fmt: skip
    """The table row, the checks and the decision metrics of one int8 variant."""
    clip_q, stream_q = ck.session(paths.clip_int8, threads), ck.session(paths.stream_int8, threads)
    q_parity = ck.onnx_clip_scores(clip_q, parity)
    q_stream_parity = ck.streamed_clip_scores(stream_q, parity)
    row = ck.ModelRow(
        f"ONNX int8 {variant}",
        paths.clip_int8.name,
        size_bytes=paths.clip_int8.stat().st_size,
        stream_size_bytes=paths.stream_int8.stat().st_size,
        agreement=float((q_parity.argmax(1) == torch_parity.argmax(1)).mean()),
    )
    if eval_set is not None:
        row.accuracy = ck.accuracy(ck.onnx_clip_scores(clip_q, eval_set.audio), eval_set.labels)
        stream_eval = ck.streamed_clip_scores(stream_q, eval_set.audio)
        row.stream_accuracy = ck.accuracy(stream_eval, eval_set.labels)
        hits, what = stream_eval.argmax(1) == eval_set.labels, "streaming accuracy"
    else:
        hits, what = q_stream_parity.argmax(1) == onnx_parity.argmax(1), "streaming top-1 agreement with fp32"
    if timing:
        row.clip_ms = 1e3 * ck.clip_latency_onnx(clip_q, parity[0])
        row.stream_us = 1e6 * ck.stream_call_latency(stream_q)
    found = ck.check_structure(paths.clip_int8) + ck.check_structure(paths.stream_int8)
    found += ck.check_int8(f"int8 {variant} clip", fp32.clip, paths.clip_int8, fp32_row.accuracy, row.accuracy)
    found += ck.check_int8(
        f"int8 {variant} stream",
        fp32.stream,
        paths.stream_int8,
        fp32_row.stream_accuracy,
        row.stream_accuracy,
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
    metrics = {
        "passed": all(c.passed is not False for c in found),
        "hits": hits,
        "what": what,
        "stream_us": row.stream_us if row.stream_us is not None else float("nan"),
    }
    return row, found, metrics


def _report(result: ExportResult, paths: ExportPaths) -> dict[str, Any]:
    return {
        "passed": result.passed,
        "quantization": result.quantization,
        "reason": result.reason,
        "files": {k: str(v) for k, v in vars(paths).items() if v.exists()},
        "checks": [vars(c) | {"status": c.status} for c in result.checks],
        "models": [vars(r) for r in result.rows],
    }


def _install(result: ExportResult, out_dir: Path, name: str) -> ExportResult:
    """Move the staged files to their final names (all checks passed) or to ``NAME.rejected/``."""
    if result.passed:
        result.paths = install(result.paths, ExportPaths.under(out_dir, name))
        result.report_path = out_dir / f"{name}.export.json"
    else:
        rejected = out_dir / f"{name}.rejected"
        result.paths = reject(result.paths, rejected, name)
        result.rejected_dir = rejected
        result.report_path = rejected / f"{name}.export.json"
    report = json.dumps(_report(result, result.paths), indent=2, default=str)
    atomic_write(result.report_path, lambda tmp: (tmp.write_text(report), make_readable(tmp)))
    return result
