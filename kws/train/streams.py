"""Long synthetic training streams with per-frame targets (numpy, torch-free).

A stream of ``StreamTrainConfig.seconds`` is built on the fly from the training split in memory: events one after
the other, each after a random gap (``GAP_SECONDS``), until the next one does not fit:

* a **keyword** clip (a whole 1 s training clip of a keyword class), its word located by the energy envelope
  (:func:`kws.data.words.word_span`);
* an **unknown** clip (a whole ``_unknown_`` training clip);
* a **negative** piece: ``NEGATIVE_PIECE_SECONDS`` of one of the whole ``--negatives`` recordings (training half),
  picked with odds proportional to its length, from a uniformly random start that may lie before its beginning
  (the piece is then cut at the recording's ends), so that every sample is equally likely to be used and over a
  run every frame is;
* a **noise** gap (``NOISE_GAP_SECONDS`` of the bed alone).

With hard negatives (:meth:`StreamBuilder.use_hard`, mined by :mod:`kws.train.hard_negatives`), a share of the
negative pieces is instead cut around a mined spot (where the model would fire), the spot
``HARD_AFTER_SECONDS`` before the piece's end.

Each speech event gets a random gain (``GAIN_DB``); a noise bed (a random stretch of one of the augmenter's noise
recordings, white noise without any) runs under the whole stream at a random SNR below the events' mean active
speech level.

Targets (:func:`frame_targets`) live on the model's frame grid: frame ``t`` covers samples ``[t * hop, t * hop +
window)`` (``window`` = the FFT size, as the runtime and :func:`kws.format.frames_in` count) and *ends* at ``t * hop
+ window``. A keyword's label index is the target of the frames ending in ``[word_end, word_end + label_window]``;
frames ending inside the word, and those after the label window while the word is still inside the pooling window
(``pool_frames`` frames, as the runtime pools), are :data:`IGNORE`; every other frame is :data:`NEGATIVE` (scored
as "not a keyword": ``_silence_`` or ``_unknown_``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kws.config import FeatureConfig, StreamTrainConfig
from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.data.audio import int16_to_float
from kws.data.augment import noise_scale, random_slice
from kws.data.splits import SplitData
from kws.data.words import word_span
from kws.errors import KWSError
from kws.format import POOL_MEAN, frames_in

IGNORE = -1
"""Frame target: not scored."""
NEGATIVE = -2
"""Frame target: scored as "not a keyword" (``_silence_`` or ``_unknown_``)."""
KIND_KEYWORD, KIND_UNKNOWN, KIND_NEGATIVE, KIND_NOISE = "keyword", "unknown", "negative", "noise"
KINDS = (KIND_KEYWORD, KIND_UNKNOWN, KIND_NEGATIVE, KIND_NOISE)
GAP_SECONDS = (0.1, 1.5)
"""Bed-only gap before each event (s, uniform)."""
NOISE_GAP_SECONDS = (0.5, 2.0)
"""Length of a noise-only event (s, uniform)."""
NEGATIVE_PIECE_SECONDS = (1.0, 4.0)
"""Length of a piece of a negative recording (s, uniform; at most the recording)."""
HARD_AFTER_SECONDS = (0.1, 0.5)
"""A piece around a hard negative ends this long after the mined spot (s, uniform)."""
GAIN_DB = 6.0
"""Each speech event is played at a random gain within +-this (dB)."""
PEAK_LIMIT = 0.99
"""A stream louder than this after mixing is scaled down to it."""
FALLBACK_NOISE_SECONDS = 10.0
"""White noise used as the bed when the run has no noise recordings (s)."""
STREAM_SEED_TAG = 0x73747265
"""Tags the seeds of the training streams (they never coincide with the clip batches' seeds)."""


@dataclass(frozen=True)
class StreamEvent:
    """One event of a training stream (sample positions in the stream, ends exclusive).

    Attributes:
        kind: one of :data:`KINDS`.
        label: the label index (the keyword's for keyword events, ``_unknown_``'s for speech, ``_silence_``'s).
        start, end: the event's samples.
        word_start, word_end: the spoken word of a keyword event (``start``/``end`` for the others).
        source: the clip's row in the split, or the negative recording's index (-1 for noise).
        offset: where in the negative recording the piece starts (samples; 0 for the others).
    """

    kind: str
    label: int
    start: int
    end: int
    word_start: int
    word_end: int
    source: int = -1
    offset: int = 0


@dataclass(frozen=True)
class TrainingStream:
    """A built stream: float32 audio ``[samples]``, int64 targets ``[frames]`` (label, IGNORE or NEGATIVE), events."""

    audio: np.ndarray
    targets: np.ndarray
    events: tuple[StreamEvent, ...]


@dataclass(frozen=True)
class FrameGrid:
    """The model's frames: ``window`` (FFT size) and ``hop`` samples; a stream pools ``pool_frames`` frames."""

    window: int
    hop: int
    pool_frames: int

    @classmethod
    def of(cls, features: FeatureConfig, pooling: str) -> FrameGrid:
        """The grid of a model (``pool_frames``: a clip's frames for mean pooling, 1 for ``last``)."""
        pool = features.num_frames(features.clip_samples) if pooling == POOL_MEAN else 1
        return cls(features.n_fft, features.hop_samples, pool)

    def frames(self, samples: int) -> int:
        """Frames computed from ``samples`` samples (:func:`kws.format.frames_in`)."""
        return frames_in(samples, self.window, self.hop)

    def ends(self, frames: int) -> np.ndarray:
        """int64 ``[frames]``: the (exclusive) end sample of each frame."""
        return np.arange(frames, dtype=np.int64) * self.hop + self.window


def frame_targets(events: Sequence[StreamEvent], frames: int, grid: FrameGrid, label_window: int) -> np.ndarray:
    """Per-frame targets int64 ``[frames]`` of a stream's events (see the module docstring).

    Args:
        label_window: samples after a keyword's word end whose frames are its targets.
    """
    targets = np.full(frames, NEGATIVE, np.int64)
    ends = grid.ends(frames)
    starts = ends - grid.window
    pool_first = starts - (grid.pool_frames - 1) * grid.hop  # start of the earliest frame a frame's pool holds
    keywords = [e for e in events if e.kind == KIND_KEYWORD]
    for e in keywords:  # the word inside the pooling window, after its label window: not scored
        targets[(ends > e.word_start) & (pool_first < e.word_end)] = IGNORE
    for e in keywords:
        targets[(ends >= e.word_end) & (ends <= e.word_end + label_window)] = e.label
    for e in keywords:  # a frame ending inside a word is never a target
        targets[(ends > e.word_start) & (ends < e.word_end)] = IGNORE
    return targets


class StreamBuilder:
    """Builds seeded training streams from a split in memory (see the module docstring).

    Args:
        config: length, label window, event mix and SNR range.
        features: the run's front end (sample rate, frame grid).
        pooling: the model's pooling (how many frames a stream's posteriors pool).
        data: the split (its keyword and ``_unknown_`` clips are played whole).
        labels: the run's labels.
        negatives: whole non-keyword speech recordings, int16 ``[samples]`` each (any length; may be empty).
        noises: background-noise recordings, float32 ``[samples]`` each (may be empty: white noise).

    Raises:
        KWSError: the split has no keyword clip.
    """

    def __init__(
        self,
        config: StreamTrainConfig,
        features: FeatureConfig,
        pooling: str,
        data: SplitData,
        labels: Sequence[str],
        negatives: Sequence[np.ndarray],
        noises: Sequence[np.ndarray],
    ) -> None:
        self.config = config
        self.rate = features.sample_rate
        self.grid = FrameGrid.of(features, pooling)
        self.samples = round(config.seconds * self.rate)
        self.label_window = round(config.label_window_ms * self.rate / 1000)
        self.data = data
        self.n_labels = len(labels)
        self.silence_index, self.unknown_index = labels.index(SILENCE_LABEL), labels.index(UNKNOWN_LABEL)
        is_keyword = (data.labels != self.silence_index) & (data.labels != self.unknown_index)
        self.keyword_rows = np.flatnonzero(is_keyword & ~data.silence)
        self.unknown_rows = np.flatnonzero((data.labels == self.unknown_index) & ~data.silence)
        if not len(self.keyword_rows):
            raise KWSError("the training split has no keyword clip to build training streams from")
        self.negatives = [n for n in negatives if len(n)]
        lengths = np.asarray([len(n) for n in self.negatives], np.float64)
        self.negative_odds = lengths / lengths.sum() if len(lengths) else lengths
        self.noises = [n for n in noises if len(n) and float(np.abs(n).max()) > 0]
        speech_share = config.keyword_fraction + config.unknown_fraction + config.negative_fraction
        available = [
            config.keyword_fraction,
            config.unknown_fraction if len(self.unknown_rows) else 0.0,
            config.negative_fraction if self.negatives else 0.0,
        ]  # an absent kind's share goes to the other speech kinds
        odds = [f * speech_share / sum(available) for f in available] + [max(0.0, 1.0 - speech_share)]
        self.kind_odds = np.asarray(odds) / sum(odds)
        self.use_hard(np.zeros(0, np.int64), np.zeros(0, np.int64), 0.0)

    def use_hard(self, sources: np.ndarray, positions: np.ndarray, fraction: float) -> None:
        """Cut ``fraction`` of the negative pieces from now on around these mined spots: recording index int64
        ``[n]`` (into the ``negatives`` given) and sample int64 ``[n]`` (:mod:`kws.train.hard_negatives`). No spot or
        a zero fraction: the streams are exactly those without hard negatives (no extra draw)."""
        if len(sources) != len(positions) or not 0 <= fraction <= 1:
            raise ValueError("need as many sources as positions and 0 <= fraction <= 1")
        if len(sources) and (sources.min() < 0 or sources.max() >= len(self.negatives)):
            raise ValueError("a hard negative names a recording the builder does not have")
        self.hard_sources, self.hard_positions = np.asarray(sources, np.int64), np.asarray(positions, np.int64)
        self.hard_fraction = float(fraction) if len(sources) else 0.0

    @property
    def frames(self) -> int:
        """Frames of one stream."""
        return self.grid.frames(self.samples)

    def _clip(self, row: int) -> np.ndarray:
        return self.data.float_audio(np.asarray([row]))[0]

    def _event(self, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, StreamEvent, float]:
        """A new event: its audio float32 ``[n]``, the event placed at sample 0, and its active speech RMS (0 for
        noise)."""
        if kind == KIND_NOISE:
            n = round(rng.uniform(*NOISE_GAP_SECONDS) * self.rate)
            return np.zeros(n, np.float32), StreamEvent(kind, self.silence_index, 0, n, 0, n), 0.0
        offset = 0
        if kind == KIND_NEGATIVE:
            if self.hard_fraction and rng.random() < self.hard_fraction:
                spot = int(rng.integers(len(self.hard_sources)))
                source = int(self.hard_sources[spot])
                n = round(rng.uniform(*NEGATIVE_PIECE_SECONDS) * self.rate)
                start = int(self.hard_positions[spot]) + round(rng.uniform(*HARD_AFTER_SECONDS) * self.rate) - n
            else:
                source = int(rng.choice(len(self.negatives), p=self.negative_odds))
                n = round(rng.uniform(*NEGATIVE_PIECE_SECONDS) * self.rate)
                start = int(rng.integers(1 - n, len(self.negatives[source])))  # every sample equally likely
            recording = self.negatives[source]
            offset = max(start, 0)
            audio, label = int16_to_float(recording[offset : start + n]), self.unknown_index
        else:
            rows = self.keyword_rows if kind == KIND_KEYWORD else self.unknown_rows
            source = int(rows[int(rng.integers(len(rows)))])
            audio, label = self._clip(source), int(self.data.labels[source])
        audio = audio * np.float32(10 ** (rng.uniform(-GAIN_DB, GAIN_DB) / 20))
        span = word_span(audio, self.rate)
        word = (round(span.start * self.rate), round(span.end * self.rate)) if kind == KIND_KEYWORD else (0, len(audio))
        return audio, StreamEvent(kind, label, 0, len(audio), *word, source, offset), span.active_rms

    def stream(self, rng: np.random.Generator) -> TrainingStream:
        """One stream of ``config.seconds``, every draw from ``rng``."""
        audio = np.zeros(self.samples, np.float32)
        events: list[StreamEvent] = []
        levels: list[float] = []
        position = 0
        while True:
            position += round(rng.uniform(*GAP_SECONDS) * self.rate)
            kind = KINDS[int(rng.choice(len(KINDS), p=self.kind_odds))]
            piece, event, active_rms = self._event(kind, rng)
            if position + len(piece) > self.samples:
                break
            audio[position : position + len(piece)] = piece
            events.append(
                replace(
                    event,
                    start=position,
                    end=position + len(piece),
                    word_start=position + event.word_start,
                    word_end=position + event.word_end,
                )
            )
            if kind != KIND_NOISE:
                levels.append(active_rms)
            position += len(piece)
        if self.noises:
            bed = random_slice(self.noises[int(rng.integers(len(self.noises)))], self.samples, rng)
        else:
            bed = rng.standard_normal(round(FALLBACK_NOISE_SECONDS * self.rate)).astype(np.float32)
            bed = random_slice(bed, self.samples, rng)
        snr_db = rng.uniform(self.config.snr_db_min, self.config.snr_db_max)
        level = float(np.mean(levels)) if levels else float(10 ** (rng.uniform(-50, -20) / 20))
        audio += bed * noise_scale(level, bed, snr_db)
        peak = float(np.abs(audio).max())
        if peak > PEAK_LIMIT:
            audio *= np.float32(PEAK_LIMIT / peak)
        targets = frame_targets(events, self.frames, self.grid, self.label_window)
        return TrainingStream(audio=audio, targets=targets, events=tuple(events))

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``config.batch`` streams (:meth:`batch_of`)."""
        return self.batch_of(self.config.batch, rng)

    def batch_of(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``count`` streams: float32 audio ``[count, samples]`` and int64 targets ``[count, frames]``."""
        streams = [self.stream(rng) for _ in range(count)]
        return np.stack([s.audio for s in streams]), np.stack([s.targets for s in streams])


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The generator of the stream batch of optimiser step ``step`` (0-based) in process ``rank``."""
    return np.random.default_rng([seed, STREAM_SEED_TAG, rank, step])
