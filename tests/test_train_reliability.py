"""Issue 12 for `kws train`: nothing silently wrong, nothing lost.

Repeated list flags accumulate; an empty validation split, a bad option or a tampered checkpoint is a one-line
error; --resume refuses flags that contradict the saved run and works from any directory; a run folder is
locked; stale temporaries are cleaned up; outputs get normal permissions.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import kws.train.cli as train_cli
import kws.train.loop as train_module
from kws.cli import main
from kws.config import FeatureConfig, ModelConfig, TrainConfig, from_dict
from kws.errors import ConfigError, KWSError
from kws.io import atomic_write, clean_stale_temporaries, current_umask
from kws.model.checkpoint import (
    WEIGHTS_KEY,
    CheckpointError,
    load_checkpoint,
    lock_folder,
    model_from_checkpoint,
    run_config,
    save_checkpoint,
)
from support.tiny import tiny_run_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()  # as kws/cli.py builds it
    train_cli.add_arguments(parser)
    return parser


def _quick(config, **train_fields):
    return replace(config, train=replace(config.train, max_steps=1, **train_fields))


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path) -> Path:
    """A one-step run trained with a *relative* --data path (the working directory is the data's parent)."""
    out = tmp_path_factory.mktemp("relative") / "run"
    config = _quick(tiny_run_config((full_dataset.name,), epochs=2))
    old = os.getcwd()
    os.chdir(full_dataset.parent)
    try:
        train_module.train(config, out)
    finally:
        os.chdir(old)
    return out


# 1. repeated flags


def test_repeated_list_flags_accumulate() -> None:
    parser = _parser()
    args = parser.parse_args(
        ["--data", "A", "--data", "B", "C", "--extra-train", "E1", "--extra-train", "E2", "--negatives", "N1"]
        + ["--negatives", "N2", "N3"]
    )
    assert args.data == ["A", "B", "C"]
    assert args.extra_train == ["E1", "E2"]
    assert args.negatives == ["N1", "N2", "N3"]
    again = parser.parse_args(["--data", "X"])  # the default lists were not changed by the first parse
    assert again.data == ["X"] and again.extra_train == [] and again.negatives == []


# 3. empty validation split


def test_empty_validation_split_is_refused(tmp_path: Path, full_dataset: Path) -> None:
    config = _quick(tiny_run_config((str(full_dataset),)))
    config = replace(config, data=replace(config.data, validation_percent=0))
    with pytest.raises(KWSError, match=r"validation split is empty \(0 clips, 0 speakers.*--validation-percent"):
        train_module.train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "best.pt").exists()


def test_empty_validation_split_cli(tmp_path: Path, full_dataset: Path, capsys) -> None:
    err = _one_line_error(
        capsys,
        ["train", "--data", str(full_dataset), "--labels", "yes,no", "--validation-percent", "0"]
        + ["--max-steps", "1", "--out", str(tmp_path / "run")],
    )
    assert "validation split is empty" in err


# 4. resume: absolute paths, conflicting flags


def test_saved_data_paths_are_absolute(relative_run: Path, full_dataset: Path) -> None:
    saved = run_config(load_checkpoint(relative_run / "last.pt"))
    assert saved.data.roots == (str(full_dataset.resolve()),)
    assert Path(saved.data.roots[0]).is_absolute()


def test_config_from_args_resolves_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(["--data", "a", "--extra-train", "b", "--negatives", "c"])
    data = train_cli.config_from_args(args).data
    assert data.roots == (str(tmp_path.resolve() / "a"),)
    assert data.extra_train == (str(tmp_path.resolve() / "b"),)
    assert data.negatives == (str(tmp_path.resolve() / "c"),)


def test_resume_from_another_directory(relative_run: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(relative_run, run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    train_module.train(None, run, resume=True)  # type: ignore[arg-type]  # the saved config is used
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_resume_refuses_conflicting_flags(relative_run: Path, capsys) -> None:
    before = (relative_run / "last.pt").read_bytes()
    err = _one_line_error(
        capsys, ["train", "--resume", "--out", str(relative_run), "--hidden-size", "64", "--lr", "0.5"]
    )
    assert "--hidden-size 64 (saved: 32)" in err and "--lr 0.5 (saved: 0.01)" in err
    assert (relative_run / "last.pt").read_bytes() == before


def test_resume_conflict_with_an_explicit_default(relative_run: Path) -> None:
    saved = run_config(load_checkpoint(relative_run / "last.pt"))
    args = _parser().parse_args(["--resume", "--out", str(relative_run), "--epochs", "60"])  # 60 is the default
    assert train_cli.resume_conflicts(args, saved) == ["--epochs 60 (saved: 2)"]


def test_resume_accepts_equal_values_and_free_flags(
    relative_run: Path, full_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    saved = run_config(load_checkpoint(relative_run / "last.pt"))
    monkeypatch.chdir(tmp_path)
    argv = ["--resume", "--out", str(relative_run), "--threads", "1", "--device", "cpu"]
    argv += ["--data", os.path.relpath(full_dataset, tmp_path), "--hidden-size", "32", "--labels", "yes,no,up,down"]
    assert train_cli.resume_conflicts(_parser().parse_args(argv), saved) == []


def test_resume_conflicts_of_a_namespace_built_elsewhere(relative_run: Path) -> None:
    saved = run_config(load_checkpoint(relative_run / "last.pt"))
    args = _parser().parse_args(["--resume", "--dropout", "0.2"])
    delattr(args, train_cli.PASSED_FLAGS)  # no record of what was given: compared with the defaults
    assert train_cli.resume_conflicts(args, saved) == ["--dropout 0.2 (saved: 0.0)"]


# 5. run-folder lock


def test_second_train_into_a_locked_folder_fails(tmp_path: Path, full_dataset: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    config = _quick(tiny_run_config((str(full_dataset),)))
    with lock_folder(run):
        with pytest.raises(KWSError, match=rf"is in use by another kws train \(pid {os.getpid()}\)"):
            train_module.train(config, run)
        err = _one_line_error(capsys, ["train", "--data", str(full_dataset), "--out", str(run)])
        assert "in use by another kws train" in err
    assert not (run / "last.pt").exists()


def test_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    holder = (
        "import sys, time\nfrom kws.model.checkpoint import lock_folder\n"
        "with lock_folder(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(KWSError, match=rf"in use by another kws train \(pid {proc.pid}\)"):
            with lock_folder(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    with lock_folder(tmp_path):  # a kill -9 leaves no stale lock
        pass


def test_lock_is_released_after_a_run(relative_run: Path) -> None:
    with lock_folder(relative_run):
        pass


# 7. stale temporaries


def _stale(folder: Path, name: str, size: int) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)  # exactly as atomic_write names them
    os.write(fd, b"x" * size)
    os.close(fd)
    return Path(tmp)


def test_clean_stale_temporaries(tmp_path: Path, caplog) -> None:
    last, best, other = _stale(tmp_path, "last.pt", 100), _stale(tmp_path, "best.pt", 20), _stale(tmp_path, "x", 5)
    keep = [tmp_path / name for name in ("notes.tmp", ".last.pt.tmp", ".last.pt.ABCDEFGH.tmp", "last.pt")]
    for path in keep:
        path.write_text("mine")
    (tmp_path / ".best.pt.abcdefgh.tmp").mkdir()  # not a regular file
    assert clean_stale_temporaries(tmp_path) == []  # written just now: perhaps by a live process
    with caplog.at_level(logging.INFO, logger="kws"):
        removed = clean_stale_temporaries(tmp_path, names=["last.pt", "best.pt"], min_age_s=0)
    assert sorted(removed) == sorted([(last, 100), (best, 20)])
    assert not last.exists() and not best.exists() and other.exists()
    assert all(path.exists() for path in keep) and (tmp_path / ".best.pt.abcdefgh.tmp").is_dir()
    assert "removed 2 stale temporary file(s)" in caplog.text and "(120 bytes)" in caplog.text
    old = os.path.getmtime(other) - 3600
    os.utime(other, (old, old))
    assert clean_stale_temporaries(tmp_path) == [(other, 5)]


def test_train_removes_stale_temporaries(tmp_path: Path, full_dataset: Path, monkeypatch, caplog) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stale = [_stale(run, "last.pt", 1000), _stale(run, "best.pt", 24)]

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(train_module, "prepare", stop)
    with caplog.at_level(logging.INFO, logger="kws"), pytest.raises(Stop):
        train_module.train(tiny_run_config((str(full_dataset),)), run)
    assert not any(path.exists() for path in stale)
    assert "removed 2 stale temporary file(s)" in caplog.text and "(1024 bytes)" in caplog.text


# 9. bad options: one line, not a traceback


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--window-ms", "1000", "--hop-ms", "1000"], "window"),
        (["--hop-ms", "0.01"], "hop_ms"),
        (["--threads", "-1"], "threads"),
        (["--seed", "-1"], "seed"),
        (["--hidden-size", "100000"], "hidden_size"),
        (["--layers", "0"], "num_layers"),
        (["--epochs", "0"], "epochs"),
        (["--batch-size", "0"], "batch_size"),
        (["--lr", "0"], "lr"),
        (["--lr", "inf"], "lr"),
        (["--max-minutes", "-1"], "max_minutes"),
        (["--max-steps", "-1"], "max_steps"),
        (["--n-mfcc", "1000"], "mel bands"),
        (["--proj-size", "16"], "export"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, full_dataset: Path, capsys, flags: list[str], expected: str) -> None:
    run = tmp_path / "run"
    argv = ["train", "--data", str(full_dataset), "--labels", "yes,no", "--out", str(run)]
    err = _one_line_error(capsys, argv + ["--epochs", "1", "--max-steps", "1", *flags])
    assert expected in err
    assert not (run / "last.pt").exists()


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="no frame"):
        FeatureConfig(window_ms=1000, hop_ms=1000)
    assert FeatureConfig(window_ms=512, hop_ms=512).num_frames(16_000) == 1  # the longest window whose FFT fits a clip
    with pytest.raises(ConfigError, match="no frame"):
        FeatureConfig(window_ms=513)
    for bad in ({"seed": -1}, {"max_minutes": -1.0}, {"max_steps": -1}, {"lr": float("nan")}, {"ema_decay": 1.0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError):
        ModelConfig(hidden_size=100_000)


def test_from_dict_checks_types() -> None:
    for data in ({"hidden_size": "32"}, {"hidden_size": 32.5}, {"dropout": "0.1"}, {"pooling": 1}, {"dropout": True}):
        with pytest.raises(ConfigError, match="expected"):
            from_dict(ModelConfig, data)
    assert from_dict(ModelConfig, {"dropout": 0}).dropout == 0  # an int for a float field is fine


# 10. permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_get_normal_permissions(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("x"))
        save_checkpoint(tmp_path / "b.pt", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == mode


def test_run_outputs_are_readable(relative_run: Path) -> None:
    umask = current_umask()
    for name in ("best.pt", "last.pt", "metrics.jsonl", "curves.png"):
        assert stat.S_IMODE((relative_run / name).stat().st_mode) == 0o666 & ~umask, name


# tampered checkpoints


def _tamper(payload: dict, what: str) -> dict:
    p = dict(payload)
    config = {k: dict(v) for k, v in p["config"].items()}
    if what == "config missing":
        del p["config"]
    elif what == "config not a dict":
        p["config"] = "standard"
    elif what == "hidden_size a string":
        config["model"]["hidden_size"] = "32"
        p["config"] = config
    elif what == "window_ms a list":
        config["features"]["window_ms"] = [30]
        p["config"] = config
    elif what == "roots a number":
        config["data"]["roots"] = 5
        p["config"] = config
    elif what == "unknown config field":
        config["train"]["speed"] = 1
        p["config"] = config
    elif what == "huge hidden_size":
        config["model"]["hidden_size"] = 10**6
        p["config"] = config
    elif what == "labels missing":
        del p["labels"]
    elif what == "labels a number":
        p["labels"] = 6
    elif what == "labels too few":
        p["labels"] = p["labels"][:-1]
    elif what == "weights a string":
        p[WEIGHTS_KEY] = "weights"
    elif what == "weights missing":
        del p[WEIGHTS_KEY]
    elif what == "weights with int keys":
        p[WEIGHTS_KEY] = {i: v for i, v in enumerate(p[WEIGHTS_KEY].values())}
    elif what == "weights of another shape":
        p[WEIGHTS_KEY] = {k: torch.zeros(3) for k in p[WEIGHTS_KEY]}
    elif what == "weights not tensors":
        p[WEIGHTS_KEY] = {k: "x" for k in p[WEIGHTS_KEY]}
    elif what == "version":
        p["version"] = "1"
    else:
        raise AssertionError(what)
    return p


TAMPERINGS = [
    "config missing",
    "config not a dict",
    "hidden_size a string",
    "window_ms a list",
    "roots a number",
    "unknown config field",
    "huge hidden_size",
    "labels missing",
    "labels a number",
    "labels too few",
    "weights a string",
    "weights missing",
    "weights with int keys",
    "weights of another shape",
    "weights not tensors",
    "version",
]


def _assert_checkpoint_error(path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        model_from_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("what", TAMPERINGS)
def test_tampered_checkpoint_fields(relative_run: Path, tmp_path: Path, what: str) -> None:
    payload = torch.load(relative_run / "best.pt", map_location="cpu", weights_only=True)
    path = tmp_path / "tampered.pt"
    torch.save(_tamper(payload, what), path)
    _assert_checkpoint_error(path)


def test_truncated_and_random_checkpoints(relative_run: Path, tmp_path: Path) -> None:
    data = (relative_run / "best.pt").read_bytes()
    rng = np.random.default_rng(0)
    broken = [data[:n] for n in (0, 1, 4, 100, 1000, len(data) // 2, len(data) - 1)]
    broken += [rng.bytes(n) for n in (1, 100, 10_000)]
    broken += [b"PK\x03\x04" + rng.bytes(5000), b"\x80\x02" + rng.bytes(200)]
    for i, blob in enumerate(broken):
        path = tmp_path / f"bad{i}.pt"
        path.write_bytes(blob)
        _assert_checkpoint_error(path)
    for trial in range(5):  # flipped bytes: a CheckpointError, or a valid (if different) checkpoint
        flipped = bytearray(data)
        for i in rng.choice(len(data), 20, replace=False):
            flipped[i] ^= 0xFF
        path = tmp_path / f"flipped{trial}.pt"
        path.write_bytes(bytes(flipped))
        try:
            model_from_checkpoint(path)
        except CheckpointError as exc:
            assert "\n" not in str(exc)


def test_tampered_checkpoint_cli(relative_run: Path, tmp_path: Path, full_dataset: Path, capsys) -> None:
    payload = torch.load(relative_run / "best.pt", map_location="cpu", weights_only=True)
    path = tmp_path / "tampered.pt"
    torch.save(_tamper(payload, "weights of another shape"), path)
    err = _one_line_error(capsys, ["evaluate", str(path), "--data", str(full_dataset)])
    assert "weights do not match" in err


@pytest.mark.parametrize("what", ["epoch", "optimizer", "weights", "labels"])
def test_tampered_last_checkpoint_on_resume(relative_run: Path, tmp_path: Path, what: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(relative_run, run)
    payload = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    if what == "epoch":
        payload["epoch"] = "1"
    elif what == "optimizer":
        payload["optimizer"] = {"state": {}, "param_groups": "x"}
    elif what == "weights":
        payload["train_model"] = "weights"
    else:
        payload["labels"] = ["a"]
    torch.save(payload, run / "last.pt")
    with pytest.raises(CheckpointError):
        train_module.train(None, run, resume=True)  # type: ignore[arg-type]
