"""A training run killed right after its first epoch's ``last.pt`` (for the exact ``--resume`` tests)."""

from __future__ import annotations

from pathlib import Path

import pytest


def train_killed_after_epoch_1(config, out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Train ``config`` into ``out`` and stop it (KeyboardInterrupt) as soon as epoch 1's ``last.pt`` is saved."""
    import kws.train.loop as train_module
    import kws.train.run_folder as run_folder

    real_save = run_folder.save_checkpoint

    def save_then_die(path: Path, payload: dict) -> None:
        real_save(path, payload)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(run_folder, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_module.train(config, out)
