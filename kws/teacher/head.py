"""The teacher's head: logits of the run's labels from a clip's ``[windows, 96]`` speech-embedding sequence
(:mod:`kws.teacher.embedding`), and its training."""

from __future__ import annotations

import copy
import logging
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from kws.config import TeacherConfig
from kws.teacher.embedding import EMBEDDING_DIM
from kws.train.evaluate import accuracy

logger = logging.getLogger(__name__)


class TeacherHead(nn.Module):
    """Logits of the run's labels from a clip's embedding sequence.

    ``forward``: float32 ``[batch, windows, 96]`` -> logits ``[batch, n_labels]``. Every variant starts with a
    LayerNorm of each 96-d embedding.
    """

    def __init__(self, config: TeacherConfig, n_windows: int, n_labels: int) -> None:
        super().__init__()
        self.pooling = config.pooling
        h = config.hidden_size
        self.norm = nn.LayerNorm(EMBEDDING_DIM)
        if config.pooling == "flatten":
            self.frame = nn.Identity()
            self.out = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(config.dropout),
                nn.Linear(n_windows * EMBEDDING_DIM, h),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(h, n_labels),
            )
        else:
            self.frame = nn.Sequential(nn.Dropout(config.dropout / 2), nn.Linear(EMBEDDING_DIM, h), nn.GELU())
            self.score = nn.Linear(h, 1) if config.pooling == "attention" else None
            self.out = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * h, n_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.frame(self.norm(x))
        if self.pooling == "flatten":
            return self.out(z)
        if self.score is not None:  # attention: softmax weights over the windows
            first = (torch.softmax(self.score(z), dim=1) * z).sum(1)
        else:
            first = z.mean(1)
        return self.out(torch.cat([first, z.amax(1)], dim=-1))


@torch.no_grad()
def head_logits(head: TeacherHead, embeddings: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """float32 logits ``[clips, n_labels]`` of embeddings ``[clips, windows, 96]`` (eval mode)."""
    head.eval()
    out = [
        head(torch.from_numpy(embeddings[i : i + batch_size])).numpy() for i in range(0, len(embeddings), batch_size)
    ]
    n_labels = head.out[-1].out_features
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, n_labels), np.float32)


def _score(head: TeacherHead, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of embeddings ``x`` ``[clips, windows, 96]`` with labels ``y``; (0, 0) for
    no clips."""
    logits = head_logits(head, x)
    loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item() if len(y) else 0.0
    return accuracy(logits, y, empty=0.0), loss


def train_head(
    config: TeacherConfig,
    n_labels: int,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
) -> tuple[TeacherHead, list[dict[str, Any]]]:
    """Train a head with AdamW; keep the epoch with the best validation accuracy (ties: lower loss).

    Args:
        train_x, val_x: float32 embeddings ``[clips, windows, 96]``; train_y, val_y: int64 label indices.

    Returns:
        the best head (eval mode) and the per-epoch history.
    """
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    head = TeacherHead(config, train_x.shape[1], n_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = math.ceil(len(train_x) / config.batch_size) * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng([config.seed, 1])
    x_all, y_all = torch.from_numpy(train_x), torch.from_numpy(train_y)
    best: tuple[float, float] = (-1.0, math.inf)
    best_state, best_epoch, history = copy.deepcopy(head.state_dict()), 0, []
    if not len(val_y):
        logger.warning("the validation split is empty: the teacher keeps its last epoch")
    bar = tqdm(range(config.epochs), desc="teacher head", unit="epoch", leave=False, mininterval=1.0, disable=None)
    for epoch in bar:
        head.train()
        order = torch.from_numpy(rng.permutation(len(train_x)))
        loss_sum = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = nn.functional.cross_entropy(head(x_all[idx]), y_all[idx], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
        val_acc, val_loss = _score(head, val_x, val_y)
        history.append(
            {"epoch": epoch + 1, "train_loss": loss_sum / len(order), "val_accuracy": val_acc, "val_loss": val_loss}
        )
        bar.set_postfix(val=f"{val_acc:.3f}")
        if not len(val_y) or (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_epoch, best_state = (val_acc, val_loss), epoch + 1, copy.deepcopy(head.state_dict())
        elif epoch + 1 - best_epoch >= config.patience:
            break
    bar.close()
    head.load_state_dict(best_state)
    head.eval()
    logger.info(
        "teacher head (%s): best epoch %d of %d, validation accuracy %.2f%%",
        config.pooling,
        best_epoch,
        len(history),
        100 * best[0],
    )
    return head, history


def with_views(x: np.ndarray, y: np.ndarray, views: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The clips ``x`` ``[clips, windows, 96]`` (labels ``y``) followed by their augmented ``views``
    ``[views, clips, windows, 96]`` (each with its clip's label); ``x, y`` unchanged without views."""
    if views is None:
        return x, y
    return np.concatenate([x, views.reshape(-1, *x.shape[1:])]), np.concatenate([y, np.tile(y, len(views))])


def speaker_folds(speakers: Sequence[str], folds: int) -> np.ndarray:
    """The fold (int64 ``[clips]``, in ``0..folds-1``) of each clip: a stable hash of its speaker, so that all of
    a speaker's clips share a fold."""
    return np.asarray([zlib.crc32(s.encode()) % folds for s in speakers], np.int64)


def out_of_fold_logits(
    config: TeacherConfig,
    n_labels: int,
    train_x: np.ndarray,
    train_y: np.ndarray,
    speakers: Sequence[str],
    views: np.ndarray | None,
    val_x: np.ndarray,
    val_y: np.ndarray,
) -> np.ndarray:
    """Out-of-fold logits float32 ``[clips, n_labels]`` of the training clips (``config.soft_label_folds`` folds
    by speaker): each fold's from a head trained on the other folds (and their augmented ``views``
    ``[views, clips, windows, 96]`` if given), early-stopped on the validation split. Rows of a fold whose
    complement is empty are NaN."""
    folds = speaker_folds(speakers, config.soft_label_folds)
    out = np.full((len(train_x), n_labels), np.nan, np.float32)
    for k in range(config.soft_label_folds):
        held = folds == k
        if not held.any() or held.all():
            continue
        x, y = with_views(train_x[~held], train_y[~held], None if views is None else views[:, ~held])
        logger.info("out-of-fold soft labels: fold %d/%d (%d clips)", k + 1, config.soft_label_folds, held.sum())
        head, _ = train_head(config, n_labels, x, y, val_x, val_y)
        out[held] = head_logits(head, train_x[held])
    return out
