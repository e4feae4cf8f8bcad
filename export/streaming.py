"""Feeding audio to an exported streaming model (numpy + onnxruntime only, no torch).

A call of the streaming model takes ``context + k*hop`` samples (``context = n_fft - hop``) and computes the
``k`` frames that end in them. :class:`StreamBuffer` turns audio arriving in pieces of any size into such
calls; :func:`stream_chunks` cuts a whole clip into calls of a fixed number of hops; :func:`run_stream` runs
calls through a session from zero state and returns every frame's logits, which :func:`pool_scores` turns
into the clip's scores exactly as the whole-clip model does (mean or last frame, then softmax).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from kws.constants import INPUT_AUDIO, OUTPUT_LOGITS, STATE_C_IN, STATE_C_OUT, STATE_H_IN, STATE_H_OUT


def frames_in(num_samples: int, context_samples: int, hop_samples: int) -> int:
    """Frames computed from ``num_samples`` samples (0 if shorter than one window of ``context + hop``)."""
    window = context_samples + hop_samples
    return 0 if num_samples < window else 1 + (num_samples - window) // hop_samples


def stream_chunks(audio: np.ndarray, context_samples: int, hop_samples: int, hops: int) -> Iterator[np.ndarray]:
    """Cut ``audio [samples]`` into streaming-model inputs of (up to) ``hops`` new frames each.

    Each call gets ``context + k*hop`` samples ending at the last sample its ``k`` frames cover; the frames
    of all calls together are exactly the frames of the whole clip (a trailing partial hop is dropped, as
    the whole-clip front end drops it).
    """
    if hops < 1:
        raise ValueError(f"hops must be >= 1, got {hops}")
    frames = frames_in(len(audio), context_samples, hop_samples)
    done = 0
    while done < frames:
        k = min(hops, frames - done)
        start = done * hop_samples
        yield audio[start : start + context_samples + k * hop_samples]
        done += k


class StreamBuffer:
    """Turns audio pieces of any size into streaming-model inputs.

    ``push(samples)`` returns the inputs that became complete: each ``[context + k*hop]`` samples with
    ``1 <= k <= max_hops``; the samples a later frame still needs (the last ``context`` samples plus any
    partial hop) are kept for the next push.
    """

    def __init__(self, context_samples: int, hop_samples: int, max_hops: int | None = None) -> None:
        self.context, self.hop, self.max_hops = context_samples, hop_samples, max_hops
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        self._pending = np.concatenate([self._pending, np.asarray(samples, np.float32).reshape(-1)])
        ready = frames_in(len(self._pending), self.context, self.hop)
        chunks = []
        while ready > 0:
            k = ready if self.max_hops is None else min(ready, self.max_hops)
            chunks.append(self._pending[: self.context + k * self.hop].copy())
            self._pending = self._pending[k * self.hop :]
            ready -= k
        return chunks


def zero_states(session: Any, lanes: int = 1) -> dict[str, np.ndarray]:
    """Zero LSTM states for ``lanes`` lanes, shaped from the session's ``h_in``/``c_in`` inputs."""
    states = {}
    for inp in session.get_inputs():
        if inp.name in (STATE_H_IN, STATE_C_IN):
            states[inp.name] = np.zeros([lanes if not isinstance(d, int) else d for d in inp.shape], np.float32)
    return states


def run_stream(session: Any, chunks: Iterable[np.ndarray], lanes: int = 1) -> np.ndarray:
    """Run the chunks through a streaming session from zero state; per-frame logits ``[lanes, frames, C]``."""
    states = zero_states(session, lanes)
    names = [o.name for o in session.get_outputs()]
    logits = []
    for chunk in chunks:
        out = dict(zip(names, session.run(None, {INPUT_AUDIO: chunk[None].astype(np.float32), **states}), strict=True))
        logits.append(out[OUTPUT_LOGITS])
        states = {STATE_H_IN: out[STATE_H_OUT], STATE_C_IN: out[STATE_C_OUT]}
    return np.concatenate(logits, axis=1)


def stream_clip_logits(session: Any, clip: np.ndarray, context_samples: int, hop_samples: int, hops: int) -> np.ndarray:
    """Per-frame logits ``[frames, C]`` of a clip streamed ``hops`` frames per call."""
    return run_stream(session, stream_chunks(clip, context_samples, hop_samples, hops))[0]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def pool_scores(frame_logits: np.ndarray, pooling: str) -> np.ndarray:
    """Clip scores from per-frame logits ``[..., frames, C]``: softmax of their mean (or the last frame's)."""
    pooled = frame_logits.mean(axis=-2) if pooling == "mean" else frame_logits[..., -1, :]
    return softmax(pooled.astype(np.float64)).astype(np.float32)
