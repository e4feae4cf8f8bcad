"""Checkpoints: atomic saves (:func:`kws.io.atomic_write`), ``weights_only`` loading, the model rebuilt from the
file alone.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "kws-checkpoint", "version": 1, "kws_version": str,
     "config": to_dict(RunConfig), "labels": [str, ...], WEIGHTS: state_dict, "train_model": state_dict,
     "optimizer": ..., "scheduler": ..., "scaler": ... (fp16 only), "epoch": int, "step": int,
     "best_accuracy": float, "history": [...], "world_size": int, "evaluation": {...} (optional),
     "data_summary": {...}}

``WEIGHTS`` holds the weights that are validated, evaluated and exported: the exponential moving average of the
trained weights (``TrainConfig.ema_decay`` > 0, the default), else the trained weights; ``train_model`` holds the
trained weights themselves (what ``--resume`` continues). Its key is :data:`WEIGHTS_KEY` (``"eval_model"``);
checkpoints written before it was named so hold the same weights under :data:`LEGACY_WEIGHTS_KEY` (``"model"``,
e.g. those in ``runs/``). Read it with :func:`checkpoint_weights`, which takes either. ``labels`` names the model's
``n_labels`` logits; a model trained ``--fine-unknowns`` has one more classifier row per ``ModelConfig.unknown_words``
(saved in its config, so it rebuilds from the file alone).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from kws import __version__
from kws.config import RunConfig, from_dict
from kws.constants import UNKNOWN_LABEL
from kws.errors import ConfigError, KWSError
from kws.io import LockBusy, atomic_write, file_lock
from kws.model.network import UNKNOWN_OUTPUT, KWSModel

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kws-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_KEY = "eval_model"
"""Payload key of the evaluated and exported weights (see the module docstring)."""
LEGACY_WEIGHTS_KEY = "model"
"""The same weights' key in older checkpoints; still read."""


class CheckpointError(KWSError):
    """A checkpoint is missing, corrupt or not a kws checkpoint."""


@contextlib.contextmanager
def lock_folder(folder: str | Path, what: str = "kws train") -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``flock`` on ``folder/.lock``) for the duration of the block.

    :func:`kws.io.file_lock`: the lock dies with the process (no stale lock after a kill), the lock file keeps the
    holder's pid.

    Raises:
        KWSError: another process holds the lock ("FOLDER is in use by another WHAT (pid N)").
    """
    lock_path = Path(folder) / ".lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(lock_path, wait=False))
        except OSError as exc:
            raise KWSError(f"cannot create {lock_path}: {exc.strerror or exc}") from None
        except LockBusy as exc:
            raise KWSError(f"{folder} is in use by another {what} (pid {exc.holder})") from None
        yield


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (see the module docstring) to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kws_version": __version__, **payload}
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_versioned(
    path: str | Path, fmt: str, version: int, what: str = "checkpoint", error: type[KWSError] = KWSError
) -> dict[str, Any]:
    """Load a ``torch.save``d dict with ``weights_only=True`` and check its ``format`` and ``version`` keys.

    Args:
        what: the file's kind in messages ("checkpoint", "teacher checkpoint").
        error: the error type raised for a missing, unreadable or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{path} is not a readable {what} ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise error(f"{path} is not a kws {what}")
    if payload.get("version") != version:
        raise error(f"{path}: unsupported {what} version {payload.get('version')}")
    return payload


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raises CheckpointError for anything but a kws checkpoint."""
    return load_versioned(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint", CheckpointError)


def run_config(payload: dict[str, Any]) -> RunConfig:
    """The run configuration saved in a checkpoint payload; CheckpointError if it is missing or invalid."""
    try:
        return from_dict(RunConfig, payload["config"])
    except (KeyError, ConfigError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"checkpoint has an invalid config: {_one_line(detail)}") from None


def checkpoint_labels(payload: dict[str, Any], config: RunConfig) -> list[str]:
    """The saved labels, checked against the saved config (one distinct string per model output)."""
    labels = payload.get("labels")
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"checkpoint has no valid labels (got {type(labels).__name__})")
    if len(labels) != config.model.n_labels or len(set(labels)) != len(labels):
        raise CheckpointError(
            f"checkpoint has {len(labels)} labels for a model of {config.model.n_labels} outputs (or duplicates)"
        )
    words = config.model.unknown_words
    if words and (labels[UNKNOWN_OUTPUT] != UNKNOWN_LABEL or set(words) & set(labels)):
        raise CheckpointError(
            f"checkpoint has unknown-word outputs but label {UNKNOWN_OUTPUT} is {labels[UNKNOWN_OUTPUT]!r} "
            f"(not {UNKNOWN_LABEL}) or a word is also a label"
        )
    return list(labels)


def model_from_checkpoint(path: str | Path) -> tuple[KWSModel, list[str], dict[str, Any]]:
    """Rebuild the model (in eval mode) from a checkpoint alone.

    Returns:
        the model, its labels, and the whole checkpoint payload.

    Raises:
        CheckpointError: the file is missing, corrupt, tampered with or not a kws checkpoint.
    """
    payload = load_checkpoint(path)
    config = run_config(payload)
    labels = checkpoint_labels(payload, config)
    try:
        model = KWSModel(config.features, config.model)
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:
        raise CheckpointError(f"{path}: cannot build the model of its config ({_one_line(exc)})") from None
    load_weights(model, checkpoint_weights(payload), f"{path}")
    model.eval()
    return model, labels, payload


def checkpoint_weights(payload: Mapping[str, Any]) -> Any:
    """The evaluated weights of a checkpoint payload (a state dict, unchecked: see :func:`load_weights`), under
    :data:`WEIGHTS_KEY` or, in an older checkpoint, :data:`LEGACY_WEIGHTS_KEY`; None when neither is there."""
    return payload[WEIGHTS_KEY] if WEIGHTS_KEY in payload else payload.get(LEGACY_WEIGHTS_KEY)


def load_weights(model: torch.nn.Module, state: Any, where: str) -> None:
    """``model.load_state_dict(state)``, with a CheckpointError for anything but matching tensors."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{where}: the model weights are missing or not a state dict")
    try:
        model.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: weights do not match the saved config ({_one_line(exc)})") from None


def _one_line(message: object, limit: int = 300) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
