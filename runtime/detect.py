"""From per-frame posteriors to keyword detections (the ideas of TensorFlow's recognize_commands.py).

1. Smoothing: a moving average of each class posterior over ``smoothing_ms`` (fewer frames at the start).
2. Threshold: a keyword is a candidate when its smoothed posterior reaches its threshold; ``_silence_`` and
   ``_unknown_`` are never reported. The candidate with the highest score wins.
3. Refractory time: after a detection nothing is reported for ``refractory_ms`` (one utterance, one
   detection), and a keyword that was above its threshold while it could not be reported (it was just
   reported, or it was suppressed) must fall below its threshold again before it can be reported. A long
   plateau, or a confusable second keyword riding on the same utterance, therefore gives no second detection.
4. Patience (optional, ``patience`` frames, default 1): a keyword only counts as over its threshold once its
   smoothed posterior has stayed there for that many consecutive frames (a one-frame spike is not reported).

Both stages keep their own small state and give the same result whatever the block sizes, so a recorded
score trace (:class:`ScoreTrace`) re-evaluated with :func:`detections_from_scores` gives exactly the
detections of the live run, which makes threshold sweeps cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kws.errors import ConfigError
from kws.runtime.config import (
    DEFAULT_PATIENCE,
    DEFAULT_THREADS,
    NON_KEYWORD_LABELS,
    SpotterConfig,
    frames_for,
    spotter_config,
)
from kws.runtime.engine import MovingMean, StreamEngine
from kws.runtime.model import ModelInfo, StreamingModel, load_model


@dataclass(frozen=True)
class Detection:
    """One reported keyword.

    Attributes:
        time: end of the frame that triggered it, in seconds from the start of the stream.
        keyword: the label.
        confidence: its smoothed posterior at that frame, in [0, 1].
        frame: index of that frame in the stream.
    """

    time: float
    keyword: str
    confidence: float
    frame: int

    def to_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


class Smoother:
    """Streaming moving average over the last ``window`` frames (fewer at the start of the stream).

    Works on preallocated buffers (:class:`kws.runtime.engine.MovingMean`): the last ``window - 1`` frames
    followed by the new ones; a call's averages are one MatMul.
    """

    def __init__(self, window: int, n_labels: int) -> None:
        self._mean = MovingMean(window, n_labels)
        self.window = window
        self.n_labels = n_labels
        self.reset()

    def reset(self) -> None:
        self._mean.reset()
        self._seen = 0

    def process(self, scores: np.ndarray) -> np.ndarray:
        """``[k, n_labels]`` posteriors -> ``[k, n_labels]`` averages (a new float32 array)."""
        k = len(scores)
        if self.window == 1 or k == 0:
            self._seen += k
            return np.array(scores, dtype=np.float32)
        out = self._mean.mean(self._mean.push(scores[None]), 0, self._seen)
        self._seen += k
        return out


class Decider:
    """Thresholds, patience, winner selection and refractory time over smoothed posteriors.

    Args:
        thresholds: per label ``[n_labels]``; ``inf`` for labels never reported.
        refractory_frames: frames after a detection during which nothing is reported.
        patience: consecutive frames at or over its threshold before a label counts as over it (>= 1).
    """

    def __init__(self, thresholds: np.ndarray, refractory_frames: int, patience: int = DEFAULT_PATIENCE) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.refractory_frames = refractory_frames
        self.patience = patience
        self.reset()

    def reset(self) -> None:
        self._everything = (1 << len(self.thresholds)) - 1  # a bit per label
        self._armed = self._everything  # labels that may be reported (bit mask)
        self._last: int | None = None
        self._runs = np.zeros(len(self.thresholds), dtype=np.int64)  # frames over threshold so far, per label

    def _over(self, smoothed: np.ndarray) -> np.ndarray:
        """bool ``[k, n_labels]``: over threshold, for ``patience`` consecutive frames (carried across calls)."""
        above = smoothed >= self.thresholds
        if self.patience == 1:
            return above
        if not above.any():
            self._runs.fill(0)
            return above
        runs = np.empty(above.shape, dtype=np.int64)
        current = self._runs
        for t, row in enumerate(above):
            current = np.where(row, current + 1, 0)
            runs[t] = current
        self._runs = current
        return runs >= self.patience

    def process(self, first_frame: int, smoothed: np.ndarray) -> list[tuple[int, int, float]]:
        """Smoothed ``[k, n_labels]`` of frames ``first_frame...`` -> ``(frame, label index, score)`` hits.

        The labels over threshold in a frame, and the armed labels, are bit masks (Python ints): the frames
        of an utterance over threshold cost a few integer operations each, not numpy calls.
        """
        above = self._over(smoothed)
        if not above.any():  # the usual case: nothing to do but re-arm
            self._armed = self._everything
            return []
        packed = np.packbits(above, axis=1, bitorder="little")
        armed, hits = self._armed, []
        for i, row in enumerate(int.from_bytes(bytes(r), "little") for r in packed):
            if not row:  # a frame with everything below threshold re-arms every keyword
                armed = self._everything
                continue
            armed |= self._everything & ~row
            frame = first_frame + i
            candidates = row & armed
            if candidates and (self._last is None or frame - self._last >= self.refractory_frames):
                scores = smoothed[i]
                best = max((j for j in range(len(scores)) if candidates >> j & 1), key=lambda j: scores[j])
                hits.append((frame, best, float(scores[best])))
                self._last = frame
            armed &= ~row  # reported or suppressed: must fall below threshold before the next report
        self._armed = armed
        return hits


@dataclass(frozen=True)
class ScoreTrace:
    """Per-frame posteriors of a whole stream, for threshold sweeps without re-running the model.

    Attributes:
        labels: class names (score columns).
        times: end of each frame in seconds from the stream start, ``[frames]``.
        raw: the read lane's per-frame posteriors (after the model's pooling), ``[frames, n_labels]``.
        smoothed: ``raw`` after the moving average of ``config.smoothing_ms``.
        config: the configuration the trace was recorded with.
        hop_ms: model hop (ms).
    """

    labels: tuple[str, ...]
    times: np.ndarray
    raw: np.ndarray
    smoothed: np.ndarray
    config: SpotterConfig
    hop_ms: float


def threshold_vector(labels: tuple[str, ...], config: SpotterConfig) -> np.ndarray:
    """Per-label thresholds (``inf`` for ``_silence_``/``_unknown_``).

    Raises:
        ConfigError: a per-keyword threshold names a label that is not a keyword of the model.
    """
    keywords = [x for x in labels if x not in NON_KEYWORD_LABELS]
    unknown = [k for k, _ in config.thresholds if k not in keywords]
    if unknown:
        raise ConfigError(f"threshold for {', '.join(map(repr, unknown))}: not a keyword of this model "
                          f"(keywords: {', '.join(keywords)})")  # fmt: skip
    return np.array([np.inf if x in NON_KEYWORD_LABELS else config.threshold_for(x) for x in labels],
                    dtype=np.float32)  # fmt: skip


def detections_from_scores(trace: ScoreTrace, config: SpotterConfig | None = None) -> list[Detection]:
    """The detections a live run with ``config`` (default: the trace's own) would have reported.

    Only the detection settings of ``config`` are used (thresholds, smoothing, refractory time, patience);
    chunking and lanes are those of the recorded run. Re-smooths ``trace.raw`` if ``smoothing_ms`` changed.
    """
    config = config or trace.config
    window = frames_for(config.smoothing_ms, trace.hop_ms, 1)
    if window == frames_for(trace.config.smoothing_ms, trace.hop_ms, 1):
        smoothed = trace.smoothed
    else:  # in the live run's blocks, so that the float32 arithmetic is exactly the live one
        smoother = Smoother(window, len(trace.labels))
        step = frames_for(trace.config.chunk_ms, trace.hop_ms, 1)
        empty = np.zeros((0, len(trace.labels)), np.float32)
        smoothed = np.concatenate([empty, *(smoother.process(trace.raw[i : i + step])
                                            for i in range(0, len(trace.raw), step))])  # fmt: skip
    decider = Decider(threshold_vector(trace.labels, config), frames_for(config.refractory_ms, trace.hop_ms),
                      config.patience)  # fmt: skip
    return [
        Detection(time=float(trace.times[f]), keyword=trace.labels[j], confidence=score, frame=f)
        for f, j, score in decider.process(0, smoothed)
    ]


class KeywordSpotter:
    """The streaming detector: ``process(chunk) -> detections``.

    Args:
        model: a loaded :class:`StreamingModel`, a path to a streaming ONNX file, or None (shipped model).
        config: streaming and detection settings (default: the model's, :func:`spotter_config`; a given
            config is used as it is).
        threads: onnxruntime intra-op threads when ``model`` is a path.
        record_scores: keep every frame's posteriors for :meth:`trace` (offline analysis only: grows with
            the stream).

    Raises:
        ModelError, ConfigError: bad model or settings (e.g. a threshold for a label the model lacks).
    """

    def __init__(
        self, model: StreamingModel | str | Path | None = None, config: SpotterConfig | None = None, *,
        threads: int = DEFAULT_THREADS, record_scores: bool = False,
    ) -> None:  # fmt: skip
        self.model = load_model(model, threads)
        self.config = config if config is not None else spotter_config(self.model.info)
        info = self.model.info
        self.labels = info.labels
        self.keywords = info.keywords
        self.engine = StreamEngine(self.model, self.config)
        self.smoother = Smoother(frames_for(self.config.smoothing_ms, info.hop_ms, 1), len(self.labels))
        self.decider = Decider(threshold_vector(self.labels, self.config),
                               frames_for(self.config.refractory_ms, info.hop_ms), self.config.patience)  # fmt: skip
        self.record_scores = record_scores
        self._recorded: list[tuple[np.ndarray, np.ndarray]] = []
        self._trace_start = 0  # the stream frame the recorded posteriors start at
        self.detections = 0

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    @property
    def sample_rate(self) -> int:
        """Rate of the audio :meth:`process` expects (Hz)."""
        return self.model.info.sample_rate

    @property
    def audio_seconds(self) -> float:
        """Audio consumed so far (s)."""
        return self.engine.samples / self.sample_rate

    def frame_time(self, frame: int | np.ndarray) -> float | np.ndarray:
        """End of frame ``frame`` (an index or an array of them) in seconds from the stream start."""
        info = self.model.info
        return (frame * info.hop_samples + info.window_samples) / info.sample_rate

    def process(self, chunk: np.ndarray) -> list[Detection]:
        """Consume mono int16 PCM or float32 samples at :attr:`sample_rate`; return the new detections."""
        return self._decide(self.engine.process(chunk))

    def flush(self) -> list[Detection]:
        """End of stream: compute the frames of the whole hops still buffered."""
        return self._decide(self.engine.flush())

    def reset(self) -> None:
        """Forget everything: the next chunk starts a new stream."""
        self.engine.reset()
        self.smoother.reset()
        self.decider.reset()
        self._recorded.clear()
        self._trace_start = 0
        self.detections = 0

    def clear_trace(self) -> None:
        """Drop the recorded posteriors; the stream goes on (state, buffers and frame counter are kept): the next
        :meth:`trace` starts at the next frame, its times still counted from the stream start."""
        self._recorded.clear()
        self._trace_start = self.engine.frames  # every frame computed so far has been decided

    def trace(self) -> ScoreTrace:
        """The recorded posteriors (needs ``record_scores=True``)."""
        if not self.record_scores:
            raise RuntimeError("KeywordSpotter(record_scores=True) is needed for trace()")
        empty = np.zeros((0, len(self.labels)), np.float32)
        raw = np.concatenate([empty, *(r for r, _ in self._recorded)])
        smoothed = np.concatenate([empty, *(s for _, s in self._recorded)])
        times = self.frame_time(self._trace_start + np.arange(len(raw)))
        return ScoreTrace(labels=self.labels, times=times, raw=raw, smoothed=smoothed, config=self.config,
                          hop_ms=self.model.info.hop_ms)  # fmt: skip

    def _decide(self, blocks: list[tuple[int, np.ndarray]]) -> list[Detection]:
        detections: list[Detection] = []
        for first, scores in blocks:
            smoothed = self.smoother.process(scores)
            if self.record_scores:
                self._recorded.append((scores.copy(), smoothed))
            for frame, label, score in self.decider.process(first, smoothed):
                detections.append(Detection(time=self.frame_time(frame), keyword=self.labels[label],
                                            confidence=score, frame=frame))  # fmt: skip
        self.detections += len(detections)
        return detections
