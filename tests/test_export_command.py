"""The kws export command: one-line errors before any work, the checked export (installed, or rejected with
its report), and the choice of the int8 variant to ship.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from kws.cli import main  # noqa: E402
from kws.export import checks  # noqa: E402
from kws.export.choice import VariantResult, choose_quantization, sign_test  # noqa: E402
from kws.export.onnx_export import ExportError, export_stream_model, read_metadata  # noqa: E402
from kws.format import META_QUANTIZATION, QUANT_DYNAMIC, QUANT_STATIC  # noqa: E402
from support.export_models import LABELS, make_model, write_checkpoint  # noqa: E402


def run_cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------------------------- errors


class TestErrors:
    def assert_one_line_error(self, code: int, err: str, *fragments: str) -> None:
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kws export: error:"), err
        assert "Traceback" not in err
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])

    def test_missing_checkpoint(self, tmp_path, capsys):
        code, _, err = run_cli(capsys, tmp_path / "nope.pt", "-o", tmp_path / "out")
        self.assert_one_line_error(code, err, "nope.pt", "does not exist")
        assert not (tmp_path / "out").exists()

    def test_corrupt_checkpoint(self, tmp_path, capsys):
        path = tmp_path / "corrupt.pt"
        path.write_bytes(b"\x00garbage" * 100)
        code, _, err = run_cli(capsys, path, "-o", tmp_path / "out")
        self.assert_one_line_error(code, err, "corrupt.pt", "not a readable checkpoint")

    def test_not_a_kws_checkpoint(self, tmp_path, capsys):
        path = tmp_path / "other.pt"
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
        code, _, err = run_cli(capsys, path, "-o", tmp_path / "out")
        self.assert_one_line_error(code, err, "not a kws checkpoint")

    def test_projection_cannot_be_exported(self, tmp_path, capsys):
        model, config = make_model(hidden=16, proj=8)
        path = write_checkpoint(tmp_path / "proj.pt", model, config)
        code, _, err = run_cli(capsys, path, "-o", tmp_path / "out")
        self.assert_one_line_error(code, err, "proj_size=8")
        with pytest.raises(ExportError):
            export_stream_model(model, LABELS)

    @pytest.fixture
    def checkpoint(self, tmp_path):
        model, config = make_model(hidden=8, layers=1)
        return write_checkpoint(tmp_path / "ok.pt", model, config)

    def test_unwritable_output_folder(self, tmp_path, capsys, checkpoint):
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        code, _, err = run_cli(capsys, checkpoint, "-o", blocker / "out")
        self.assert_one_line_error(code, err, "cannot write to output folder")
        code, _, err = run_cli(capsys, checkpoint, "-o", blocker)
        self.assert_one_line_error(code, err, "not a folder")

    def test_missing_calibration_data(self, tmp_path, capsys, checkpoint):
        missing = tmp_path / "nodata"
        code, _, err = run_cli(capsys, checkpoint, "-o", tmp_path / "out", "--calibration", missing)
        self.assert_one_line_error(code, err, "nodata", "does not exist")
        assert not (tmp_path / "out").exists()

    def test_calibration_folder_that_is_not_speech_commands(self, tmp_path, capsys, checkpoint):
        (tmp_path / "junk" / "sub").mkdir(parents=True)
        (tmp_path / "junk" / "sub" / "readme.txt").write_text("hello")
        code, _, err = run_cli(capsys, checkpoint, "-o", tmp_path / "out", "--data", tmp_path / "junk")
        self.assert_one_line_error(code, err, "not a Speech Commands folder")

    def test_static_without_calibration(self, tmp_path, capsys, checkpoint):
        code, _, err = run_cli(capsys, checkpoint, "-o", tmp_path / "out", "--quantization", "static")
        self.assert_one_line_error(code, err, "--calibration")


# ------------------------------------------------------------------------------------ kws export (CLI)


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory) -> Path:
    """A model large enough for its int8 file to meet the size check (the front end's share is fixed)."""
    model, config = make_model(hidden=128, layers=2, seed=3)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, config)


@pytest.mark.slow
class TestCommand:
    def test_export_with_data_passes_and_installs_everything(self, cli_checkpoint, full_dataset, tmp_path,
                                                             capsys):  # fmt: skip
        out = tmp_path / "models"
        data = ("--calibration", full_dataset, "--data", full_dataset, "--split", "all")
        code, printed, _ = run_cli(capsys, cli_checkpoint, "-o", out, *data, "--calibration-clips", "24")
        assert code == 0, printed
        names = sorted(p.name for p in out.iterdir())
        onnx_files = ["kws.int8.onnx", "kws.onnx", "kws.stream.int8.onnx", "kws.stream.onnx"]
        assert names == ["kws.export.json", *onnx_files]
        for text in ("fp32 parity", "streaming = whole clip", "ReferenceEvaluator", "ONNX int8 dynamic",
                     "ONNX int8 static-qdq", "int8 shipped:"):  # fmt: skip
            assert text in printed, text
        report = json.loads((out / "kws.export.json").read_text())
        assert report["passed"] and report["quantization"] in (QUANT_DYNAMIC, QUANT_STATIC)
        assert read_metadata(out / "kws.stream.int8.onnx")[META_QUANTIZATION] == report["quantization"]
        rows = {r["name"]: r for r in report["models"]}
        assert rows["ONNX fp32"]["accuracy"] == pytest.approx(rows["PyTorch"]["accuracy"], abs=1e-9)

    def test_failed_check_exits_1_keeps_the_report_and_the_good_files(self, cli_checkpoint, tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
        out = tmp_path / "models"
        code, _, _ = run_cli(capsys, cli_checkpoint, "-o", out, "--no-timing")
        assert code == 0
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".onnx"}
        monkeypatch.setattr(checks, "PARITY_TOLERANCE", -1.0)  # now the streaming checks cannot pass
        code, printed, _ = run_cli(capsys, cli_checkpoint, "-o", out, "--no-timing")
        assert code == 1
        assert "FAIL" in printed and "nothing installed" in printed
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".onnx"} == before
        rejected = out / "kws.rejected"
        report = json.loads((rejected / "kws.export.json").read_text())
        assert not report["passed"] and any(c["status"] == "FAIL" for c in report["checks"])
        assert (rejected / "kws.stream.int8.onnx").is_file()
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left


# --------------------------------------------------------------------------------------- the int8 choice


def variant(name: str, hits: list[bool], us: float = 200.0, passed: bool = True) -> VariantResult:
    check = checks.Check("a check", f"{name}/kws.int8.onnx", "x", "y", passed)
    return VariantResult(name, checks.ModelRow(name, "kws.int8.onnx"), (check,), np.array(hits), "accuracy", us)


class TestChoice:
    def test_choice_is_dynamic_unless_static_is_measurably_better(self):
        base = [True] * 80 + [False] * 20
        dyn = variant(QUANT_DYNAMIC, base)
        one_more = variant(QUANT_STATIC, [True] * 81 + [False] * 19)  # +1 clip: not significant
        many_more = variant(QUANT_STATIC, [True] * 95 + [False] * 5)  # +15 clips, all discordant the same way
        faster = variant(QUANT_STATIC, base, us=150.0)
        assert choose_quantization([dyn, variant(QUANT_STATIC, base, us=195.0)])[0] == QUANT_DYNAMIC
        assert choose_quantization([dyn, one_more])[0] == QUANT_DYNAMIC
        assert choose_quantization([dyn, many_more])[0] == QUANT_STATIC
        assert choose_quantization([dyn, faster])[0] == QUANT_STATIC
        failing = variant(QUANT_STATIC, [True] * 95 + [False] * 5, passed=False)
        assert choose_quantization([dyn, failing])[0] == QUANT_DYNAMIC
        assert choose_quantization([failing, dyn])[0] == QUANT_DYNAMIC  # by name, not by position
        assert choose_quantization([many_more])[0] == QUANT_STATIC
        assert not failing.passed and choose_quantization([failing]) == (
            QUANT_STATIC,
            "the only variant made (it fails a check)",
        )

    def test_sign_test(self):
        assert sign_test(0, 0) == 1.0 and sign_test(1, 0) == 1.0
        assert sign_test(10, 0) == pytest.approx(2 / 1024)
        assert sign_test(6, 4) == sign_test(4, 6) > 0.5
