"""Untrained models for the export tests, their checkpoints and their exports (``export_files``).

The models are made here, untrained; their front-end normalisation is fitted on synthetic words so the LSTM
sees features of the usual scale. ``sharpness`` scales the LSTM and classifier weights, so an untrained model's
logits are as large and as sensitive to the features as a trained model's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from support.synthetic import KEYWORDS, synth_clip

LABELS = ["_silence_", "_unknown_", "yes", "no"]
EVALUATION = {"test": {"accuracy": 0.75, "clips": 40}}
"""The evaluation written into the checkpoints (and so into the models' metadata)."""
NORMALISATION_SEED = 100
"""Seed offset of the synthetic words the normalisation is fitted on."""


def word_clips(count: int, seed: int = 0) -> np.ndarray:
    """float32 ``[count, 16000]``: synthetic 1 s "words" (tone patterns in noise) and noise-only clips."""
    rng = np.random.default_rng(seed)
    words = [*KEYWORDS, "bed", "cat", None]
    return np.stack([synth_clip(words[i % len(words)], rng) for i in range(count)]).astype(np.float32)


def make_model(
    hidden: int = 16,
    layers: int = 2,
    pooling: str = "mean",
    proj: int = 0,
    seed: int = 0,
    sharpness: float = 1.0,
) -> tuple[Any, Any]:
    """An untrained :class:`kws.model.network.KWSModel` (eval mode) and its :class:`kws.config.RunConfig`."""
    import torch

    from kws.config import ModelConfig, RunConfig
    from kws.model.network import KWSModel

    torch.manual_seed(seed)
    model_config = ModelConfig(
        hidden_size=hidden, num_layers=layers, n_labels=len(LABELS), pooling=pooling, proj_size=proj
    )
    config = RunConfig(model=model_config)
    model = KWSModel(config.features, config.model)
    model.frontend.fit_normalization(torch.from_numpy(word_clips(16, seed=seed + NORMALISATION_SEED)))
    if sharpness != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.startswith("frontend"):
                    p.mul_(sharpness)
    return model.eval(), config


def write_checkpoint(path: Path, model: Any, config: Any, evaluation: dict | None = EVALUATION) -> Path:
    """A kws checkpoint of ``model`` (labels :data:`LABELS`; ``evaluation`` recorded unless None)."""
    from kws.config import to_dict
    from kws.model.checkpoint import save_checkpoint

    payload = {"config": to_dict(config), "labels": LABELS, "model": model.state_dict()}
    if evaluation is not None:
        payload["evaluation"] = evaluation
    save_checkpoint(path, payload)
    return path


def export_model(
    model: Any, config: Any, out: Path, evaluation: dict | None = EVALUATION, quantization: str = "dynamic"
) -> dict[str, Path]:
    """Export ``model`` with :func:`kws.export.pipeline.export_files` into ``out`` (its checkpoint next to it).

    Returns:
        the files by role: ``clip``, ``stream`` and (unless ``quantization="none"``) ``clip_int8``,
        ``stream_int8``.
    """
    from kws.export.pipeline import ExportOptions, export_files

    checkpoint = write_checkpoint(out / "model.pt", model, config, evaluation)
    paths = export_files(checkpoint, out, ExportOptions(quantization=quantization))
    return {role: path for role, path in dataclasses.asdict(paths).items() if path.exists()}


def torch_scores(model: Any, clips: np.ndarray) -> np.ndarray:
    """PyTorch's class probabilities ``[n, n_labels]`` for float32 clips ``[n, samples]``."""
    import torch

    with torch.no_grad():
        return torch.softmax(model.classify(torch.from_numpy(clips)), -1).numpy()
