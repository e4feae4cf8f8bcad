"""Streaming whole clips through an exported streaming model, for the export's checks and calibration (no torch).

The streaming contract (a call takes ``context + k*hop`` samples, ``context = window - hop``, and computes the
``k`` frames that end in them; the LSTM state is carried from call to call) is the runtime's:
:class:`kws.runtime.model.StreamingModel` runs every call here (:meth:`~kws.runtime.model.StreamingModel.calls`).
This module only cuts audio into calls (:func:`stream_chunks` for a whole clip, :class:`StreamBuffer` for
pieces of any size) and pools a clip's per-frame logits into its scores as the whole-clip model does
(:func:`pool_scores`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kws.format import POOL_MEAN, frames_in
from kws.runtime.engine import softmax
from kws.runtime.model import StreamingModel

StreamSource = StreamingModel | ort.InferenceSession | str | Path
"""A :class:`StreamingModel`, an onnxruntime session of a kws streaming model, or the path of one."""


def stream_model(source: StreamSource, threads: int = 1) -> StreamingModel:
    """``source`` as a :class:`StreamingModel` (a session or a path is wrapped / loaded)."""
    if isinstance(source, StreamingModel):
        return source
    if isinstance(source, (str, Path)):
        return StreamingModel(source, threads)
    return StreamingModel.from_session(source)


def stream_chunks(audio: np.ndarray, context_samples: int, hop_samples: int, hops: int) -> Iterator[np.ndarray]:
    """Cut ``audio [samples]`` into streaming-model inputs of (up to) ``hops`` new frames each.

    Each call gets ``context + k*hop`` samples ending at the last sample its ``k`` frames cover; the frames
    of all calls together are exactly the frames of the whole clip (a trailing partial hop is dropped, as
    the whole-clip front end drops it).
    """
    if hops < 1:
        raise ValueError(f"hops must be >= 1, got {hops}")
    frames = frames_in(len(audio), context_samples + hop_samples, hop_samples)
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
        ready = frames_in(len(self._pending), self.context + self.hop, self.hop)
        chunks = []
        while ready > 0:
            k = ready if self.max_hops is None else min(ready, self.max_hops)
            chunks.append(self._pending[: self.context + k * self.hop].copy())
            self._pending = self._pending[k * self.hop :]
            ready -= k
        return chunks


def zero_states(source: StreamSource, lanes: int = 1) -> dict[str, np.ndarray]:
    """Zero LSTM states for ``lanes`` lanes by input name (shapes from the model's ``kws.state``)."""
    return {s.input: s.zeros(lanes) for s in stream_model(source).info.states}


def run_stream(source: StreamSource, chunks: Iterable[np.ndarray], lanes: int = 1) -> np.ndarray:
    """Run the chunks through a streaming model from zero state; per-frame logits ``[lanes, frames, C]``."""
    return stream_model(source).frame_outputs(chunks, lanes)


def pool_scores(frame_logits: np.ndarray, pooling: str) -> np.ndarray:
    """Clip scores from per-frame logits ``[..., frames, C]``: softmax of their mean (or the last frame's)."""
    pooled = frame_logits.mean(axis=-2) if pooling == POOL_MEAN else frame_logits[..., -1, :]
    return softmax(pooled.astype(np.float64)).astype(np.float32)
