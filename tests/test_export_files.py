"""export_files: the four ONNX files from a checkpoint, unchecked (what bench, scripts and tests use).

The same files, byte for byte, as the checked ``kws export`` installs; made in a staging folder and moved
into place; options checked before anything is read or written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from kws.export.onnx_export import ExportError, read_metadata  # noqa: E402
from kws.export.pipeline import ExportOptions, ExportPaths, export_checkpoint, export_files  # noqa: E402
from kws.format import (  # noqa: E402
    META_QUANTIZATION,  # noqa: E402
    QUANT_DYNAMIC,
    QUANT_STATIC,
)
from support.export_models import make_model, write_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, config = make_model(hidden=8, layers=1)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt", model, config)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_the_four_files_dynamic_by_default(checkpoint, tmp_path) -> None:
    paths = export_files(checkpoint, tmp_path / "out")
    assert paths == ExportPaths.under(tmp_path / "out", "kws")
    assert names(tmp_path / "out") == ["kws.int8.onnx", "kws.onnx", "kws.stream.int8.onnx", "kws.stream.onnx"]
    quantization = [read_metadata(p)[META_QUANTIZATION] for p in paths.all()]
    assert quantization == ["none", "none", QUANT_DYNAMIC, QUANT_DYNAMIC]


def test_the_same_bytes_as_the_checked_export(checkpoint, tmp_path) -> None:
    files = export_files(checkpoint, tmp_path / "files", ExportOptions(name="m"))
    checked = export_checkpoint(checkpoint, tmp_path / "checked", ExportOptions(name="m", timing=False))
    assert checked.quantization == QUANT_DYNAMIC  # (this tiny model's int8 file fails the size check: rejected)
    for mine, theirs in zip(files.all(), checked.paths.all(), strict=True):
        assert mine.name == theirs.name and mine.read_bytes() == theirs.read_bytes(), mine.name


def test_float_only_and_a_name(checkpoint, tmp_path) -> None:
    paths = export_files(checkpoint, tmp_path, ExportOptions(name="f", quantization="none"))
    assert names(tmp_path) == ["f.onnx", "f.stream.onnx"] and paths.existing() == [paths.clip, paths.stream]


def test_static_calibrated_on_the_training_clips(checkpoint, full_dataset, tmp_path) -> None:
    options = ExportOptions(quantization="static", calibration=full_dataset, calibration_clips=8)
    paths = export_files(checkpoint, tmp_path, options)
    assert options.calibration == (full_dataset,)
    assert {read_metadata(p)[META_QUANTIZATION] for p in (paths.clip_int8, paths.stream_int8)} == {QUANT_STATIC}


def test_auto_and_both_make_dynamic_there_is_nothing_to_choose_by(checkpoint, full_dataset, tmp_path) -> None:
    for quantization in ("auto", "both"):
        options = ExportOptions(quantization=quantization, calibration=[full_dataset])
        paths = export_files(checkpoint, tmp_path / quantization, options)
        assert read_metadata(paths.stream_int8)[META_QUANTIZATION] == QUANT_DYNAMIC


def test_no_staging_folder_is_left_and_a_failure_installs_nothing(checkpoint, tmp_path, monkeypatch) -> None:
    from kws.export import pipeline

    out = tmp_path / "out"
    export_files(checkpoint, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pipeline, "ship", fail)  # after the float and int8 models are made in the staging folder
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_files(checkpoint, out, ExportOptions(per_channel=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder, the old files intact


@pytest.mark.parametrize(
    "options,message",
    [
        ({"quantization": "int4"}, "unknown quantization"),
        ({"quantization": "static"}, "--calibration"),
        ({"quantization": "both"}, "--calibration"),
        ({"threads": 0}, "threads >= 1"),
        ({"calibration_clips": 0}, "calibration clips >= 1"),
        ({"eval_clips": -1}, "eval clips >= 0"),
        ({"name": ".hidden"}, "invalid file name stem"),
        ({"name": "a/b"}, "invalid file name stem"),
        ({"name": ""}, "invalid file name stem"),
    ],
)
def test_bad_options_are_refused_when_made(options, message) -> None:
    with pytest.raises(ExportError, match=message):
        ExportOptions(**options)


def test_inputs_are_checked_before_the_output_folder_is_made(checkpoint, tmp_path) -> None:
    from kws.data.layout import DataError

    options = ExportOptions(quantization="static", calibration=tmp_path / "nodata")
    with pytest.raises(DataError, match="does not exist"):
        export_files(checkpoint, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()
