"""What ``kws bench`` measures: the four ONNX files (given, or exported from the checkpoint), checked to be
models of the checkpoint's labels, and whether the test speakers are disjoint from the training speakers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kws.bench import BenchError
from kws.bench.options import BenchOptions
from kws.bench.report import ModelFileInfo
from kws.data.layout import DataError
from kws.format import META_LABELS, META_QUANTIZATION
from kws.model.checkpoint import run_config

logger = logging.getLogger(__name__)

FILE_SUFFIXES = {
    "clip": ".onnx",
    "stream": ".stream.onnx",
    "clip_int8": ".int8.onnx",
    "stream_int8": ".stream.int8.onnx",
}
"""The four ONNX files after their stem, by report key (in the report's order)."""
EXPORT_QUANTIZATION = "dynamic"
"""How the bench quantizes a checkpoint it exports itself (no calibration data needed)."""


@dataclass(frozen=True)
class ModelFiles:
    """The four ONNX files benchmarked, and where they came from (``notes``: warnings for the report)."""

    clip: Path
    stream: Path
    clip_int8: Path
    stream_int8: Path
    origin: str
    notes: tuple[str, ...] = ()

    def all(self) -> dict[str, Path]:
        """The files by report key (:data:`FILE_SUFFIXES`' keys)."""
        return {key: getattr(self, key) for key in FILE_SUFFIXES}


def file_names(name: str) -> dict[str, str]:
    """The four file names of stem ``name``, by report key."""
    return {key: f"{name}{suffix}" for key, suffix in FILE_SUFFIXES.items()}


def resolve_models(options: BenchOptions) -> ModelFiles:
    """The given ONNX files (``--models DIR``: ``NAME.onnx``, ``NAME.stream.onnx``, ``NAME.int8.onnx``,
    ``NAME.stream.int8.onnx``), or the checkpoint exported into ``OUT/models`` (dynamic int8; the bench
    measures the files itself, so no export check runs).

    Raises:
        BenchError: a file is missing.
        KWSError: the checkpoint cannot be exported.
    """
    names = file_names(options.name)
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
    from kws.export.options import ExportOptions
    from kws.export.pipeline import export_files

    out = Path(options.out) / "models"
    logger.info("exporting %s to %s (no --models given)", options.checkpoint, out)
    export = ExportOptions(name=options.name, quantization=EXPORT_QUANTIZATION)
    paths = export_files(options.checkpoint, out, export)
    return ModelFiles(
        paths.clip,
        paths.stream,
        paths.clip_int8,
        paths.stream_int8,
        origin=f"exported by kws bench into {out} (int8: {EXPORT_QUANTIZATION})",
    )


def check_models(files: ModelFiles, labels: list[str]) -> dict[str, ModelFileInfo]:
    """Size and quantization of every file, by report key; each must have the checkpoint's labels.

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
        info[key] = ModelFileInfo(
            path=str(path), size_bytes=path.stat().st_size, quantization=meta.get(META_QUANTIZATION, "unknown")
        )
    return info


def training_overlap(payload: dict[str, Any], mode: str, speakers: set[str]) -> int | None:
    """Test speakers that are also in the training split of the checkpoint's own training roots, split with
    ``mode`` (None when those roots are not on this machine)."""
    from kws.train.evaluation_data import evaluation_corpus

    roots = run_config(payload).data.roots
    if not roots or not all(Path(r).expanduser().is_dir() for r in roots):
        return None
    try:
        corpus = evaluation_corpus(payload, roots, "train", mode).corpus
    except DataError:
        return None
    return len(speakers & {c.speaker for c in corpus.clips if c.split == "train"})
