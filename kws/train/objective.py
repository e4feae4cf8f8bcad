"""The training loss: cross-entropy with optional class weights, plus optional distillation from a teacher;
and the loss of training streams on the runtime's pooled posteriors (:class:`StreamObjective`).

``loss = (1 - w) * CE(student, label; class weights) + w * T^2 * KL(teacher_T || student_T)`` over the examples
that have a teacher row (the others get the hard term alone, at full weight), where ``X_T`` is the softmax of
logits divided by the temperature ``T`` (Hinton et al. 2015, "Distilling the knowledge in a neural network").
With unknown-word outputs (``kws train --fine-unknowns``) the loss adds ``fine_weight * CE(fine outputs, word
target)``: the same label smoothing, each clip weighted by its label's class weight. With
``embed_distill_weight`` (``kws train --embed-distill-weight``) it adds ``embed_distill_weight * MSE(A h, e)``: a
linear map ``A`` (:attr:`Objective.regressor`, trained with the model, never exported) of the student's mean
last-layer LSTM output ``h`` regresses the teacher's standardised mean speech embedding ``e`` of the clean clip
(representation distillation; FitNets, Romero et al. 2015).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from kws.config import TrainConfig
from kws.train.streams import NEGATIVE

logger = logging.getLogger(__name__)


def class_weights(labels: np.ndarray, n_labels: int, power: float) -> np.ndarray | None:
    """Per-class loss weights ``(count_c) ** -power``, scaled so the mean weight over the examples is 1.

    Args:
        labels: int ``[examples]`` class indices of the training split.
        n_labels: number of classes.
        power: 0 (no weighting: returns None) .. 1 (every class weighs the same in total).

    Returns:
        float32 ``[n_labels]`` (0 for classes without examples), or None when ``power`` is 0.
    """
    if not power:
        return None
    counts = np.bincount(labels, minlength=n_labels).astype(np.float64)
    weights = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    weights *= counts.sum() / max(float((weights * counts).sum()), 1e-12)
    return weights.astype(np.float32)


class Objective:
    """The loss of one batch.

    Args:
        config: ``class_weight_power``, ``label_smoothing``, ``distill_weight``, ``distill_temperature``.
        train_labels: int ``[examples]`` labels of the training split (for the class weights).
        n_labels: number of classes.
        teacher_logits: float32 ``[examples, n_labels]`` aligned with the training split, NaN rows where the
            teacher has none; None without a teacher.
        device: where the batches live.
        fine_labels: int ``[examples]`` targets of the fine outputs (:meth:`kws.data.splits.SplitData.fine_labels`)
            aligned with the training split; None: no fine term.
        teacher_embeddings: float32 ``[examples, dims]`` standardised teacher embeddings aligned with the training
            split (NaN rows where the teacher has none; :func:`kws.teacher.cache.load_embedding_targets`), with
            ``hidden_size`` the width of the student's LSTM output; None: no embedding term.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_labels: np.ndarray,
        n_labels: int,
        teacher_logits: np.ndarray | None = None,
        device: torch.device | str = "cpu",
        fine_labels: np.ndarray | None = None,
        teacher_embeddings: np.ndarray | None = None,
        hidden_size: int = 0,
    ) -> None:
        self.config = config
        self.embeddings, self.regressor = None, None
        if teacher_embeddings is not None and config.embed_distill_weight > 0:
            if len(teacher_embeddings) != len(train_labels) or hidden_size < 1:
                raise ValueError(f"teacher embeddings {teacher_embeddings.shape} for {len(train_labels)} examples")
            self.embeddings = torch.from_numpy(np.ascontiguousarray(teacher_embeddings, np.float32)).to(device)
            self.regressor = nn.Linear(hidden_size, teacher_embeddings.shape[1]).to(device)
        self.fine = None
        if fine_labels is not None:
            if fine_labels.shape != train_labels.shape:
                raise ValueError(f"fine labels {fine_labels.shape} for {len(train_labels)} examples")
            self.fine = torch.from_numpy(np.ascontiguousarray(fine_labels, np.int64)).to(device)
        weights = class_weights(train_labels, n_labels, config.class_weight_power)
        self.weights = None if weights is None else torch.from_numpy(weights).to(device)
        if weights is not None:
            logger.info("class weights: %s", ", ".join(f"{w:.2f}" for w in weights))
        self.teacher = None
        if teacher_logits is not None and config.distill_weight > 0:
            if teacher_logits.shape != (len(train_labels), n_labels):
                raise ValueError(f"teacher logits {teacher_logits.shape} for {len(train_labels)} examples")
            self.teacher = torch.from_numpy(np.ascontiguousarray(teacher_logits, np.float32)).to(device)

    def parameters(self) -> list[nn.Parameter]:
        """The objective's own trained weights (the embedding regressor's; none without it)."""
        return [] if self.regressor is None else list(self.regressor.parameters())

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        index: np.ndarray,
        fine: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss of student ``logits [batch, n_labels]`` for ``labels [batch]``.

        Args:
            index: int ``[batch]`` positions of the batch's examples in the training split.
            fine: the pooled fine outputs ``[batch, n_outputs]`` (:meth:`kws.model.network.KWSModel.pool_fine`),
                scored against the fine labels when the objective has them; None: no fine term.
            hidden: the student's mean last-layer LSTM output ``[batch, hidden_size]`` over the clip's frames,
                regressed onto the teacher's embeddings when the objective has them; None: no embedding term.
        """
        loss = self._labels_loss(logits, labels, index)
        if self.fine is not None and fine is not None:
            loss = loss + self.config.fine_weight * self._fine_loss(fine, labels, index)
        if self.regressor is not None and hidden is not None:
            loss = loss + self.config.embed_distill_weight * self._embedding_loss(hidden, index)
        return loss

    def _embedding_loss(self, hidden: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """Mean squared error of the regressed embeddings over the batch's examples that have a teacher row."""
        target = self.embeddings[torch.as_tensor(index, device=self.embeddings.device)]
        has = ~torch.isnan(target[:, 0])
        if not has.any():
            return hidden.sum() * 0.0
        return nn.functional.mse_loss(self.regressor(hidden[has]), target[has])

    def _fine_loss(self, fine: torch.Tensor, labels: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """Mean cross-entropy of the fine outputs, weighted by each clip's class weight (if any)."""
        targets = self.fine[torch.as_tensor(index, device=self.fine.device)]
        per_example = nn.functional.cross_entropy(
            fine, targets, label_smoothing=self.config.label_smoothing, reduction="none"
        )
        if self.weights is None:
            return per_example.mean()
        weights = self.weights[labels]
        return (weights * per_example).sum() / weights.sum().clamp_min(1e-12)

    def _labels_loss(self, logits: torch.Tensor, labels: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """The loss on the labels' logits: hard term (class weights) and distillation."""
        cfg = self.config
        per_example = nn.functional.cross_entropy(
            logits, labels, weight=self.weights, label_smoothing=cfg.label_smoothing, reduction="none"
        )
        if self.weights is not None:  # weighted mean, as cross_entropy(reduction="mean") computes it
            hard_norm = self.weights[labels].sum().clamp_min(1e-12) / len(labels)
            per_example = per_example / hard_norm
        if self.teacher is None:
            return per_example.mean()
        teacher = self.teacher[torch.as_tensor(index, device=self.teacher.device)]
        has = ~torch.isnan(teacher[:, 0])
        w = torch.where(has, torch.full_like(per_example, cfg.distill_weight), torch.zeros_like(per_example))
        loss = (1 - w) * per_example
        if has.any():
            t = cfg.distill_temperature
            student = nn.functional.log_softmax(logits[has] / t, dim=-1)
            target = nn.functional.log_softmax(teacher[has] / t, dim=-1)
            kl = nn.functional.kl_div(student, target, log_target=True, reduction="none").sum(-1)
            loss = loss.clone()
            loss[has] = loss[has] + cfg.distill_weight * t * t * kl
        return loss.mean()


def pooled_logits(frame_logits: torch.Tensor, pool_frames: int) -> torch.Tensor:
    """The logits a stream's posteriors are the softmax of, as the runtime pools them (``kws.runtime.engine``
    ``LogitPool``): the mean of the last ``pool_frames`` frames' logits, fewer at the start of the sequence
    (``pool_frames`` 1: each frame's own, ``pooling="last"``).

    Args:
        frame_logits: float ``[batch, frames, n_labels]`` of sequences that start from the zero state.

    Returns:
        float ``[batch, frames, n_labels]``.
    """
    if pool_frames == 1:
        return frame_logits
    frames = frame_logits.shape[1]
    padded = nn.functional.pad(frame_logits.transpose(1, 2), (pool_frames - 1, 0))
    sums = nn.functional.avg_pool1d(padded, pool_frames, stride=1) * pool_frames
    counts = torch.arange(1, frames + 1, device=frame_logits.device).clamp_max(pool_frames)
    return (sums / counts.to(sums.dtype)).transpose(1, 2)


STREAM_FIGURES = ("keyword_frames", "keyword_correct", "negative_frames", "false_frames")
"""What :class:`StreamObjective` counts per batch (summed over an epoch)."""
FALSE_POSTERIOR = 0.5
"""A NEGATIVE frame whose pooled posterior of some keyword exceeds this counts in ``false_frames``."""


class StreamObjective:
    """The loss of a batch of training streams (:mod:`kws.train.streams`), on the pooled posteriors.

    Frames whose target is a label index: cross-entropy to it; NEGATIVE frames (-2): ``-log(p_silence +
    p_unknown)`` (only "not a keyword" is asked); IGNORE frames (-1) do not count. The loss is the mean over the
    counted frames.

    Args:
        pool_frames: frames the runtime pools (:meth:`kws.train.streams.FrameGrid.of`).
        silence_index, unknown_index: the two non-keyword labels of the run.
    """

    def __init__(self, pool_frames: int, silence_index: int, unknown_index: int) -> None:
        self.pool_frames = pool_frames
        self.non_keyword = [silence_index, unknown_index]

    def __call__(self, frame_logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, int]]:
        """Scalar loss and the batch's counts (:data:`STREAM_FIGURES`).

        Args:
            frame_logits: float32 ``[batch, frames, n_labels]``, each sequence run from the zero state.
            targets: int64 ``[batch, frames]``: label index, -1 (IGNORE) or -2 (NEGATIVE).
        """
        log_p = nn.functional.log_softmax(pooled_logits(frame_logits, self.pool_frames), dim=-1)
        keyword, negative = targets >= 0, targets == NEGATIVE
        picked = log_p.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        not_keyword = torch.logsumexp(log_p[..., self.non_keyword], dim=-1)
        per_frame = torch.where(keyword, -picked, torch.where(negative, -not_keyword, torch.zeros_like(picked)))
        counted = keyword | negative
        loss = per_frame.sum() / counted.sum().clamp_min(1)
        with torch.no_grad():
            keyword_mask = torch.ones(log_p.shape[-1], dtype=torch.bool, device=log_p.device)
            keyword_mask[self.non_keyword] = False
            top_keyword = log_p[..., keyword_mask].max(-1).values.exp()
            counts = torch.stack(
                [
                    keyword.sum(),
                    (keyword & (log_p.argmax(-1) == targets)).sum(),
                    negative.sum(),
                    (negative & (top_keyword > FALSE_POSTERIOR)).sum(),
                ]
            ).tolist()  # one device sync
        return loss, dict(zip(STREAM_FIGURES, counts, strict=True))
