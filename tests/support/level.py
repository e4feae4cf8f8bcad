"""Known posteriors for the detection tests: a streaming engine whose posteriors are a function of the audio
level, so that keywords can be planted at known times with known confidences.

:class:`LevelEngine` is a real :class:`kws.runtime.StreamEngine` (same chunking, lanes, counters and
settings checks, over a real model file) whose per-frame posteriors are not the model's but
``softmax(-GAIN * (level - LEVELS[label]) ** 2)``, ``level`` being the mean sample value of the frame's newest
hop. A constant segment at ``LEVELS["yes"]`` is therefore a confident "yes" for exactly its frames, and
:func:`level_for` gives the level of any wanted posterior. The :func:`use_level_engine` fixture helper makes
every :class:`kws.runtime.KeywordSpotter` (and so ``detect_audio``, ``detect_file``, ``kws listen``) of a
test use it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from kws import constants as C
from kws.runtime import KeywordSpotter, SpotterConfig, StreamEngine
from kws.runtime import config as runtime_config
from support.synthetic import SAMPLE_RATE
from support.tiny import HOP_SAMPLES

LEVELS = {C.SILENCE_LABEL: 0.0, C.UNKNOWN_LABEL: 0.8, "yes": 0.4, "no": -0.4, "up": -3.0, "down": 3.0}
"""The level that gives each label of the tiny model its highest posterior ("up" and "down" are out of the
[-1, 1] sample range: never heard)."""
GAIN = 50.0
RESOLUTION = 2.0**-16
"""Posteriors are multiples of this: float32 sums of them are exact, so the moving average (a difference of
running sums) is exactly the same whatever the block sizes."""
HOP_S = HOP_SAMPLES / SAMPLE_RATE
"""The tiny model's hop, in seconds."""


def level_posteriors(levels: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    """Hop means ``[k]`` -> float32 posteriors ``[k, len(labels)]`` (rounded to :data:`RESOLUTION`)."""
    centers = np.array([LEVELS[x] for x in labels], np.float64)
    logits = -GAIN * (np.asarray(levels, np.float64)[:, None] - centers) ** 2
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (np.round(e / e.sum(1, keepdims=True) / RESOLUTION) * RESOLUTION).astype(np.float32)


class LevelEngine(StreamEngine):
    """A :class:`StreamEngine` with level posteriors (see the module docstring); the model is loaded and
    checked as usual but not run."""

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)
        super().reset()

    def process(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        chunk = np.asarray(chunk)
        audio = chunk.astype(np.float32) / np.float32(32768) if chunk.dtype == np.int16 else chunk
        self.samples += len(audio)
        self._pending = np.concatenate([self._pending, audio.astype(np.float32)])
        blocks, size = [], self.context + self.chunk_frames * self.hop
        while len(self._pending) >= size:
            blocks.append(self._emit(self.chunk_frames))
        return blocks

    def flush(self) -> list[tuple[int, np.ndarray]]:
        k = (len(self._pending) - self.context) // self.hop if len(self._pending) >= self.window else 0
        return [self._emit(k)] if k > 0 else []

    def _emit(self, k: int) -> tuple[int, np.ndarray]:
        """The posteriors of the next ``k`` frames of the pending audio (one "model call")."""
        hops = self._pending[self.context : self.context + k * self.hop].reshape(k, self.hop)
        first = self.frames
        self.frames += k
        self.model_calls += 1
        self._pending = self._pending[k * self.hop :]
        return first, level_posteriors(hops.mean(axis=1), self.model.info.labels)


def use_level_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every :class:`KeywordSpotter` created from now on in this test use :class:`LevelEngine`."""
    monkeypatch.setattr(sys.modules[KeywordSpotter.__module__], "StreamEngine", LevelEngine)


def plant(duration_s: float, events: list[tuple[float, float, str | float]], rate: int = SAMPLE_RATE) -> np.ndarray:
    """A float32 signal at the silence level with segments ``(start_s, length_s, label or level)``."""
    audio = np.full(round(duration_s * rate), LEVELS[C.SILENCE_LABEL], np.float32)
    for start, length, what in events:
        level = LEVELS[what] if isinstance(what, str) else what
        audio[round(start * rate) : round((start + length) * rate)] = level
    return audio


def level_for(label: str, posterior: float, labels: tuple[str, ...]) -> float:
    """The level between silence and ``label`` at which ``label`` gets ``posterior`` (bisection)."""
    lo, hi = LEVELS[C.SILENCE_LABEL], LEVELS[label]
    index = labels.index(label)
    for _ in range(60):
        mid = (lo + hi) / 2
        if level_posteriors(np.array([mid]), labels)[0, index] < posterior:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


STANDARD_EVENTS = [(0.5, 0.4, "yes"), (2.0, 0.5, C.UNKNOWN_LABEL), (3.5, 0.4, "no"), (5.0, 0.3, "yes")]
"""Planted in a 6.5 s signal: three keywords, one _unknown_ segment (never reported)."""


def expected(events) -> list[tuple[str, float]]:
    """The (keyword, onset) of the planted events that are keywords."""
    return [(what, start) for start, _, what in events if what not in runtime_config.NON_KEYWORD_LABELS]


def expected_keywords(events) -> list[str]:
    return [k for k, _ in expected(events)]


def assert_matches(detections, events, config: SpotterConfig) -> None:
    """Exactly the planted keywords, each reported after its onset and within the smoothing delay."""
    want = expected(events)
    assert [d.keyword for d in detections] == [k for k, _ in want]
    latest = config.smoothing_ms / 1000 + 2 * HOP_S
    for d, (_, onset) in zip(detections, want, strict=True):
        assert onset < d.time <= onset + latest, (d, onset)
