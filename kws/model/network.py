"""Stacked-LSTM keyword classifier: one set of weights for whole clips and for frame-by-frame streaming.

Fine-grained unknowns (``ModelConfig.unknown_words``, ``kws train --fine-unknowns``): the classifier has one more
output per non-keyword word, but the model's logits stay one per label: the ``_unknown_`` logit is the log-sum-exp of
the ``_unknown_`` output and every word output (:func:`collapse_unknowns`), so its softmax probability is exactly the
sum of theirs in the softmax over all the outputs. The collapse is part of :attr:`KWSModel.head`, so evaluation, the
stream loss, distillation and the exported ONNX graphs (which call ``model.head``) all see the labels alone;
``forward(..., fine=True)`` gives the outputs themselves, for the training loss on word targets.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kws.config import FeatureConfig, ModelConfig
from kws.format import POOL_MEAN
from kws.model.features import MFCCFrontend

State = tuple[torch.Tensor, torch.Tensor]
"""LSTM state ``(h, c)``: h ``[layers, batch, output_size]``, c ``[layers, batch, hidden_size]``."""

UNKNOWN_OUTPUT = 1
"""Index of ``_unknown_`` among a run's labels (:func:`kws.data.layout.resolve_labels`: ``_silence_``, ``_unknown_``,
then the keywords), into which the unknown-word outputs collapse."""


def collapse_unknowns(outputs: torch.Tensor, n_labels: int, unknown: int = UNKNOWN_OUTPUT) -> torch.Tensor:
    """The labels' logits ``[..., n_labels]`` of fine outputs ``[..., n_labels + words]``.

    Output ``unknown`` becomes the log-sum-exp of itself and the word outputs ``[n_labels:]``; the other labels keep
    their own output. ``softmax(result)[unknown]`` is then the sum of those outputs' probabilities in
    ``softmax(outputs)``, and every other label's probability is unchanged.
    """
    labels, words = outputs[..., :n_labels], outputs[..., n_labels:]
    merged = torch.logsumexp(torch.cat([labels[..., unknown : unknown + 1], words], -1), dim=-1, keepdim=True)
    return torch.cat([labels[..., :unknown], merged, labels[..., unknown + 1 :]], -1)


class UnknownWordsHead(nn.Linear):
    """The classifier of a model with unknown-word outputs: a linear layer of ``n_labels + n_words`` outputs whose
    :meth:`forward` returns the labels' logits (:func:`collapse_unknowns`), :meth:`fine` the outputs themselves.

    A ``nn.Linear`` (its state dict is ``weight``/``bias``, as a plain head's). The biases of ``_unknown_`` and the
    word outputs start ``log(1 + n_words)`` lower, so that the collapsed ``_unknown_`` logit starts where a plain
    head's would.
    """

    def __init__(self, in_features: int, n_labels: int, n_words: int) -> None:
        super().__init__(in_features, n_labels + n_words)
        self.n_labels = n_labels
        with torch.no_grad():
            self.bias[[UNKNOWN_OUTPUT, *range(n_labels, n_labels + n_words)]] -= math.log1p(n_words)

    def fine(self, x: torch.Tensor) -> torch.Tensor:
        """Every output ``[..., n_labels + n_words]`` of ``x [..., in_features]``."""
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The labels' logits ``[..., n_labels]`` of ``x [..., in_features]``."""
        return collapse_unknowns(self.fine(x), self.n_labels)


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
        words = len(config.unknown_words)
        self.head = (
            UnknownWordsHead(config.output_size, config.n_labels, words)
            if words
            else nn.Linear(config.output_size, config.n_labels)
        )

    def initial_state(self, batch: int = 1) -> State:
        """Zero state for ``batch`` independent streams."""
        c = self.config
        h = torch.zeros(c.num_layers, batch, c.output_size)
        return h, torch.zeros(c.num_layers, batch, c.hidden_size)

    def forward(
        self, features: torch.Tensor, state: State | None = None, fine: bool = False
    ) -> tuple[torch.Tensor, State]:
        """Per-frame logits.

        Args:
            features: normalised MFCCs ``[batch, frames, n_mfcc]`` (from :attr:`frontend`).
            state: the state after the previous frames, or None to start from zeros.
            fine: return every classifier output ``[batch, frames, n_outputs]`` (the labels, then the unknown words
                of ``ModelConfig.unknown_words``) instead of the labels' logits; the same without unknown words.

        Returns:
            logits ``[batch, frames, n_labels]`` (``n_outputs`` with ``fine``) and the state after the last frame.
        """
        out, (h, c) = self.lstm(self.input_dropout(features), state)
        head = self.head.fine if fine and isinstance(self.head, UnknownWordsHead) else self.head
        return head(self.dropout(out)), (h, c)

    def pool(self, logits: torch.Tensor) -> torch.Tensor:
        """Clip logits ``[batch, n_labels]`` from per-frame logits ``[batch, frames, n_labels]``.

        ``mean`` pooling averages the frames (a stream averages its last ``clip frames`` the same way);
        ``last`` takes the final frame.
        """
        return logits.mean(1) if self.config.pooling == POOL_MEAN else logits[:, -1]

    def pool_fine(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The clip logits ``[batch, n_labels]`` and, with unknown words, the pooled outputs ``[batch, n_outputs]``
        (None without) of per-frame outputs ``[batch, frames, n_outputs]`` (``forward(..., fine=True)``).

        The clip logits pool the frames' collapsed logits, as :meth:`classify` and a stream do.
        """
        if not self.config.unknown_words:
            return self.pool(outputs), None
        return self.pool(collapse_unknowns(outputs, self.config.n_labels)), self.pool(outputs)

    def classify(self, audio: torch.Tensor) -> torch.Tensor:
        """Whole-clip logits ``[batch, n_labels]`` of audio ``[batch, samples]``."""
        logits, _ = self(self.frontend(audio))
        return self.pool(logits)
