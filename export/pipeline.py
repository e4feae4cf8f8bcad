"""``export_files`` and ``export_checkpoint``: checkpoint -> the four ONNX files (the library behind ``kws export``).

:func:`export_files` writes them and nothing else (bench, scripts and tests use it). :func:`export_checkpoint`
(``kws export``) validates the inputs (checkpoint, output folder, data folders) before any slow work; exports
the float whole-clip and streaming models; makes the int8 variants; runs every check of
:mod:`kws.export.checks` (:mod:`kws.export.measure`); chooses the int8 variant to ship
(:mod:`kws.export.choice`); then installs the files and writes the report ``NAME.export.json``.

Nothing is written at the final names until every file exists and (``export_checkpoint``) every check passed:
the files are made in a private staging folder inside the output folder (``.NAME.export-PID-XXXXXXXX/``) and
moved into place with ``os.replace`` (atomic per file). If a check fails, the staged files and the report go to
``DIR/NAME.rejected/`` instead, and the good files already in ``DIR`` are left alone. A staging folder left by
a killed export (its process is gone) is removed, with a log line, the next time an export writes into that
folder (:mod:`kws.export.files`).

Real clips (``--data``, ``--calibration``) are read with the split rule of the checkpoint's own training
(:mod:`kws.train.evaluation_data`, shared with ``kws evaluate`` and ``kws bench``), so the accuracy columns never
score a clip the model was trained on (:mod:`kws.export.clips`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kws.export import checks as ck
from kws.export.choice import choose_quantization, sign_test
from kws.export.clips import ExportClips, load_calibration, load_clips, load_export_clips
from kws.export.files import (
    check_data,
    install,
    make_models,
    open_checkpoint,
    prepare_output,
    reject,
    ship,
    staging_folder,
)
from kws.export.measure import Verdict, check_export
from kws.export.options import ExportOptions, ExportPaths, Source
from kws.format import QUANT_STATIC
from kws.io import atomic_write, clean_stale_temporaries, make_readable

logger = logging.getLogger(__name__)

__all__ = [
    "ExportOptions",
    "ExportPaths",
    "ExportResult",
    "choose_quantization",
    "export_checkpoint",
    "export_files",
    "load_clips",
    "sign_test",
]

REPORT_SUFFIX = ".export.json"
"""The report of ``export_checkpoint``: ``NAME.export.json`` (next to the files, or in ``NAME.rejected/``)."""
REJECTED_SUFFIX = ".rejected"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_checkpoint` made, measured and decided.

    Attributes:
        passed: every check passed (files installed at ``paths``); False: the files are in ``rejected_dir``.
        paths: the final paths of the files (in ``rejected_dir`` when not ``passed``; the int8 ones exist
            unless ``quantization`` is ``"none"``).
        quantization: the int8 variant shipped as ``NAME.int8.onnx`` (``"dynamic"``/``"static-qdq"``), or
            ``"none"``.
        reason: why that variant was chosen.
        checks: every check, in the order run.
        rows: the comparison table (PyTorch, ONNX fp32, each int8 variant).
        report_path: the JSON report.
        rejected_dir: ``DIR/NAME.rejected`` when a check failed, else None.
        threads: the threads the latencies were measured with.
    """

    passed: bool
    paths: ExportPaths
    quantization: str
    reason: str
    checks: tuple[ck.Check, ...]
    rows: tuple[ck.ModelRow, ...]
    report_path: Path
    rejected_dir: Path | None
    threads: int

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

    def report(self) -> dict[str, Any]:
        """The content of ``NAME.export.json``."""
        return {
            "passed": self.passed,
            "quantization": self.quantization,
            "reason": self.reason,
            "files": {k: str(v) for k, v in vars(self.paths).items() if v.exists()},
            "checks": [vars(c) | {"status": c.status} for c in self.checks],
            "models": [vars(r) for r in self.rows],
        }


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
    check_data(source, options, data=False, calibration=static)
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
    checkpoint: str | Path, out_dir: str | Path, options: ExportOptions | None = None
) -> ExportResult:
    """Export ``checkpoint`` to ``out_dir``: float and int8, whole-clip and streaming, all checked.

    See :class:`~kws.export.options.ExportOptions` for the options (``kws export``'s). The files are installed
    only if every check passed; otherwise they go, with the report, to ``out_dir/NAME.rejected/``.

    Raises:
        KWSError (CheckpointError, DataError, ExportError): bad inputs, before any slow work.
    """
    options = options if options is not None else ExportOptions()
    source = open_checkpoint(checkpoint)
    check_data(source, options)
    out_dir = prepare_output(out_dir)
    clean_stale_temporaries(out_dir, names=[options.name + REPORT_SUFFIX])  # a report write that was killed
    clips = load_export_clips(source, options)
    with staging_folder(out_dir, options.name) as staging:
        staged, verdict = _export_in(staging, source, options, clips)
        return _install(staged, verdict, out_dir, options)


def _export_in(
    staging: Path, source: Source, options: ExportOptions, clips: ExportClips
) -> tuple[ExportPaths, Verdict]:
    """Make every file in ``staging``, check them, and stage the int8 variant chosen at the int8 names."""
    calibration = clips.calibration.audio if clips.calibration is not None else None
    staged, candidates = make_models(staging, source, options.name, options.variants, calibration, options.per_channel)
    verdict = check_export(staged, candidates, source, clips, options)
    if verdict.quantization in candidates:
        ship(candidates[verdict.quantization], staged)
    return staged, verdict


def _install(staged: ExportPaths, verdict: Verdict, out_dir: Path, options: ExportOptions) -> ExportResult:
    """Move the staged files to their final names (all checks passed) or to ``NAME.rejected/``; write the report."""
    name = options.name
    if verdict.passed:
        paths, rejected, folder = install(staged, ExportPaths.under(out_dir, name)), None, out_dir
    else:
        rejected = out_dir / f"{name}{REJECTED_SUFFIX}"
        paths, folder = reject(staged, rejected, name), rejected
    result = ExportResult(
        passed=verdict.passed,
        paths=paths,
        quantization=verdict.quantization,
        reason=verdict.reason,
        checks=verdict.checks,
        rows=verdict.rows,
        report_path=folder / f"{name}{REPORT_SUFFIX}",
        rejected_dir=rejected,
        threads=options.threads,
    )
    report = json.dumps(result.report(), indent=2, default=str)
    atomic_write(result.report_path, lambda tmp: (tmp.write_text(report), make_readable(tmp)))
    return result
