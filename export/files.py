"""The steps :func:`kws.export.pipeline.export_files` and :func:`~kws.export.pipeline.export_checkpoint` share.

Open the checkpoint, check the data folders, prepare the output folder, make the float and int8 models in a
private staging folder, and move them into place.

Nothing is written at the final names until every file exists: the files are made in a private staging folder
inside the output folder (``.NAME.export-PID-XXXXXXXX/``) and moved into place with ``os.replace`` (atomic per
file). A staging folder left by a killed export (its process is gone) is removed, with a log line, the next
time an export writes into that folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from kws.export.clips import CALIBRATION_SPLIT, check_roots
from kws.export.onnx_export import (
    ExportError,
    check_exportable,
    export_clip_model,
    export_stream_model,
    save_model,
    set_metadata,
)
from kws.export.options import ExportOptions, ExportPaths, Source
from kws.export.quantize import (
    ClipCalibrationReader,
    StreamCalibrationReader,
    quantize_dynamic_model,
    quantize_static_model,
)
from kws.format import QUANT_DYNAMIC, QUANT_STATIC, run_settings_props
from kws.io import ensure_writable_dir, pid_alive
from kws.model.checkpoint import model_from_checkpoint, run_config
from kws.train.evaluation_data import resolve_split_mode

logger = logging.getLogger("kws.export.pipeline")  # the name kws export's log lines have always had

STAGING_INFIX = ".export-"
STREAM_TRAINED_RESET_PERIOD_MS = 0.0
"""``kws.reset_period_ms`` of the streaming model of a checkpoint trained on long streams (``kws train
--stream-weight``): its state was trained to be carried, so ``kws listen`` runs it as one lane, never reset."""
"""Staging folders are ``.NAME.export-PID-XXXXXXXX`` (PID: the exporting process)."""
_STAGING = re.compile(r"^\..+\.export-(?P<rest>.+)$")


def open_checkpoint(checkpoint: str | Path) -> Source:
    """Load ``checkpoint`` (CheckpointError if unusable) and check that it can be exported (ExportError)."""
    model, labels, payload = model_from_checkpoint(checkpoint)
    config = run_config(payload)
    check_exportable(config.model)
    return Source(model, labels, payload, config)


def check_data(source: Source, options: ExportOptions, data: bool = True, calibration: bool = True) -> None:
    """The ``--calibration`` and ``--data`` folders are Speech Commands folders and ``split_mode`` agrees with the
    checkpoint's training for the splits read from them, before any slow work (DataError, EvaluationError).

    Args:
        data, calibration: whether the export reads ``options.data`` (its ``split``) and ``options.calibration``
            (their training split).
    """
    calibration_roots = options.calibration if calibration else ()
    data_roots = options.data if data else ()
    check_roots(calibration_roots + data_roots)
    for roots, split in ((data_roots, options.split), (calibration_roots, CALIBRATION_SPLIT)):
        if roots:
            resolve_split_mode(source.payload, options.split_mode, split)  # a contradicting split mode


# ---------------------------------------------------------------------------------------------- staging


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


def prepare_output(out_dir: str | Path) -> Path:
    """``out_dir`` (``~`` expanded), created and writable, without staging folders of killed exports."""
    out_dir = Path(out_dir).expanduser()
    check_output_dir(out_dir)
    clean_stale_staging(out_dir)
    return out_dir


@contextmanager
def staging_folder(out_dir: Path, name: str) -> Iterator[Path]:
    """A private folder ``out_dir/.NAME.export-PID-XXXXXXXX`` to make the files in, removed on leaving."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}{STAGING_INFIX}{os.getpid()}-", dir=out_dir))
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ models


def make_models(
    staging: Path,
    source: Source,
    name: str,
    variants: Sequence[str],
    calibration: np.ndarray | None = None,
    per_channel: bool = False,
) -> tuple[ExportPaths, dict[str, ExportPaths]]:
    """Export the float whole-clip and streaming models into ``staging`` and make each int8 variant.

    Args:
        name: the file stem.
        variants: :data:`~kws.export.quantize.QUANT_DYNAMIC` and/or :data:`~kws.export.quantize.QUANT_STATIC`.
        calibration: float32 ``[n, clip_samples]`` clips calibrating the static variant (needed only for it).
        per_channel: dynamic int8 with one weight scale per LSTM gate row.

    Returns:
        the staged files (``NAME.onnx`` and ``NAME.stream.onnx`` made; the int8 names are left for the variant
        shipped, see :func:`ship`), and each variant's files (``staging/VARIANT/NAME.int8.onnx``, ...).
    """
    staged = ExportPaths.under(staging, name)
    logger.info("exporting the whole-clip model")
    save_model(export_clip_model(source.model, source.labels, source.evaluation), staged.clip)
    logger.info("exporting the streaming model")
    stream = export_stream_model(source.model, source.labels, source.evaluation)
    if source.config.stream.weight > 0:  # trained on long streams with its state carried: one lane, never reset
        set_metadata(stream, run_settings_props({}, reset_period_ms=STREAM_TRAINED_RESET_PERIOD_MS))
    save_model(stream, staged.stream)
    candidates: dict[str, ExportPaths] = {}
    for variant in variants:
        paths = ExportPaths.under(staging / variant, name)
        paths.clip.parent.mkdir()
        logger.info("int8 %s quantization", variant)
        if variant == QUANT_DYNAMIC:
            quantize_dynamic_model(staged.clip, paths.clip_int8, per_channel)
            quantize_dynamic_model(staged.stream, paths.stream_int8, per_channel)
        elif variant == QUANT_STATIC and calibration is not None:
            quantize_static_model(staged.clip, paths.clip_int8, ClipCalibrationReader(calibration))
            reader = StreamCalibrationReader(staged.stream, calibration)
            quantize_static_model(staged.stream, paths.stream_int8, reader)
        else:
            raise ExportError(f"cannot make the int8 variant {variant!r} (static needs calibration clips)")
        candidates[variant] = paths
    return staged, candidates


def ship(variant: ExportPaths, staged: ExportPaths) -> None:
    """Copy one int8 variant's files to the staged int8 names (``NAME.int8.onnx``, ``NAME.stream.int8.onnx``)."""
    shutil.copyfile(variant.clip_int8, staged.clip_int8)
    shutil.copyfile(variant.stream_int8, staged.stream_int8)


def _pairs(staged: ExportPaths, final: ExportPaths) -> list[tuple[Path, Path]]:
    return [(s, f) for s, f in zip(staged.all(), final.all(), strict=True) if s.exists()]


def install(staged: ExportPaths, final: ExportPaths) -> ExportPaths:
    """Move the staged files that exist to their final names (``os.replace``: atomic per file); returns ``final``.

    A final file this export did not make (e.g. the int8 files of an earlier export, now exported with
    ``--quantization none``) is left alone, with a warning.
    """
    pairs = _pairs(staged, final)
    made = {f for _, f in pairs}
    for path in final.all():
        if path not in made and path.exists():
            logger.warning("%s is from an earlier export (this one made no such file)", path)
    for src, dst in pairs:
        os.replace(src, dst)
    return final


def reject(staged: ExportPaths, rejected: Path, name: str) -> ExportPaths:
    """Move the staged files that exist into ``rejected`` (emptied first; the good files are left alone)."""
    if rejected.exists():
        shutil.rmtree(rejected)
    rejected.mkdir()
    for src in staged.existing():
        os.replace(src, rejected / src.name)
    return ExportPaths.under(rejected, name)
