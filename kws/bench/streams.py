"""Long labelled test streams for streaming detection benchmarks: planning and rendering (torch-free).

A stream is a sequence of *slots*: a gap of background noise (``GAP_SECONDS``) followed by one *event*:

* a **keyword** event: a test-split keyword clip, whose spoken word's end is estimated from the clip's
  energy envelope (:func:`kws.data.words.word_span`);
* an **unknown** event: a test-split ``_unknown_`` clip (another Speech Commands word);
* a **negative** event: a recording of non-keyword speech (e.g. people saying other wake words), any length.

A noise bed runs under the whole stream: random stretches of the background-noise recordings, cross-faded at
slot boundaries, scaled per slot so that the event's speech sits at a random SNR (``SNR_DB``) above it. The
stream is written as 16-bit PCM WAV chunk by chunk (memory does not grow with its length), so that it can be
run through exactly the path of ``kws listen --input FILE``.

Composition (:func:`plan_stream`): every keyword clip once, as long as keyword slots take between
``KEYWORD_SHARE_MIN`` and ``KEYWORD_SHARE_MAX`` of the requested duration; a shorter stream takes a
class-balanced subset, a longer one reuses clips (each reuse at another gain, SNR and noise). The rest of the
duration is filled with non-keyword events: each ``_unknown_`` clip at most once, then negatives (reused only
once all have been used). The events are put in a random order.

The ground truth of a rendered stream is a list of :class:`~kws.bench.events.StreamEvent`; scoring detections
against it is :mod:`kws.bench.scoring`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws.bench.events import KIND_KEYWORD, KIND_NEGATIVE, KIND_UNKNOWN, StreamComposition, StreamEvent
from kws.bench.utterances import StreamSetError, Utterance
from kws.data.audio import AudioError, float_to_int16
from kws.data.words import rms, word_span

logger = logging.getLogger(__name__)

GAP_SECONDS = (1.0, 2.0)
"""Background noise before each event: uniform in this range (s)."""
SNR_DB = (10.0, 30.0)
"""Default range of the event speech level over the noise bed (dB, uniform)."""
REUSE_GAIN_DB = 6.0
"""A reused clip is played at a random gain within +-this (dB); a first use keeps the recording's level."""
PEAK_LIMIT = 0.99
"""Events louder than this after the gain are scaled down to it (no clipping of the speech itself)."""
KEYWORD_SHARE_MIN, KEYWORD_SHARE_MAX = 0.25, 0.5
"""Bounds of the share of the stream's duration taken by keyword slots."""
TAIL_SECONDS = 2.0
"""Noise after the last event, so that its detection can still happen."""
CROSSFADE_SECONDS = 0.02
"""Cross-fade of the noise bed at slot boundaries (another noise stretch, another level)."""
FALLBACK_NOISE_DBFS = -60.0
"""Level of the white noise used when no background-noise recording is available (dBFS)."""
FALLBACK_NOISE_SECONDS = 10.0
SILENT_RMS = 1e-6
"""Noise recordings quieter than this (RMS) are digital silence and are not used."""


# ---------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PlannedEvent:
    """One slot of the stream: the gap before it and how its utterance is played.

    Attributes:
        utterance: what is played.
        use: 0 for the first use of this utterance, 1 for the first reuse, ...
        gap_seconds: noise before the event (s).
        gain_db: gain applied to the utterance (dB).
        snr_db: speech level over the noise bed (dB).
    """

    utterance: Utterance
    use: int
    gap_seconds: float
    gain_db: float
    snr_db: float


def _class_interleaved(utterances: Sequence[Utterance], rng: np.random.Generator) -> list[Utterance]:
    """Shuffled within each label, then taken one label after the other: any prefix is class-balanced."""
    by_label: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_label.setdefault(u.label, []).append(u)
    groups = [[g[i] for i in rng.permutation(len(g))] for _, g in sorted(by_label.items())]
    order = []
    for i in range(max((len(g) for g in groups), default=0)):
        order.extend(g[i] for g in groups if i < len(g))
    return order


def plan_stream(
    keywords: Sequence[Utterance],
    unknowns: Sequence[Utterance],
    negatives: Sequence[Utterance],
    seconds: float,
    seed: int,
    snr_db: tuple[float, float] = SNR_DB,
) -> list[PlannedEvent]:
    """The events of a stream of about ``seconds`` (see the module docstring for the composition rules).

    Raises:
        StreamSetError: no keyword clip, or a non-positive duration.
    """
    if not keywords:
        raise StreamSetError("no keyword clips for the stream")
    if seconds <= 0:
        raise StreamSetError(f"stream duration must be positive, got {seconds:g} s")
    rng = np.random.default_rng(seed)
    mean_gap = float(np.mean(GAP_SECONDS))

    def event(u: Utterance, use: int) -> PlannedEvent:
        gain = float(rng.uniform(-REUSE_GAIN_DB, REUSE_GAIN_DB)) if use else 0.0
        return PlannedEvent(u, use, float(rng.uniform(*GAP_SECONDS)), gain, float(rng.uniform(*snr_db)))

    slot = float(np.mean([u.seconds for u in keywords])) + mean_gap
    n_min = math.ceil(KEYWORD_SHARE_MIN * seconds / slot)
    n_max = max(1, math.floor(KEYWORD_SHARE_MAX * seconds / slot))
    n_keywords = min(max(len(keywords), n_min), n_max)
    order = _class_interleaved(keywords, rng)
    planned = [event(order[i % len(order)], i // len(order)) for i in range(n_keywords)]

    budget = seconds - sum(p.utterance.seconds + p.gap_seconds for p in planned)
    pools = {
        KIND_UNKNOWN: [unknowns[i] for i in rng.permutation(len(unknowns))],
        KIND_NEGATIVE: [negatives[i] for i in rng.permutation(len(negatives))],
    }
    taken = {KIND_UNKNOWN: 0, KIND_NEGATIVE: 0}
    while budget > 0 and (pools[KIND_UNKNOWN] or pools[KIND_NEGATIVE]):
        # unknown clips are used once each, interleaved with negatives; then negatives alone (reused when
        # all have been used); without negatives, unknown clips are reused
        fresh_unknown = taken[KIND_UNKNOWN] < len(pools[KIND_UNKNOWN])
        if not pools[KIND_NEGATIVE] or (fresh_unknown and rng.random() < 0.5):
            kind = KIND_UNKNOWN
        else:
            kind = KIND_NEGATIVE
        pool, i = pools[kind], taken[kind]
        planned.append(event(pool[i % len(pool)], i // len(pool)))
        taken[kind] += 1
        budget -= planned[-1].utterance.seconds + planned[-1].gap_seconds
    return [planned[i] for i in rng.permutation(len(planned))]


# -------------------------------------------------------------------------------------------- render


@dataclass(frozen=True)
class StreamSet:
    """A rendered stream: the WAV file, its ground truth and its composition."""

    path: Path
    sample_rate: int
    seconds: float
    events: list[StreamEvent]
    composition: StreamComposition

    @property
    def keyword_events(self) -> list[StreamEvent]:
        return [e for e in self.events if e.kind == KIND_KEYWORD]


class NoiseBed:
    """Continuous background noise: random stretches of the recordings, each normalised to unit RMS, scaled
    per slot and cross-faded over ``CROSSFADE_SECONDS`` at slot boundaries.

    Args:
        noises: float32 recordings ``[samples]`` (silent ones are dropped); empty: white noise.
        rng: random generator (stretch choice).
    """

    def __init__(self, noises: Sequence[np.ndarray], sample_rate: int, rng: np.random.Generator) -> None:
        usable = [n for n in noises if len(n) and rms(n) > SILENT_RMS]
        if not usable:
            usable = [rng.standard_normal(round(FALLBACK_NOISE_SECONDS * sample_rate)).astype(np.float32)]
        self.noises = [(n / np.float32(rms(n))).astype(np.float32) for n in usable]
        self.rng = rng
        self.fade = max(1, round(CROSSFADE_SECONDS * sample_rate))
        self._current: tuple[int, int, float] | None = None  # (noise index, next sample, level)

    def _take(self, index: int, start: int, n: int) -> np.ndarray:
        noise = self.noises[index]
        return np.take(noise, np.arange(start, start + n), mode="wrap")

    def take(self, n: int, level: float) -> np.ndarray:
        """``n`` samples of a new stretch at RMS ``level``, cross-faded from the previous stretch."""
        index = int(self.rng.integers(len(self.noises)))
        start = int(self.rng.integers(len(self.noises[index])))
        out = self._take(index, start, n) * np.float32(level)
        if self._current is not None:
            k = min(self.fade, n)
            ramp = np.linspace(0.0, 1.0, k, endpoint=False, dtype=np.float32)
            prev_index, prev_next, prev_level = self._current
            previous = self._take(prev_index, prev_next, k) * np.float32(prev_level)
            out[:k] = out[:k] * ramp + previous * (1 - ramp)
        self._current = (index, start + n, level)
        return out.astype(np.float32, copy=False)

    @property
    def level(self) -> float:
        """RMS level of the current stretch (``FALLBACK_NOISE_DBFS`` before the first)."""
        return self._current[2] if self._current is not None else 10.0 ** (FALLBACK_NOISE_DBFS / 20.0)


def render_slot(
    p: PlannedEvent,
    bed: NoiseBed,
    sample_rate: int,
    at: int,
    effect: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, StreamEvent]:
    """One slot: ``p.gap_seconds`` of noise, then the utterance (at ``p.gain_db``, peak-limited, passed
    through ``effect`` if given, e.g. a room's reverberation) over the bed at ``p.snr_db``.

    Args:
        at: the slot's first sample in the stream (for the event's times).

    Returns:
        float32 ``[samples]`` of the slot, and its event (times in s from the stream start).

    Raises:
        StreamSetError: the utterance cannot be read.
    """
    u = p.utterance
    try:
        audio = u.load(sample_rate) * np.float32(10.0 ** (p.gain_db / 20.0))
    except AudioError as exc:
        raise StreamSetError(str(exc)) from None
    if effect is not None:
        audio = effect(audio)
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > PEAK_LIMIT:
        audio *= np.float32(PEAK_LIMIT / peak)
    span = word_span(audio, sample_rate)
    level = span.active_rms / 10.0 ** (p.snr_db / 20.0)
    gap = round(p.gap_seconds * sample_rate)
    segment = bed.take(gap + len(audio), level)
    segment[gap:] += audio
    start = (at + gap) / sample_rate
    event = StreamEvent(
        kind=u.kind,
        label=u.label,
        source=u.source,
        start=start,
        end=start + len(audio) / sample_rate,
        word_start=start + span.start,
        word_end=start + span.end,
        use=p.use,
        gain_db=p.gain_db,
        snr_db=p.snr_db,
    )
    return segment, event


def render_stream(
    plan: Sequence[PlannedEvent],
    noises: Sequence[np.ndarray],
    sample_rate: int,
    path: str | Path,
    seed: int,
) -> tuple[list[StreamEvent], float]:
    """Write the planned stream to ``path`` (16-bit PCM WAV, mono, ``sample_rate`` Hz), slot by slot
    (:func:`render_slot`), then ``TAIL_SECONDS`` of noise.

    Returns:
        the events with their times, and the stream duration (s).

    Raises:
        StreamSetError: an utterance cannot be read.
    """
    import soundfile as sf

    rng = np.random.default_rng([seed, 1])
    bed = NoiseBed(noises, sample_rate, rng)
    events: list[StreamEvent] = []
    written = 0
    wav = sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV")
    with wav as out:
        for p in plan:
            segment, event = render_slot(p, bed, sample_rate, written)
            out.write(float_to_int16(segment))
            events.append(event)
            written += len(segment)
        tail = round(TAIL_SECONDS * sample_rate)
        out.write(float_to_int16(bed.take(tail, bed.level)))
        written += tail
    return events, written / sample_rate


def composition(
    events: Sequence[StreamEvent],
    seconds: float,
    keywords_available: int,
    negatives_available: int,
    noise_source: str,
    snr_db: tuple[float, float],
    seed: int,
) -> StreamComposition:
    """Summary of a rendered stream, with notes on subsets and reuse."""

    def of(kind: str) -> list[StreamEvent]:
        return [e for e in events if e.kind == kind]

    kw, unk, neg = of(KIND_KEYWORD), of(KIND_UNKNOWN), of(KIND_NEGATIVE)
    event_seconds = sum(e.end - e.start for e in events)
    comp = StreamComposition(
        seconds=seconds,
        keyword_events=len(kw),
        keyword_clips=len({e.source for e in kw}),
        keyword_clips_available=keywords_available,
        keyword_reuses=sum(e.use > 0 for e in kw),
        keyword_seconds=sum(e.end - e.start for e in kw),
        keyword_word_seconds=sum(e.word_end - e.word_start for e in kw),
        keywords_per_label=dict(sorted(Counter(e.label for e in kw).items())),
        unknown_events=len(unk),
        unknown_clips=len({e.source for e in unk}),
        unknown_reuses=sum(e.use > 0 for e in unk),
        unknown_seconds=sum(e.end - e.start for e in unk),
        negative_events=len(neg),
        negative_files=len({e.source for e in neg}),
        negative_files_available=negatives_available,
        negative_reuses=sum(e.use > 0 for e in neg),
        negative_seconds=sum(e.end - e.start for e in neg),
        noise_only_seconds=seconds - event_seconds,
        noise_source=noise_source,
        snr_db=tuple(snr_db),
        gap_seconds=GAP_SECONDS,
        seed=seed,
    )
    notes: list[str] = []
    if comp.keyword_clips < keywords_available:
        notes.append(
            f"the stream is too short for every keyword clip: a class-balanced subset of "
            f"{comp.keyword_clips} of the {keywords_available} clips is used"
        )
    if comp.keyword_reuses:
        notes.append(
            f"{keywords_available} keyword clips are too few for this duration: "
            f"{comp.keyword_reuses} keyword events reuse a clip (at another gain, SNR "
            "and noise)"
        )
    if comp.unknown_reuses:
        notes.append(f"{comp.unknown_reuses} unknown-word events reuse a clip (no negatives to fill with)")
    if comp.negative_reuses:
        notes.append(f"{comp.negative_reuses} negative events reuse a recording (all {negatives_available} were used)")
    if 0 < comp.negative_files < negatives_available:
        notes.append(
            f"{comp.negative_files} of the {negatives_available} negative recordings fit in this "
            "duration (a longer stream uses more of them)"
        )
    if negatives_available == 0:
        notes.append("no negatives given (--negatives): the only non-keyword speech is unknown-word clips")
    return dataclasses.replace(comp, notes=tuple(notes))
