"""Hard-negative mining for the stream loss (``StreamTrainConfig.hard_fraction`` > 0).

At the start of every epoch the validated weights (the EMA copy) run over every training-half ``--negatives``
recording from the zero state, and the runtime's pooled keyword posterior (:func:`pooled_logits`) is read on
every frame. Each place where it peaks over ``StreamTrainConfig.hard_threshold`` (local maxima at least
:data:`MIN_SEPARATION_SECONDS` apart) is a *hard negative*: a spot in real non-keyword speech where the current
model would (nearly) fire. The stream builder (:class:`kws.train.streams.StreamBuilder`) then draws a growing share
of its negative pieces around those spots (openWakeWord's "mine false positives, train on them" idea), so the
stream loss spends more of its frames on what the model still gets wrong. The share grows linearly over the
epochs to ``hard_fraction`` at the last; nothing is saved: a resumed run mines again from its weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kws.data.audio import int16_to_float
from kws.model.network import KWSModel
from kws.train.objective import pooled_logits
from kws.train.streams import FrameGrid

logger = logging.getLogger("kws.train.loop")  # its messages are those of `kws train`

MIN_SEPARATION_SECONDS = 1.0
"""Two mined spots of one recording are at least this far apart (s): one per would-be false accept."""
MINE_CHUNK_SECONDS = 60.0
"""Recordings are run in pieces of at most this long (s), the LSTM state carried between them (bounds memory)."""


@dataclass(frozen=True)
class HardNegatives:
    """Mined spots: recording index int64 ``[n]``, sample where the firing frame ends int64 ``[n]``, and the
    pooled keyword posterior there float32 ``[n]`` (in recording order)."""

    source: np.ndarray
    position: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    @classmethod
    def none(cls) -> HardNegatives:
        """No spot (before the first mining, or when nothing fires)."""
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def peaks(scores: np.ndarray, threshold: float, separation: int) -> np.ndarray:
    """Frames (int64, ascending) where ``scores`` ``[frames]`` exceeds ``threshold``, greedily keeping the highest
    and dropping any other within ``separation`` frames of a kept one."""
    over = np.flatnonzero(scores > threshold)
    kept: list[int] = []
    taken = np.zeros(len(scores), bool)
    for frame in over[np.argsort(-scores[over], kind="stable")]:
        if not taken[frame]:
            kept.append(int(frame))
            taken[max(0, frame - separation + 1) : frame + separation] = True
    return np.sort(np.asarray(kept, np.int64))


@torch.no_grad()
def keyword_posteriors(
    model: KWSModel, recording: np.ndarray, grid: FrameGrid, keyword: np.ndarray, rate: int
) -> np.ndarray:
    """The pooled top-keyword posterior float32 ``[frames]`` of one int16 ``[samples]`` recording, as the runtime
    computes it with one lane from the zero state (front end on the whole recording, cut into chunks of whole
    frames; pooling carried across chunks).

    Args:
        keyword: bool ``[n_labels]``: which labels are keywords.
    """
    device = next(model.parameters()).device
    audio = torch.from_numpy(int16_to_float(recording)).to(device)
    frames = grid.frames(len(audio))
    if frames <= 0:
        return np.zeros(0, np.float32)
    chunk = max(1, round(MINE_CHUNK_SECONDS * rate / grid.hop))
    state, logits = None, []
    for first in range(0, frames, chunk):
        n = min(chunk, frames - first)
        piece = audio[first * grid.hop : (first + n - 1) * grid.hop + grid.window]
        out, state = model(model.frontend(piece[None]), state)
        logits.append(out[0])
    pooled = pooled_logits(torch.cat(logits)[None], grid.pool_frames)[0]
    probs = torch.softmax(pooled.float(), dim=-1)[:, torch.from_numpy(keyword).to(device)]
    return probs.max(-1).values.cpu().numpy().astype(np.float32)


def mine(
    model: KWSModel,
    recordings: Sequence[np.ndarray],
    grid: FrameGrid,
    keyword: np.ndarray,
    rate: int,
    threshold: float,
) -> HardNegatives:
    """Every spot of ``recordings`` (int16 ``[samples]`` each) where ``model`` (put in eval mode) peaks over
    ``threshold`` (:func:`peaks`)."""
    model.eval()
    separation = max(1, round(MIN_SEPARATION_SECONDS * rate / grid.hop))
    sources, positions, scores = [], [], []
    for index, recording in enumerate(recordings):
        posterior = keyword_posteriors(model, recording, grid, keyword, rate)
        frames = peaks(posterior, threshold, separation)
        sources.append(np.full(len(frames), index, np.int64))
        positions.append(grid.ends(len(posterior))[frames] if len(frames) else np.zeros(0, np.int64))
        scores.append(posterior[frames])
    if not sources:
        return HardNegatives.none()
    return HardNegatives(np.concatenate(sources), np.concatenate(positions), np.concatenate(scores))


def epoch_fraction(hard_fraction: float, epoch: int, epochs: int) -> float:
    """The share of negative pieces drawn around mined spots in ``epoch`` (0-based): growing linearly to
    ``hard_fraction`` at the last (``hard_fraction / epochs`` in the first)."""
    return hard_fraction * (epoch + 1) / max(epochs, 1)
