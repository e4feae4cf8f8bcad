"""A training run killed right after its first epoch's ``last.pt`` is written (for the exact-resume tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kws.train.loop as train_module
from kws.config import RunConfig
from kws.train import run_folder


def train_killed_after_first_epoch(config: RunConfig, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train ``config`` into ``out`` and stop it with a KeyboardInterrupt as soon as epoch 1's ``last.pt`` is saved,
    as a ^C or a kill would; the checkpoint writer is restored afterwards."""
    real_save = run_folder.save_checkpoint

    def save_then_die(path: Path, payload: dict) -> None:
        real_save(path, payload)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config, out)
    monkeypatch.setattr(run_folder, "save_checkpoint", real_save)
