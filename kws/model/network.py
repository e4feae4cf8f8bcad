"""Stacked-LSTM keyword classifier: one set of weights for whole clips and for frame-by-frame streaming."""

from __future__ import annotations

import torch
from torch import nn

from kws.config import FeatureConfig, ModelConfig
from kws.format import POOL_MEAN
from kws.model.features import MFCCFrontend

State = tuple[torch.Tensor, torch.Tensor]
"""LSTM state ``(h, c)``: h ``[layers, batch, output_size]``, c ``[layers, batch, hidden_size]``."""


class KWSModel(nn.Module):
    """MFCC front end + stacked LSTM + linear classifier applied to every frame's output.

    ``forward(features, state)`` is causal: the logits of frame ``t`` depend only on frames ``<= t``, and
    running the frames in pieces while carrying ``state`` gives exactly the whole-sequence result. A clip's
    class scores pool its frames' logits (:meth:`pool`): their mean (``ModelConfig.pooling="mean"``, the
    default) or the last frame's (``"last"``); :meth:`classify` does both steps from audio.
    """

    def __init__(self, features: FeatureConfig, config: ModelConfig) -> None:
        super().__init__()
        if config.n_inputs != features.n_mfcc:
            raise ValueError(f"model n_inputs={config.n_inputs} but the front end gives {features.n_mfcc}")
        self.feature_config = features
        self.config = config
        self.frontend = MFCCFrontend(features)
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.lstm = nn.LSTM(
            input_size=config.n_inputs,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            proj_size=config.proj_size,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.output_size, config.n_labels)

    def initial_state(self, batch: int = 1) -> State:
        """Zero state for ``batch`` independent streams."""
        c = self.config
        h = torch.zeros(c.num_layers, batch, c.output_size)
        return h, torch.zeros(c.num_layers, batch, c.hidden_size)

    def forward(self, features: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Per-frame logits.

        Args:
            features: normalised MFCCs ``[batch, frames, n_mfcc]`` (from :attr:`frontend`).
            state: the state after the previous frames, or None to start from zeros.

        Returns:
            logits ``[batch, frames, n_labels]`` and the state after the last frame.
        """
        out, (h, c) = self.lstm(self.input_dropout(features), state)
        return self.head(self.dropout(out)), (h, c)

    def pool(self, logits: torch.Tensor) -> torch.Tensor:
        """Clip logits ``[batch, n_labels]`` from per-frame logits ``[batch, frames, n_labels]``.

        ``mean`` pooling averages the frames (a stream averages its last ``clip frames`` the same way);
        ``last`` takes the final frame.
        """
        return logits.mean(1) if self.config.pooling == POOL_MEAN else logits[:, -1]

    def classify(self, audio: torch.Tensor) -> torch.Tensor:
        """Whole-clip logits ``[batch, n_labels]`` of audio ``[batch, samples]``."""
        logits, _ = self(self.frontend(audio))
        return self.pool(logits)
