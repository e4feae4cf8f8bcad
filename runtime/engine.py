"""Streaming inference: audio chunks in, per-frame posteriors out, with the LSTM state carried between calls.

Buffering (openWakeWord-style fixed buffers): the engine owns one preallocated float32 buffer of
``context + chunk_frames * hop`` samples. Incoming int16 or float32 chunks of any length are copied into it;
each time it is full the model computes the ``chunk_frames`` new frames in one call, and the last
``context = window - hop`` samples move to the front for the next call (frame ``t`` covers samples
``[t * hop, t * hop + window)`` of the stream, exactly as in training).

State re-synchronisation over unbounded input: an LSTM run for hours from one zero state drifts into states
it never saw in training (it was trained on 1-2 s clips starting from zero state). The model therefore runs
``lanes`` independent states over the same audio (the ``lanes`` dimension of its state inputs; features are
computed once). Lane ``i`` is reset to the zero state every ``period`` frames, first at ``offset_i = i *
period / lanes`` (staggered), and the posteriors of each frame are read from the lane reset longest ago. With
2 lanes and a 2 s period the read lane always has between 1 s and 2 s of context, so a word of up to 1 s is
entirely inside it, and no lane ever runs longer than 2 s from zero state. Resets happen only at chunk
boundaries: the period and the offsets are multiples of the chunk (see
:func:`kws.runtime.config.lane_schedule`), which also means the read lane is the same for every frame of a
call, so its posteriors are one slice of the model output (no per-frame Python work). With
``reset_period_ms=0`` (1 lane) the state is carried forever.

Posteriors: the per-frame ``logits`` are pooled as the whole-clip twin pools a clip (``kws.pooling``):
softmax of the frame's logits (``last``), or softmax of the mean of the read lane's last ``kws.pool_frames``
logits (``mean``, :class:`LogitPool`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from time import perf_counter

import numpy as np

from kws.errors import ConfigError
from kws.format import POOL_MEAN, frames_in
from kws.runtime.config import SpotterConfig, frames_for, lane_schedule, min_read_context
from kws.runtime.model import BoundStep, StreamingModel

logger = logging.getLogger(__name__)

INT16_SCALE = np.float32(1.0 / 32768.0)
"""int16 PCM -> float in [-1, 1) (as :func:`kws.data.audio.int16_to_float`)."""

MAX_ENGINE_BYTES = 256 << 20
"""The engine's buffers (audio, outputs, states, pooled logits) for a model and settings stay below this:
a damaged model's metadata combined with extreme settings is refused instead of exhausting memory."""

MAX_CACHED_BANDS = 16
"""Steady-state moving-average matrices kept (:func:`mean_band`): one per (window, frames per call)."""

RING_CALLS = 8
"""Calls of new rows a :class:`MovingMean` ring holds past its window before moving the window back."""


class StreamEngine:
    """Feeds a stream to a :class:`StreamingModel` and returns the read lane's posteriors, frame by frame.

    Args:
        model: the loaded streaming model.
        config: chunk size, lanes and reset period (the detection fields are ignored here).

    Attributes:
        chunk_frames: frames (hops) computed per model call.
        period_frames: lane reset period in frames (0: never reset).
        offsets: frame of each lane's first reset.
        min_context_frames: fewest frames of context the read lane has once the lanes are staggered.
        frames: frames computed so far; ``samples``: samples consumed so far (model rate).
        model_calls, model_seconds: calls to onnxruntime and the wall time spent in them.
    """

    def __init__(self, model: StreamingModel, config: SpotterConfig) -> None:
        info = model.info
        self.model = model
        self.hop = info.hop_samples
        self.window = info.window_samples
        self.context = info.context_samples
        self.chunk_frames = frames_for(config.chunk_ms, info.hop_ms, minimum=1)
        self.lanes = config.lanes
        if config.reset_period_ms > 0:
            period = frames_for(config.reset_period_ms, info.hop_ms, minimum=1)
            self.period_frames, self.offsets = lane_schedule(self.lanes, period, self.chunk_frames)
            self.min_context_frames = min_read_context(self.period_frames, self.offsets, self.chunk_frames)
            needed = max(info.clip_frames, info.pool_frames if info.pooling == POOL_MEAN else 0)
            if self.min_context_frames < needed:
                logger.warning(
                    "the read lane may have only %d frames of context (< %d frames of a training clip): "
                    "use more lanes or a longer reset period", self.min_context_frames, needed,
                )  # fmt: skip
        else:
            self.period_frames, self.offsets, self.min_context_frames = 0, (0,), 0
        self._lane_axes = [s.lane_axis for s in info.states]
        self._check_memory(model)
        self._buffer = np.zeros((1, self.context + self.chunk_frames * self.hop), dtype=np.float32)
        self._step_runner = BoundStep(model, self._buffer, self.lanes)
        n_labels = len(info.labels)
        self._pool = LogitPool(self.lanes, info.pool_frames, n_labels) if info.pooling == POOL_MEAN else None
        self.reset()

    def _check_memory(self, model: StreamingModel) -> None:
        info = model.info
        n_labels = len(info.labels)
        per_lane_state = sum(int(np.prod([d for d in s.shape if d != s.shape[s.lane_axis]])) for s in info.states)
        mean = info.pooling == POOL_MEAN
        floats = (
            self.context + self.chunk_frames * self.hop  # audio buffer
            + 2 * self.lanes * self.chunk_frames * n_labels  # bound outputs + onnxruntime's own
            + 3 * self.lanes * per_lane_state  # ping-pong states + a call's new states
            + mean * (self.lanes + 1) * (info.pool_frames + RING_CALLS * self.chunk_frames) * n_labels  # rings
            + mean * 2 * self.chunk_frames * (info.pool_frames + self.chunk_frames)  # moving-average bands
        )  # fmt: skip
        if 4 * floats > MAX_ENGINE_BYTES:
            raise ConfigError(
                f"{info.path.name} with {self.lanes} lane(s) and {self.chunk_frames} frames per call needs "
                f"{4 * floats / 2**20:.0f} MiB of buffers (at most {MAX_ENGINE_BYTES >> 20} MiB): use fewer "
                "lanes or a smaller --chunk-ms"
            )

    @property
    def states(self) -> list[np.ndarray]:
        """The recurrent states the next call starts from (``info.states`` order, lanes on their axis)."""
        return self._step_runner.states

    def reset(self) -> None:
        """Start a new stream: empty buffer, zero states, frame counter 0."""
        self._fill = 0
        self._step_runner.zero_states()
        if self._pool is not None:
            self._pool.reset()
        self._last_reset = [0] * self.lanes
        self._next_reset = [(o if o > 0 else self.period_frames) for o in self.offsets]
        self.frames = 0
        self.samples = 0
        self.model_calls = 0
        self.model_seconds = 0.0
        self.read_lane = 0

    def process(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Consume audio; return the posteriors of every frame completed by it.

        Args:
            chunk: mono samples at the model rate, ``[n]`` int16 PCM or float32 in [-1, 1] (any length).

        Returns:
            ``(first_frame, scores)`` blocks, ``scores`` float32 ``[k, n_labels]`` for frames
            ``first_frame .. first_frame + k - 1`` (usually 0 or 1 block per call).
        """
        chunk = _as_mono(chunk)
        scale = INT16_SCALE if chunk.dtype == np.int16 else None
        blocks: list[tuple[int, np.ndarray]] = []
        size = self._buffer.shape[1]
        pos, n = 0, len(chunk)
        self.samples += n
        buffer = self._buffer[0]
        while pos < n:
            take = min(n - pos, size - self._fill)
            dst = buffer[self._fill : self._fill + take]
            if scale is None:
                dst[:] = chunk[pos : pos + take]
            else:
                np.multiply(chunk[pos : pos + take], scale, out=dst)
            self._fill += take
            pos += take
            if self._fill == size:
                blocks.append(self._step(None, self.chunk_frames))
                buffer[: self.context] = buffer[size - self.context :]
                self._fill = self.context
        return blocks

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """Compute the frames of the whole hops still buffered (end of a stream); partial hops are dropped."""
        if self.frames == 0:
            k = frames_in(self._fill, self.window, self.hop)
        else:
            k = (self._fill - self.context) // self.hop
        if k <= 0:
            return []
        used = self.context + k * self.hop
        block = self._step(None if used == self._buffer.shape[1] else self._buffer[:, :used].copy(), k)
        keep = self._fill - k * self.hop
        self._buffer[0, :keep] = self._buffer[0, self._fill - keep : self._fill]
        self._fill = keep
        return [block]

    def _step(self, audio: np.ndarray | None, k: int) -> tuple[int, np.ndarray]:
        """Reset the lanes that are due, then compute ``k`` frames: of the engine's full buffer (``audio``
        None, the bound fast path) or of ``audio`` (``[1, context + k * hop]``, end of stream).

        Returns:
            (first frame, the read lane's posteriors ``[k, n_labels]``, a new array).
        """
        start = self.frames
        if self.period_frames:
            for lane in range(self.lanes):
                if start >= self._next_reset[lane]:
                    for state, axis in zip(self._step_runner.states, self._lane_axes, strict=True):
                        np.moveaxis(state, axis, 0)[lane] = 0.0
                    self._last_reset[lane] = start
                    self._next_reset[lane] += self.period_frames
            self.read_lane = self._last_reset.index(min(self._last_reset))
        t0 = perf_counter()
        outputs = self._step_runner.run() if audio is None else self._step_runner.run_other(audio)
        self.model_seconds += perf_counter() - t0
        self.model_calls += 1
        self.frames += k
        if self._pool is not None:
            context = self.frames - self._last_reset[self.read_lane]
            return start, self._pool.process(outputs, self.read_lane, context)
        return start, softmax(outputs[self.read_lane])

    def lane_context(self) -> list[int]:
        """Frames each lane has run since its last reset (or since the stream started)."""
        return [self.frames - r for r in self._last_reset]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float32, a new array; the ufuncs' own reductions, the cheapest calls)."""
    e = logits - np.maximum.reduce(logits, axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= np.add.reduce(e, axis=-1, keepdims=True)
    return e


def mean_band(window: int, k: int, seen: int) -> np.ndarray:
    """The matrix of ``k`` moving averages over rows ``[window - 1 + k, n]`` (read-only float32).

    Row ``j`` of ``band @ rows`` is the mean of the last ``min(seen + j + 1, window)`` rows ending at row
    ``window - 1 + j``: ``seen`` rows of history precede the ``k`` new ones (``seen >= window - 1``: a full
    window for every row, the steady state, whose matrices are cached), so one MatMul gives every average of
    a call.

    Args:
        window: frames averaged (>= 1).
        k: new frames.
        seen: frames before the new ones that may be averaged.
    """
    if seen >= window - 1:
        return _full_band(window, k)
    return _band(window, k, seen)


@lru_cache(maxsize=MAX_CACHED_BANDS)
def _full_band(window: int, k: int) -> np.ndarray:
    return _band(window, k, window - 1)


def _band(window: int, k: int, seen: int) -> np.ndarray:
    ends = np.arange(window - 1, window - 1 + k)
    counts = np.minimum(seen + 1 + np.arange(k), window)
    cols = np.arange(window - 1 + k)
    inside = (cols >= (ends - counts + 1)[:, None]) & (cols <= ends[:, None])
    band = (inside / counts[:, None]).astype(np.float32)
    band.flags.writeable = False
    return band


class MovingMean:
    """Streaming moving averages over the last ``window`` rows of ``streams`` streams of ``[n]`` vectors.

    The rows live in a preallocated ring of ``window - 1 + RING_CALLS * k`` rows per stream: a call writes
    its ``k`` new rows after the previous ones and averages the last ``window - 1 + k`` (a view) with one
    MatMul (:func:`mean_band`, cached per ``k``); only every ``RING_CALLS`` calls are the last ``window - 1``
    rows moved back to the front.
    """

    def __init__(self, window: int, n: int, streams: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        self.window, self.n, self.streams = window, n, streams
        self._rows = np.zeros((streams, window - 1, n), dtype=np.float32)
        self._end = window - 1  # rows [end - (window - 1), end) are the history

    def reset(self) -> None:
        self._rows.fill(0.0)
        self._end = self.window - 1

    def push(self, values: np.ndarray) -> np.ndarray:
        """Append ``values [streams, k, n]``; return the rows ``[streams, window - 1 + k, n]`` (a view, valid
        until the next push) that :meth:`mean` averages."""
        k, w = values.shape[1], self.window
        if self._end + k > self._rows.shape[1]:
            history = self._rows[:, self._end - (w - 1) : self._end].copy()
            if self._rows.shape[1] < w - 1 + k:
                self._rows = np.zeros((self.streams, w - 1 + RING_CALLS * k, self.n), dtype=np.float32)
            self._rows[:, : w - 1] = history
            self._end = w - 1
        self._rows[:, self._end : self._end + k] = values
        self._end += k
        return self._rows[:, self._end - (w - 1 + k) : self._end]

    def mean(self, rows: np.ndarray, stream: int, seen: int) -> np.ndarray:
        """The ``k`` averages ``[k, n]`` of ``stream`` over the rows of the last :meth:`push`, of which the
        ``seen`` rows before the new ones belong to the stream."""
        return mean_band(self.window, rows.shape[1] - (self.window - 1), seen) @ rows[stream]


class LogitPool:
    """Posteriors of mean-pooled models: softmax of the mean of the last ``frames`` per-frame logits.

    A whole-clip model scores a clip by the mean of its frames' logits; a stream scores frame ``t`` the same
    way over the frames ``t - frames + 1 .. t`` of the read lane (fewer if the lane was reset more recently).
    Every lane's recent logits are kept (:class:`MovingMean`, one stream per lane), because the read lane
    changes when a lane is reset and the new one needs its own history.
    """

    def __init__(self, lanes: int, frames: int, n_labels: int) -> None:
        self.lanes, self.frames, self.n_labels = lanes, frames, n_labels
        self._mean = MovingMean(frames, n_labels, lanes)

    def reset(self) -> None:
        self._mean.reset()

    def process(self, logits: np.ndarray, lane: int, context: int) -> np.ndarray:
        """Pooled posteriors ``[k, n_labels]`` of ``lane``.

        Args:
            logits: this call's logits of every lane, ``[lanes, k, n_labels]``.
            lane: the lane to read.
            context: frames ``lane`` has run since its last reset, these ``k`` included.
        """
        rows = self._mean.push(logits)
        return softmax(self._mean.mean(rows, lane, context - logits.shape[1]))


def _as_mono(chunk: np.ndarray) -> np.ndarray:
    chunk = np.asarray(chunk)
    if chunk.ndim != 1:
        raise ValueError(f"expected mono samples of shape [n], got {chunk.shape}")
    if chunk.dtype == np.int16 or chunk.dtype == np.float32:
        return chunk
    if np.issubdtype(chunk.dtype, np.floating):
        return chunk.astype(np.float32)
    raise TypeError(f"expected int16 or float samples, got {chunk.dtype}")
