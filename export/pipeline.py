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
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kws.audio import int16_to_float
from kws.checkpoint import model_from_checkpoint, run_config
from kws.config import FeatureConfig, RunConfig
from kws.constants import SPLITS
from kws.data import DataError, build_split, detect_layout, load_corpus
from kws.evaluate import evaluation_data_config, resolve_split_mode
from kws.export import checks as ck
from kws.export.onnx_export import (
    ExportError,
    check_exportable,
    export_clip_model,
    export_stream_model,
    make_readable,
    save_model,
)
from kws.export.quantize import (
    QUANT_DYNAMIC,
    QUANT_STATIC,
    ClipCalibrationReader,
    StreamCalibrationReader,
    quantize_dynamic_model,
    quantize_static_model,
)
from kws.export.synthetic import speech_like_clips
from kws.io import atomic_write, clean_stale_temporaries, ensure_writable_dir, pid_alive

logger = logging.getLogger(__name__)

DEFAULT_NAME = "kws"
QUANT_AUTO, QUANT_BOTH, QUANT_NONE = "auto", "both", "none"
QUANTIZATION_CHOICES: tuple[str, ...] = (QUANT_AUTO, QUANT_DYNAMIC, "static", QUANT_BOTH, QUANT_NONE)

CALIBRATION_CLIPS = 200
"""Default number of real clips calibrating the static quantization (spread over the classes)."""

PARITY_CLIPS = 24
"""Clips in the float parity and streaming checks (real clips when a data folder is given)."""

REFERENCE_CLIPS = 2
"""Clips run through the (slow, pure-Python) ONNX reference evaluator."""

CHOICE_MARGIN = 0.25
"""Accuracy (or top-1 agreement) difference, in points, below which two int8 variants count as equal."""

CHOICE_SIGNIFICANCE = 0.05
"""A static variant counts as more accurate only if a sign test over the clips where the two variants
disagree gives a p-value below this (on a few hundred clips, one clip is a third of a point)."""

CHOICE_SPEEDUP = 0.9
"""Static QDQ is shipped on equal quality only if its streaming call takes less than this times dynamic's."""

EVAL_SEED_OFFSET = 0
SYNTHETIC_SEED = 1234

STAGING_INFIX = ".export-"
"""Staging folders are ``.NAME.export-PID-XXXXXXXX`` (PID: the exporting process)."""
_STAGING = re.compile(r"^\..+\.export-(?P<rest>.+)$")

Roots = str | Path | Sequence[str | Path] | None
"""One Speech Commands folder, several, or none."""


@dataclass(frozen=True)
class ExportPaths:
    """The four files of an export (``NAME.onnx``, ``NAME.stream.onnx``, ``NAME.int8.onnx``, ...)."""

    clip: Path
    stream: Path
    clip_int8: Path
    stream_int8: Path

    @classmethod
    def under(cls, folder: Path, name: str) -> ExportPaths:
        return cls(
            folder / f"{name}.onnx",
            folder / f"{name}.stream.onnx",
            folder / f"{name}.int8.onnx",
            folder / f"{name}.stream.int8.onnx",
        )

    def existing(self) -> list[Path]:
        return [p for p in (self.clip, self.stream, self.clip_int8, self.stream_int8) if p.exists()]


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


@dataclass(frozen=True)
class _Options:
    name: str
    threads: int
    timing: bool
    per_channel: bool


@dataclass(frozen=True)
class EvalSet:
    """Labelled (or unlabelled) float32 clips ``[n, clip_samples]``."""

    audio: np.ndarray
    labels: np.ndarray | None
    source: str


# ------------------------------------------------------------------------------------------------- inputs


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def clean_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders (``.NAME.export-PID-*``) that killed exports left in ``out_dir``.

    A folder whose process is still running (another ``kws export`` into the same folder) is left alone; one
    without a process id in its name (made before names carried one) counts as stale. Returns the folders
    removed; one log line lists them.
    """
    removed: list[tuple[Path, int]] = []
    for path in sorted(Path(out_dir).iterdir()):
        match = _STAGING.match(path.name)
        if match is None or not path.is_dir() or path.is_symlink():
            continue
        pid = match["rest"].split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        size = _size(path)
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append((path, size))
    if removed:
        logger.info(
            "removed %d staging folder(s) left in %s by an interrupted kws export: %s",
            len(removed),
            out_dir,
            ", ".join(f"{p.name} ({n / 2**20:.1f} MiB)" for p, n in removed),
        )
    return [p for p, _ in removed]


def check_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and make sure a file can be created in it (ExportError otherwise)."""
    ensure_writable_dir(out_dir, ExportError)


def as_roots(value: Roots) -> tuple[Path, ...]:
    """``--data``/``--calibration`` as a tuple of folders (one folder, several, or none)."""
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        value = [value]
    return tuple(Path(v).expanduser() for v in value)


def check_roots(roots: Sequence[Path]) -> None:
    """Each folder exists and is a Speech Commands folder (DataError naming the problem otherwise)."""
    for root in roots:
        detect_layout(root)


def _names(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def load_clips(
    payload: dict[str, Any],
    roots: Sequence[Path],
    split: str,
    limit: int,
    seed: int,
    split_mode: str = "auto",
    fallback: bool = False,
) -> EvalSet:
    """Labelled clips of ``split`` (``train``/``validation``/``test``/``all``) of Speech Commands folders.

    Read with :mod:`kws.data`, the checkpoint's data rules and labels (words outside them are ``_unknown_``)
    and the split rule of the checkpoint's own training (:func:`kws.evaluate.resolve_split_mode`). With
    ``limit > 0`` at most ``limit`` clips are kept, spread evenly over the classes (seeded).

    Args:
        fallback: if ``split`` is empty, use every split (calibration clips need not be held out) and say so.

    Raises:
        DataError: no clips (of ``split``, unless ``fallback``).
    """
    from kws.dataset import load_noises, load_split

    config = run_config(payload)
    labels = list(payload["labels"])
    mode, _ = resolve_split_mode(payload, split_mode, split)
    data_config = evaluation_data_config(config, roots)
    corpus = load_corpus(data_config, mode)
    if mode == "auto":
        mode = "speaker-hash" if "archive" in corpus.layouts else "official"
    splits = SPLITS if split == "all" else (split,)
    examples = [e for s in splits for e in build_split(corpus, labels, s, data_config, seed)]
    used = split
    if not examples and fallback and split != "all":
        logger.warning("%s hold no %s clips of these labels; using every split", _names(roots), split)
        examples = [e for s in SPLITS for e in build_split(corpus, labels, s, data_config, seed)]
        used = "every split"
    if not examples:
        hint = "" if split == "all" else " (--split all scores every clip)"
        raise DataError(f"{_names(roots)} hold no {split} clips of the labels {', '.join(labels)}{hint}")
    if 0 < limit < len(examples):
        rng = np.random.default_rng(seed)
        by_label: dict[int, list[int]] = {}
        for i in rng.permutation(len(examples)):
            by_label.setdefault(examples[i].label, []).append(int(i))
        order = [i for group in zip(*_padded(list(by_label.values())), strict=True) for i in group if i >= 0]
        examples = [examples[i] for i in sorted(order[:limit])]
    noises = load_noises(corpus, config.features.sample_rate) if any(e.path is None for e in examples) else []
    data = load_split(
        examples,
        corpus,
        noises,
        config.features.sample_rate,
        config.features.clip_samples,
        desc=f"reading {split} clips",
    )
    if len(data) == 0:
        raise DataError(f"no readable clips in {_names(roots)}")
    rule = "" if split == "all" else f", split mode {mode}"
    return EvalSet(int16_to_float(data.audio), data.labels, f"{_names(roots)} ({used}, {len(data)} clips{rule})")


def _padded(groups: list[list[int]]) -> list[list[int]]:
    longest = max(len(g) for g in groups)
    return [g + [-1] * (longest - len(g)) for g in groups]


def synthetic_clips(clip_samples: int, sample_rate: int, count: int, seed: int = SYNTHETIC_SEED) -> np.ndarray:
    """float32 ``[count, clip_samples]``: speech-like words over a recording noise floor, background noise and
    zero-padded short recordings (:mod:`kws.export.synthetic`), the parity clips when no real clips are given."""
    return speech_like_clips(clip_samples, sample_rate, count, seed)


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

    Args:
        name: file stem: ``NAME.onnx``, ``NAME.stream.onnx``, ``NAME.int8.onnx``, ``NAME.stream.int8.onnx``.
        calibration: Speech Commands folder(s) whose training clips calibrate the static quantization (and serve
            as real parity clips when ``data`` is not given).
        data: Speech Commands folder(s) whose ``split`` clips measure accuracy (PyTorch, fp32, int8).
        split_mode: how ``data`` and ``calibration`` are split: ``auto`` is the rule of the checkpoint's
            training; a mode that contradicts it is refused (:func:`kws.evaluate.resolve_split_mode`).
        quantization: ``auto`` (both when ``calibration`` is given, else dynamic), ``dynamic``, ``static``,
            ``both`` (make both, ship the better one) or ``none`` (float files only).
        calibration_clips, eval_clips: clip limits (``eval_clips=0``: the whole split).
        threads: intra-op threads for the latency measurements.
        timing: measure latencies (the tests turn this off).
        per_channel: dynamic quantization with one weight scale per LSTM gate row (a little closer to float,
            ~4% larger file) instead of one per matrix.

    Raises:
        KWSError (CheckpointError, DataError, ExportError): bad inputs, before any slow work.
    """
    if quantization not in QUANTIZATION_CHOICES:
        raise ExportError(f"unknown quantization {quantization!r} (choose from {', '.join(QUANTIZATION_CHOICES)})")
    calibration_roots, data_roots = as_roots(calibration), as_roots(data)
    if quantization == "static" and not calibration_roots:
        raise ExportError("static quantization needs calibration clips: add --calibration DATA")
    if quantization == QUANT_BOTH and not calibration_roots:
        raise ExportError("--quantization both makes a static variant, which needs --calibration DATA")
    if threads < 1 or calibration_clips < 1 or eval_clips < 0:
        raise ExportError("need threads >= 1, calibration clips >= 1 and eval clips >= 0")
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid file name stem {name!r}")
    out_dir = Path(out_dir).expanduser()
    model, labels, payload = model_from_checkpoint(checkpoint)
    config = run_config(payload)
    check_exportable(config.model)
    check_roots(calibration_roots + data_roots)
    for roots, what in ((data_roots, split), (calibration_roots, "train")):
        if roots:
            resolve_split_mode(payload, split_mode, what)  # a contradicting split mode, before any slow work
    check_output_dir(out_dir)
    clean_stale_staging(out_dir)
    clean_stale_temporaries(out_dir, names=[f"{name}.export.json"])  # a report write that was killed
    if quantization == QUANT_AUTO:
        quantization = QUANT_BOTH if calibration_roots else QUANT_DYNAMIC
    variants = {
        QUANT_BOTH: [QUANT_DYNAMIC, QUANT_STATIC],
        QUANT_DYNAMIC: [QUANT_DYNAMIC],
        "static": [QUANT_STATIC],
        QUANT_NONE: [],
    }[quantization]

    seed = config.train.seed + EVAL_SEED_OFFSET
    features = config.features
    evaluation = payload.get("evaluation")
    eval_set = load_clips(payload, data_roots, split, eval_clips, seed, split_mode) if data_roots else None
    calib_set = (
        load_clips(payload, calibration_roots, "train", calibration_clips, seed, split_mode, fallback=True)
        if calibration_roots
        else None
    )
    real = eval_set if eval_set is not None else calib_set
    if real is not None:
        parity = real.audio[np.unique(np.linspace(0, len(real.audio) - 1, PARITY_CLIPS).round().astype(int))]
        parity_source = real.source
    else:
        parity = synthetic_clips(features.clip_samples, features.sample_rate, PARITY_CLIPS)
        parity_source = "synthetic speech-like clips"
    logger.info("parity clips: %s", parity_source)

    staging = Path(tempfile.mkdtemp(prefix=f".{name}{STAGING_INFIX}{os.getpid()}-", dir=out_dir))
    try:
        options = _Options(name=name, threads=threads, timing=timing, per_channel=per_channel)
        result = _export_in(staging, model, labels, config, evaluation, variants, parity, eval_set, calib_set, options)
        return _install(result, staging, out_dir, name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _export_in(
    staging: Path,
    model: Any,
    labels: list[str],
    config: RunConfig,
    evaluation: Any,
    variants: list[str],
    parity: np.ndarray,
    eval_set: EvalSet | None,
    calib_set: EvalSet | None,
    options: _Options,
) -> ExportResult:
    name, threads, timing = options.name, options.threads, options.timing
    features = config.features
    ctx, hop = features.context_samples, features.hop_samples
    pooling = config.model.pooling
    staged = ExportPaths.under(staging, name)
    logger.info("exporting the whole-clip model")
    save_model(export_clip_model(model, labels, evaluation), staged.clip)
    logger.info("exporting the streaming model")
    save_model(export_stream_model(model, labels, evaluation), staged.stream)

    candidates: dict[str, ExportPaths] = {}
    for variant in variants:
        paths = ExportPaths.under(staging / variant, name)
        paths.clip.parent.mkdir()
        logger.info("int8 %s quantization", variant)
        if variant == QUANT_DYNAMIC:
            quantize_dynamic_model(staged.clip, paths.clip_int8, options.per_channel)
            quantize_dynamic_model(staged.stream, paths.stream_int8, options.per_channel)
        else:
            assert calib_set is not None
            quantize_static_model(staged.clip, paths.clip_int8, ClipCalibrationReader(calib_set.audio))
            reader = StreamCalibrationReader(staged.stream, calib_set.audio, ctx, hop)
            quantize_static_model(staged.stream, paths.stream_int8, reader)
        candidates[variant] = paths

    logger.info("checking")
    checks = ck.check_structure(staged.clip) + ck.check_structure(staged.stream)
    clip_fp32 = ck.session(staged.clip, threads)
    stream_fp32 = ck.session(staged.stream, threads)
    torch_parity = ck.torch_clip_scores(model, parity)
    onnx_parity = ck.onnx_clip_scores(clip_fp32, parity)
    checks += ck.compare_scores("fp32 parity", f"{staged.clip.name} vs PyTorch", onnx_parity, torch_parity)
    checks += ck.check_streaming(stream_fp32, onnx_parity, parity, ctx, hop, pooling, staged.stream.name)
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
        rows[1].stream_accuracy = ck.accuracy(
            ck.stream_scores(stream_fp32, eval_set.audio, ctx, hop, pooling), eval_set.labels
        )
    if timing:
        rows[0].clip_ms = 1e3 * ck.clip_latency_torch(model, parity[0], threads)
        rows[1].clip_ms = 1e3 * ck.clip_latency_onnx(clip_fp32, parity[0])
        rows[1].stream_us = 1e6 * ck.stream_call_latency(stream_fp32, ctx, hop)

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
        shutil.copyfile(candidates[chosen].clip_int8, staged.clip_int8)
        shutil.copyfile(candidates[chosen].stream_int8, staged.stream_int8)
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
    ctx, hop = features.context_samples, features.hop_samples
    clip_q, stream_q = ck.session(paths.clip_int8, threads), ck.session(paths.stream_int8, threads)
    q_parity = ck.onnx_clip_scores(clip_q, parity)
    q_stream_parity = ck.stream_scores(stream_q, parity, ctx, hop, pooling)
    row = ck.ModelRow(
        f"ONNX int8 {variant}",
        paths.clip_int8.name,
        size_bytes=paths.clip_int8.stat().st_size,
        stream_size_bytes=paths.stream_int8.stat().st_size,
        agreement=float((q_parity.argmax(1) == torch_parity.argmax(1)).mean()),
    )
    if eval_set is not None:
        row.accuracy = ck.accuracy(ck.onnx_clip_scores(clip_q, eval_set.audio), eval_set.labels)
        stream_eval = ck.stream_scores(stream_q, eval_set.audio, ctx, hop, pooling)
        row.stream_accuracy = ck.accuracy(stream_eval, eval_set.labels)
        hits, what = stream_eval.argmax(1) == eval_set.labels, "streaming accuracy"
    else:
        hits, what = q_stream_parity.argmax(1) == onnx_parity.argmax(1), "streaming top-1 agreement with fp32"
    if timing:
        row.clip_ms = 1e3 * ck.clip_latency_onnx(clip_q, parity[0])
        row.stream_us = 1e6 * ck.stream_call_latency(stream_q, ctx, hop)
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


def _install(result: ExportResult, staging: Path, out_dir: Path, name: str) -> ExportResult:
    """Move the staged files to their final names (all checks passed) or to ``NAME.rejected/``."""
    staged = result.paths
    final = ExportPaths.under(out_dir, name)
    pairs = [(s, f) for s, f in zip(vars(staged).values(), vars(final).values(), strict=True) if s.exists()]
    if result.passed:
        made = {f for _, f in pairs}
        for path in vars(final).values():  # e.g. int8 files of an earlier export, now made with --quantization none
            if path not in made and path.exists():
                logger.warning("%s is from an earlier export (this one made no such file)", path)
        for src, dst in pairs:
            os.replace(src, dst)
        result.paths = final
        result.report_path = out_dir / f"{name}.export.json"
    else:
        rejected = out_dir / f"{name}.rejected"
        if rejected.exists():
            shutil.rmtree(rejected)
        rejected.mkdir()
        for src, _ in pairs:
            os.replace(src, rejected / src.name)
        result.paths = ExportPaths.under(rejected, name)
        result.rejected_dir = rejected
        result.report_path = rejected / f"{name}.export.json"
    report = json.dumps(_report(result, result.paths), indent=2, default=str)
    atomic_write(result.report_path, lambda tmp: (tmp.write_text(report), make_readable(tmp)))
    return result
