"""Training end to end on a synthetic fixture: checkpoints, evaluation, exact resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kws.train.loop as train_module
import kws.train.run_folder as run_folder
from kws.cli import main
from kws.model.checkpoint import WEIGHTS_KEY, load_checkpoint, model_from_checkpoint
from support.tiny import tiny_run_config


def test_end_to_end_train_and_evaluate(tiny_checkpoint: Path, test_archive: Path, capsys) -> None:
    run_dir = tiny_checkpoint.parent
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png", "test.json", "test_confusion.png"):
        assert (run_dir / name).is_file(), name
    model, labels, payload = model_from_checkpoint(tiny_checkpoint)
    assert labels == ["_silence_", "_unknown_", "yes", "no", "up", "down"]
    assert payload["evaluation"]["accuracy"] > 0.8, "the synthetic words are easy"
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    out = run_dir / "eval-archive"
    code = main(["evaluate", str(tiny_checkpoint), "--data", str(test_archive), "--split", "all", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert 30 <= report["clips"] <= 36 and report["accuracy"] > 0.7
    assert (out / "report_confusion.png").stat().st_size > 1000
    assert "accuracy" in capsys.readouterr().out


def test_resume_continues_exactly(tmp_path: Path, full_dataset: Path, monkeypatch) -> None:
    config = tiny_run_config((str(full_dataset),), epochs=3)
    straight = train_module.train(config, tmp_path / "straight")

    real_save = run_folder.save_checkpoint
    saves = {"last": 0}

    def save_then_die(path: Path, payload: dict) -> None:
        real_save(path, payload)
        if Path(path).name == "last.pt":
            saves["last"] += 1
            if saves["last"] == 2:
                raise KeyboardInterrupt  # killed right after epoch 2

    monkeypatch.setattr(run_folder, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, tmp_path / "interrupted")
    monkeypatch.setattr(run_folder, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "interrupted" / "last.pt")["epoch"] == 2
    resumed = train_module.train(config, tmp_path / "interrupted", resume=True)

    a, b = load_checkpoint(straight.parent / "last.pt"), load_checkpoint(resumed.parent / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in a[WEIGHTS_KEY]:
        torch.testing.assert_close(a[WEIGHTS_KEY][key], b[WEIGHTS_KEY][key], rtol=0, atol=0)


class TestBadInput:
    def _run(self, capsys, *argv: str) -> tuple[int, str]:
        code = main(list(argv))
        err = capsys.readouterr().err.strip()
        return code, err

    def test_missing_data(self, tmp_path: Path, capsys) -> None:
        code, err = self._run(capsys, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
        assert code == 2 and err.count("\n") == 0 and "does not exist" in err

    def test_unknown_label(self, tmp_path: Path, full_dataset: Path, capsys) -> None:
        code, err = self._run(
            capsys, "train", "--data", str(full_dataset), "--labels", "yes,banana", "--out", str(tmp_path / "run")
        )
        assert code == 2 and "banana" in err and err.count("\n") == 0

    def test_existing_run_is_not_overwritten(self, tiny_checkpoint: Path, full_dataset: Path, capsys) -> None:
        before = tiny_checkpoint.read_bytes()
        code, err = self._run(capsys, "train", "--data", str(full_dataset), "--out", str(tiny_checkpoint.parent))
        assert code == 2 and "--resume" in err
        assert tiny_checkpoint.read_bytes() == before

    @pytest.mark.parametrize("content", [b"", b"garbage", None])
    def test_corrupt_checkpoint(self, tmp_path: Path, full_dataset: Path, capsys, content: bytes | None) -> None:
        ckpt = tmp_path / "model.pt"
        if content is None:
            torch.save({"weights": torch.zeros(3)}, ckpt)  # a valid torch file, but not a kws checkpoint
        else:
            ckpt.write_bytes(content)
        code, err = self._run(capsys, "evaluate", str(ckpt), "--data", str(full_dataset))
        assert code == 2 and err.count("\n") == 0 and "checkpoint" in err

    def test_unwritable_output(self, tmp_path: Path, full_dataset: Path, capsys) -> None:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        code, err = self._run(capsys, "train", "--data", str(full_dataset), "--out", str(blocker / "run"))
        assert code == 2 and err.count("\n") == 0
