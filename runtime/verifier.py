"""The second stage: a pretrained verifier that confirms or rejects each detection (onnxruntime only, no torch).

:class:`Verifier` runs a verifier file (:mod:`kws.verifier_format`; made by ``kws teacher --export-verifier``)
on the audio around one detection. :class:`VerifiedSpotter` wraps a
:class:`~kws.runtime.detect.KeywordSpotter`: it keeps the last few seconds of audio in a fixed ring buffer
(:class:`AudioRing`), holds each first-stage detection until the audio up to ``window_end_ms`` after it has
arrived, runs the verifier once on the ``window_ms`` ending there and reports the detection only if the
verifier's probability of that keyword reaches its threshold. Everything else (features, LSTM, smoothing,
thresholds, refractory time) is the first stage's, unchanged; the wrapper has the spotter's interface
(``process``/``flush``/``reset``/``engine``/``detections``...), so :class:`~kws.runtime.stream.StreamRunner`,
``kws listen --verifier`` and ``kws bench --verifier`` all run this one path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kws.format import INPUT_AUDIO, OUTPUT_SCORES, ModelError
from kws.runtime.config import DEFAULT_THREADS, check_range
from kws.runtime.model import make_session
from kws.verifier_format import MAX_WINDOW_END_MS, MAX_WINDOW_MS, VerifierMetadata, check_window

if TYPE_CHECKING:
    from kws.runtime.detect import Detection, KeywordSpotter

INT16_SCALE = np.float32(1.0 / 32768.0)
"""int16 PCM -> float in [-1, 1) (as the engine converts it)."""
MS_PER_S = 1000.0


class Verifier:
    """One verifier file, loaded: :meth:`scores` of a window of audio, :meth:`probability` of a keyword.

    Args:
        path: the verifier ONNX file.
        threads: onnxruntime intra-op threads.
        threshold, window_ms, window_end_ms: override the file's settings (None: the file's).

    Raises:
        ModelError: the file is missing, not ONNX, not a verifier, or its graph does not match its metadata.
        ConfigError: an override is out of range.
    """

    def __init__(self, path: str | Path, threads: int = DEFAULT_THREADS, *, threshold: float | None = None,
                 window_ms: float | None = None, window_end_ms: float | None = None) -> None:  # fmt: skip
        self.path = Path(path)
        self._session = make_session(path, threads)
        props = dict(self._session.get_modelmeta().custom_metadata_map)
        self.meta = VerifierMetadata.from_props(props, self.path)
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [INPUT_AUDIO] or OUTPUT_SCORES not in outputs:
            raise ModelError(f"{self.path}: a verifier graph takes {INPUT_AUDIO!r} and gives {OUTPUT_SCORES!r}, this "
                             f"one takes {inputs} and gives {outputs}")  # fmt: skip
        if threshold is not None:
            check_range("verifier threshold", threshold, 0, 1)
        if window_ms is not None:
            check_range("verifier window (ms)", window_ms, 0, MAX_WINDOW_MS, low_excluded=True)
        if window_end_ms is not None:
            check_range("verifier window end (ms)", window_end_ms, -MAX_WINDOW_END_MS, MAX_WINDOW_END_MS)
        self.threshold = self.meta.threshold if threshold is None else float(threshold)
        self.window_ms = self.meta.window_ms if window_ms is None else float(window_ms)
        self.window_end_ms = self.meta.window_end_ms if window_end_ms is None else float(window_end_ms)
        self.sample_rate = self.meta.sample_rate
        self.labels = self.meta.labels
        self.window_samples = round(self.window_ms * self.sample_rate / MS_PER_S)
        self.end_samples = round(self.window_end_ms * self.sample_rate / MS_PER_S)
        check_window(self.meta, self.window_samples, self.path)
        self._index = {label: i for i, label in enumerate(self.labels)}

    def scores(self, audio: np.ndarray) -> np.ndarray:
        """Class probabilities ``[n_labels]`` of one window, float32 ``[window_samples]`` in [-1, 1]."""
        out = self._session.run([OUTPUT_SCORES], {INPUT_AUDIO: np.asarray(audio, np.float32)[None]})[0]
        return np.asarray(out, np.float32).reshape(-1)

    def probability(self, audio: np.ndarray, keyword: str) -> float:
        """The verifier's probability of ``keyword`` for the window ``audio``."""
        return float(self.scores(audio)[self._index[keyword]])

    def check_labels(self, keywords: tuple[str, ...]) -> None:
        """Every keyword of the first stage is a label of the verifier.

        Raises:
            ModelError: naming the keywords the verifier does not know.
        """
        missing = [k for k in keywords if k not in self._index]
        if missing:
            raise ModelError(f"{self.path}: the verifier has no label {', '.join(map(repr, missing))} of the "
                             f"detector (its labels: {', '.join(self.labels)})")  # fmt: skip

    def describe(self) -> str:
        """One line for ``kws listen``'s start-up message."""
        return (f"verifier {self.path.name} (threshold {self.threshold:g}, {self.window_ms:g} ms ending "
                f"{self.window_end_ms:+g} ms from each detection)")  # fmt: skip


class AudioRing:
    """The last ``capacity`` samples of a stream (float32), in one preallocated buffer (never grows).

    ``end`` counts every sample written; :meth:`read` gives any range, with zeros where it lies before the
    stream, before the oldest sample kept, or after ``end``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 sample, got {capacity}")
        self.capacity = capacity
        self._buffer = np.zeros(capacity, np.float32)
        self.end = 0

    def clear(self) -> None:
        self._buffer.fill(0.0)
        self.end = 0

    def write(self, samples: np.ndarray) -> None:
        """Append float32 samples (only the last ``capacity`` of a long block are kept)."""
        n = len(samples)
        if n >= self.capacity:
            samples, self.end = samples[-self.capacity :], self.end + n - self.capacity
            n = self.capacity
        start = self.end % self.capacity
        first = min(n, self.capacity - start)
        self._buffer[start : start + first] = samples[:first]
        self._buffer[: n - first] = samples[first:]
        self.end += n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` of the stream, float32 ``[stop - start]``."""
        out = np.zeros(max(0, stop - start), np.float32)
        lo, hi = max(start, self.end - self.capacity, 0), min(stop, self.end)
        for a, b in _spans(lo, hi, self.capacity):
            out[a - start : b - start] = self._buffer[a % self.capacity : (b - 1) % self.capacity + 1]
        return out


def _spans(lo: int, hi: int, capacity: int) -> Iterator[tuple[int, int]]:
    """``[lo, hi)`` cut where it wraps around a ring of ``capacity``."""
    while lo < hi:
        b = min(hi, (lo // capacity + 1) * capacity)
        yield lo, b
        lo = b


@dataclass(frozen=True)
class Check:
    """One verification (kept with ``record_checks``).

    Attributes:
        detection: the first-stage detection.
        probability: the verifier's probability of its keyword.
        accepted: reported (probability >= the threshold).
        cpu_seconds, wall_seconds: what the check cost (the onnxruntime call and the window copy).
        found_s: stream time (audio consumed, s) when the first stage reported it.
        verified_s: stream time when its window was complete and it was checked (``- found_s``: the wait).
    """

    detection: Detection
    probability: float
    accepted: bool
    cpu_seconds: float
    wall_seconds: float
    found_s: float
    verified_s: float

    @property
    def added_latency_s(self) -> float:
        """What the second stage adds to this detection's latency: the wait for its window and the check."""
        return self.verified_s - self.found_s + self.wall_seconds


class VerifiedSpotter:
    """A :class:`~kws.runtime.detect.KeywordSpotter` whose detections are confirmed by a :class:`Verifier`.

    Args:
        spotter: the first stage (used as it is).
        verifier: the second stage; its rate must be the spotter's and it must know every keyword.
        record_checks: keep every :class:`Check` in :attr:`checks` (offline analysis: grows with the stream).

    Attributes:
        candidates, accepted: first-stage detections checked, and those reported.
        check_cpu_seconds, check_wall_seconds: spent in the checks.
        ring: the audio kept (``window + |window_end| + 3 chunks`` of samples at most).

    Raises:
        ModelError: the verifier's rate or labels do not fit the spotter.
    """

    def __init__(self, spotter: KeywordSpotter, verifier: Verifier, *, record_checks: bool = False) -> None:
        if verifier.sample_rate != spotter.sample_rate:
            raise ModelError(f"{verifier.path}: the verifier takes {verifier.sample_rate} Hz audio, the detector "
                             f"{spotter.sample_rate} Hz")  # fmt: skip
        verifier.check_labels(spotter.keywords)
        self.spotter, self.verifier = spotter, verifier
        self.piece = spotter.engine.chunk_frames * spotter.info.hop_samples
        """Largest block given to the first stage at once: a detection is never more than ~2 of these old."""
        margin = 3 * self.piece + spotter.info.window_samples
        self.ring = AudioRing(verifier.window_samples + abs(verifier.end_samples) + margin)
        self.record_checks = record_checks
        self.checks: list[Check] = []
        self._pending: list[tuple[Detection, float]] = []
        self.candidates = self.accepted = 0
        self.check_cpu_seconds = self.check_wall_seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        """The first stage's own attributes (``engine``, ``info``, ``config``, ``sample_rate``, ``keywords``,
        ``labels``, ``frame_time``, ``audio_seconds``, ``trace``...): StreamRunner, kws listen, kws bench use them."""
        if name.startswith("_") or name in ("spotter", "verifier"):
            raise AttributeError(name)
        return getattr(self.spotter, name)

    @property
    def detections(self) -> int:
        """Detections reported (confirmed) so far."""
        return self.accepted

    @property
    def check_ms(self) -> float:
        """Mean CPU per check (ms)."""
        return MS_PER_S * self.check_cpu_seconds / self.candidates if self.candidates else 0.0

    def process(self, chunk: np.ndarray) -> list[Detection]:
        """Consume mono int16 or float32 samples; return the confirmed detections whose window is complete."""
        chunk = np.asarray(chunk)
        out: list[Detection] = []
        for start in range(0, len(chunk), self.piece):
            piece = chunk[start : start + self.piece]
            found = self.spotter.process(piece)
            self.ring.write(piece.astype(np.float32) * INT16_SCALE if piece.dtype == np.int16 else
                            piece.astype(np.float32, copy=False))  # fmt: skip
            self._pending += [(d, self.ring.end / self.sample_rate) for d in found]
            out += self._verify_ready(final=False)
        return out

    def flush(self) -> list[Detection]:
        """End of stream: the first stage's last detections, and every pending one checked now (a window that
        reaches past the end of the stream is completed with zeros)."""
        self._pending += [(d, self.ring.end / self.sample_rate) for d in self.spotter.flush()]
        return self._verify_ready(final=True)

    def reset(self) -> None:
        """Forget everything (the checks recorded and the counters too): the next chunk starts a new stream."""
        self.spotter.reset()
        self.ring.clear()
        self._pending.clear()
        self.checks.clear()
        self.candidates = self.accepted = 0
        self.check_cpu_seconds = self.check_wall_seconds = 0.0

    def _window_end(self, detection: Detection) -> int:
        return round(detection.time * self.sample_rate) + self.verifier.end_samples

    def _verify_ready(self, final: bool) -> list[Detection]:
        out: list[Detection] = []
        while self._pending and (final or self._window_end(self._pending[0][0]) <= self.ring.end):
            detection, found_s = self._pending.pop(0)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            end = self._window_end(detection)
            window = self.ring.read(end - self.verifier.window_samples, end)
            probability = self.verifier.probability(window, detection.keyword)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            accepted = probability >= self.verifier.threshold
            self.candidates += 1
            self.accepted += accepted
            self.check_cpu_seconds += cpu
            self.check_wall_seconds += wall
            if self.record_checks:
                self.checks.append(Check(detection, probability, accepted, cpu, wall, found_s,
                                         self.ring.end / self.sample_rate))  # fmt: skip
            if accepted:
                out.append(detection)
        return out

    def summary(self) -> str:
        """One line for the end of ``kws listen``."""
        return (f"verifier: {self.accepted} of {self.candidates} detection(s) confirmed, "
                f"{self.check_ms:.1f} ms CPU per check")  # fmt: skip
