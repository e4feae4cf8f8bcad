"""Checkpoints: atomic writes, ``weights_only`` loading, and the model rebuilt from the file alone.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "kws-checkpoint", "version": 1, "kws_version": str,
     "config": to_dict(RunConfig), "labels": [str, ...], "model": state_dict,
     "optimizer": ..., "scheduler": ..., "epoch": int, "step": int, "best_accuracy": float,
     "rng": {...}, "history": [...], "evaluation": {...} (optional), "data_summary": {...}}
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kws import __version__
from kws.config import ConfigError, RunConfig, from_dict
from kws.errors import KWSError
from kws.model import KWSModel

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kws-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(KWSError):
    """A checkpoint is missing, corrupt or not a kws checkpoint."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a kill never leaves a half-written file there.

    Raises:
        KWSError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise KWSError(f"cannot write to {path.parent}: {exc.strerror or exc}") from None
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (see the module docstring) to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kws_version": __version__, **payload}
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raises CheckpointError for anything but a kws checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a kws checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {payload.get('version')}")
    return payload


def run_config(payload: dict[str, Any]) -> RunConfig:
    try:
        return from_dict(RunConfig, payload["config"])
    except (KeyError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"checkpoint has an invalid config: {exc}") from None


def model_from_checkpoint(path: str | Path) -> tuple[KWSModel, list[str], dict[str, Any]]:
    """Rebuild the model (in eval mode) from a checkpoint alone.

    Returns:
        the model, its labels, and the whole checkpoint payload.
    """
    payload = load_checkpoint(path)
    config = run_config(payload)
    model = KWSModel(config.features, config.model)
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the saved config ({exc})") from None
    model.eval()
    return model, list(payload["labels"]), payload
