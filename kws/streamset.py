"""Long labelled test streams for streaming detection benchmarks, and the scoring of detections (torch-free).

A stream is a sequence of *slots*: a gap of background noise (``GAP_SECONDS``) followed by one *event*:

* a **keyword** event: a test-split keyword clip, whose spoken word's end is estimated from the clip's
  energy envelope (:func:`word_span`);
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

Scoring (:func:`score_detections`): a detection of keyword ``k`` within ``[event start, word end +
tolerance]`` of a not-yet-detected event of ``k`` is a hit; every other detection is a false accept.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kws.audio import AudioError, float_to_int16, load_audio
from kws.constants import AUDIO_EXTENSIONS
from kws.errors import KWSError

logger = logging.getLogger(__name__)

KIND_KEYWORD, KIND_UNKNOWN, KIND_NEGATIVE = "keyword", "unknown", "negative"
CONTEXT_KEYWORD_WINDOW, CONTEXT_NOISE = "keyword window", "noise"
"""Where a false accept happened: in a keyword event's window (a wrong keyword or a repeat), in an unknown or
negative event (or within the tolerance after it), or in background noise only."""

# Word boundaries from the energy envelope.
ENVELOPE_FRAME_SECONDS = 0.02
ENVELOPE_HOP_SECONDS = 0.01
WORD_DB_BELOW_PEAK = 30.0
"""A frame belongs to speech if its energy is within this many dB of the loudest frame..."""
WORD_DB_ABOVE_FLOOR = 10.0
"""...and at least this many dB above the clip's noise floor (``FLOOR_PERCENTILE`` of the frame energies)."""
FLOOR_PERCENTILE = 10.0
WORD_MAX_INNER_GAP_SECONDS = 0.15
"""Speech runs closer than this are one word (e.g. the closure before the final /p/ of "stop")."""
ENERGY_EPS = 1e-10

# Stream construction.
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

# Scoring.
MATCH_TOLERANCE_SECONDS = 1.0
"""A keyword detected up to this long after the end of the spoken word is a hit."""
POISSON_CONFIDENCE = 0.95
"""Confidence of the upper bound given for false-accept rates."""
SECONDS_PER_HOUR = 3600.0


class StreamSetError(KWSError):
    """The stream cannot be built (no keyword clips, no readable negatives, ...)."""


# --------------------------------------------------------------------------------------------- words


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


@dataclass(frozen=True)
class WordSpan:
    """Where the spoken word is in a clip (s from the clip start), and its level.

    Attributes:
        start, end: first and last speech sample of the word (s).
        active_rms: RMS of every speech frame of the clip (all runs above the threshold, not only the word).
    """

    start: float
    end: float
    active_rms: float


def frame_energies_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level of ``ENVELOPE_FRAME_SECONDS`` frames every ``ENVELOPE_HOP_SECONDS`` (dBFS), ``[frames]``."""
    size = max(1, round(ENVELOPE_FRAME_SECONDS * sample_rate))
    hop = max(1, round(ENVELOPE_HOP_SECONDS * sample_rate))
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < size:
        audio = np.pad(audio, (0, size - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, size)[::hop]
    return 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + ENERGY_EPS)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[first, last]`` frame indices of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def word_span(audio: np.ndarray, sample_rate: int) -> WordSpan:
    """The spoken word of a clip from its energy envelope.

    Frames above ``max(peak - WORD_DB_BELOW_PEAK, floor + WORD_DB_ABOVE_FLOOR)`` are speech; runs closer than
    ``WORD_MAX_INNER_GAP_SECONDS`` are merged, and the merged run with the most energy is the word (a click
    or a breath well after the word does not move its end).

    Args:
        audio: float32 mono ``[samples]``.
        sample_rate: Hz.
    """
    db = frame_energies_db(audio, sample_rate)
    hop = round(ENVELOPE_HOP_SECONDS * sample_rate)
    size = round(ENVELOPE_FRAME_SECONDS * sample_rate)
    peak = int(np.argmax(db))
    threshold = max(db[peak] - WORD_DB_BELOW_PEAK, np.percentile(db, FLOOR_PERCENTILE) + WORD_DB_ABOVE_FLOOR)
    speech = db >= threshold
    speech[peak] = True  # a clip of constant level is all one word
    max_gap = round(WORD_MAX_INNER_GAP_SECONDS / ENVELOPE_HOP_SECONDS)
    merged: list[list[int]] = []
    for first, last in _runs(speech):
        if merged and first - merged[-1][1] - 1 <= max_gap:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    power = 10.0 ** (db / 10.0)
    first, last = max(merged, key=lambda run: float(power[run[0] : run[1] + 1].sum()))
    active = float(np.sqrt(np.mean(power[speech])))
    end = min(len(audio), last * hop + size)
    return WordSpan(start=first * hop / sample_rate, end=end / sample_rate, active_rms=active)


# ----------------------------------------------------------------------------------------- utterances


@dataclass(frozen=True)
class Utterance:
    """One recording the stream can play.

    Attributes:
        kind: :data:`KIND_KEYWORD`, :data:`KIND_UNKNOWN` or :data:`KIND_NEGATIVE`.
        label: the keyword (keyword events), the word (unknown events) or the negative's folder name.
        source: where it comes from (a path, for the report).
        seconds: its duration (s), for planning.
        audio: float32 ``[samples]`` at the stream rate if already in memory, else read from ``source``.
    """

    kind: str
    label: str
    source: str
    seconds: float
    audio: np.ndarray | None = field(default=None, repr=False, compare=False)

    def load(self, sample_rate: int) -> np.ndarray:
        """float32 ``[samples]`` at ``sample_rate`` (Hz)."""
        if self.audio is not None:
            return np.asarray(self.audio, dtype=np.float32)
        return load_audio(self.source, sample_rate)


def file_utterances(paths: Sequence[str | Path], kind: str, label_of: Callable[[Path], str]) -> list[Utterance]:
    """Utterances of audio files, their durations read from the headers (unreadable files skipped, logged)."""
    import soundfile as sf

    out = []
    for path in map(Path, paths):
        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises several types for non-audio data
            logger.warning("skipping %s: %s", path, exc)
            continue
        if info.frames > 0:
            out.append(Utterance(kind, label_of(path), str(path), info.frames / info.samplerate))
    return out


def negative_utterances(folder: str | Path) -> list[Utterance]:
    """The held-out negatives of a folder (any layout; the label is the file's parent folder name).

    Only the half of the files that `kws train --negatives` never uses (:func:`kws.data.negative_split`) is
    returned, so the stream's non-keyword speech is unseen in training whatever the model was trained with.

    Raises:
        DataError: the folder does not exist or holds no audio files.
        StreamSetError: none of its held-out files is readable audio.
    """
    from kws.data import negative_files, negative_split

    held_out = [p for p in negative_files(folder) if negative_split(p) == "held-out"]
    found = file_utterances(held_out, KIND_NEGATIVE, lambda p: p.parent.name)
    if not found:
        raise StreamSetError(f"no readable audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}")
    return found


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
class StreamEvent:
    """One event of a rendered stream (times in s from the stream start).

    Attributes:
        kind, label, source, use, gain_db, snr_db: as planned.
        start, end: the utterance's first and last sample.
        word_start, word_end: the spoken word (keyword events; for other events the loudest word).
    """

    kind: str
    label: str
    source: str
    start: float
    end: float
    word_start: float
    word_end: float
    use: int
    gain_db: float
    snr_db: float

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class StreamComposition:
    """What a stream is made of (durations in s)."""

    seconds: float
    keyword_events: int
    keyword_clips: int
    keyword_clips_available: int
    keyword_reuses: int
    keyword_seconds: float
    keyword_word_seconds: float
    keywords_per_label: dict[str, int]
    unknown_events: int
    unknown_clips: int
    unknown_reuses: int
    unknown_seconds: float
    negative_events: int
    negative_files: int
    negative_files_available: int
    negative_reuses: int
    negative_seconds: float
    noise_only_seconds: float
    noise_source: str
    snr_db: tuple[float, float]
    gap_seconds: tuple[float, float]
    seed: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
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
        usable = [n for n in noises if len(n) and _rms(n) > SILENT_RMS]
        if not usable:
            usable = [rng.standard_normal(round(FALLBACK_NOISE_SECONDS * sample_rate)).astype(np.float32)]
        self.noises = [(n / np.float32(_rms(n))).astype(np.float32) for n in usable]
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


def render_stream(
    plan: Sequence[PlannedEvent],
    noises: Sequence[np.ndarray],
    sample_rate: int,
    path: str | Path,
    seed: int,
) -> tuple[list[StreamEvent], float]:
    """Write the planned stream to ``path`` (16-bit PCM WAV, mono, ``sample_rate`` Hz), slot by slot.

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
    level = 10.0 ** (FALLBACK_NOISE_DBFS / 20.0)
    wav = sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=1, subtype="PCM_16", format="WAV")
    with wav as out:
        for p in plan:
            u = p.utterance
            try:
                audio = u.load(sample_rate) * np.float32(10.0 ** (p.gain_db / 20.0))
            except AudioError as exc:
                raise StreamSetError(str(exc)) from None
            peak = float(np.abs(audio).max()) if len(audio) else 0.0
            if peak > PEAK_LIMIT:
                audio *= np.float32(PEAK_LIMIT / peak)
            span = word_span(audio, sample_rate)
            level = span.active_rms / 10.0 ** (p.snr_db / 20.0)
            gap = round(p.gap_seconds * sample_rate)
            segment = bed.take(gap + len(audio), level)
            segment[gap:] += audio
            out.write(float_to_int16(segment))
            start = (written + gap) / sample_rate
            events.append(
                StreamEvent(
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
            )
            written += len(segment)
        tail = round(TAIL_SECONDS * sample_rate)
        out.write(float_to_int16(bed.take(tail, level)))
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
    if comp.keyword_clips < keywords_available:
        comp.notes.append(
            f"the stream is too short for every keyword clip: a class-balanced subset of "
            f"{comp.keyword_clips} of the {keywords_available} clips is used"
        )
    if comp.keyword_reuses:
        comp.notes.append(
            f"{keywords_available} keyword clips are too few for this duration: "
            f"{comp.keyword_reuses} keyword events reuse a clip (at another gain, SNR "
            "and noise)"
        )
    if comp.unknown_reuses:
        comp.notes.append(f"{comp.unknown_reuses} unknown-word events reuse a clip (no negatives to fill with)")
    if comp.negative_reuses:
        comp.notes.append(
            f"{comp.negative_reuses} negative events reuse a recording (all {negatives_available} were used)"
        )
    if 0 < comp.negative_files < negatives_available:
        comp.notes.append(
            f"{comp.negative_files} of the {negatives_available} negative recordings fit in this "
            "duration (a longer stream uses more of them)"
        )
    if negatives_available == 0:
        comp.notes.append("no negatives given (--negatives): the only non-keyword speech is unknown-word clips")
    return comp


# --------------------------------------------------------------------------------------------- score


def poisson_upper(count: int, confidence: float = POISSON_CONFIDENCE) -> float:
    """One-sided upper confidence bound on the mean of a Poisson count (exact, by bisection).

    E.g. 0 events observed: the mean is below 3.0 with 95% confidence.
    """

    def cdf(lam: float) -> float:
        return math.fsum(math.exp(k * math.log(lam) - lam - math.lgamma(k + 1)) for k in range(count + 1))

    lo, hi = 0.0, max(10.0, 4.0 * (count + 1))
    while cdf(hi) > 1 - confidence:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if cdf(mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass
class DetectionScore:
    """Detection quality of one run over a stream.

    False-accept rates (per hour):
        ``fa_per_hour``: the headline: every false accept (wherever it happened, including wrong-keyword and
        repeated detections during keyword events) per hour of non-keyword audio (the stream minus the
        keyword windows). It is never below either of the two rates below.
        ``fa_per_hour_stream``: every false accept per hour of the whole stream.
        ``fa_per_hour_nonkeyword``: false accepts outside keyword windows per hour of non-keyword audio.

    Latencies (s): detection time (end of the triggering frame) minus the estimated end of the word, for hits.
    """

    threshold: float | None
    keyword_events: int
    hits: int
    false_accepts: int
    false_accepts_in_keyword_windows: int
    stream_hours: float
    nonkeyword_hours: float
    latencies: list[float] = field(default_factory=list, repr=False)
    per_keyword: dict[str, dict[str, float]] = field(default_factory=dict)
    false_accepts_by_context: dict[str, int] = field(default_factory=dict)
    hit_pairs: list[tuple[int, int]] = field(default_factory=list, repr=False)
    """(detection index, index in ``events``) of each hit."""

    @property
    def recall(self) -> float:
        return self.hits / self.keyword_events if self.keyword_events else float("nan")

    @property
    def miss_rate(self) -> float:
        return 1.0 - self.recall

    @property
    def fa_per_hour(self) -> float:
        return self.false_accepts / self.nonkeyword_hours if self.nonkeyword_hours else float("nan")

    @property
    def fa_per_hour_upper(self) -> float:
        """``POISSON_CONFIDENCE`` upper bound of the headline rate."""
        if not self.nonkeyword_hours:
            return float("nan")
        return poisson_upper(self.false_accepts) / self.nonkeyword_hours

    @property
    def fa_per_hour_stream(self) -> float:
        return self.false_accepts / self.stream_hours if self.stream_hours else float("nan")

    @property
    def fa_per_hour_nonkeyword(self) -> float:
        outside = self.false_accepts - self.false_accepts_in_keyword_windows
        return outside / self.nonkeyword_hours if self.nonkeyword_hours else float("nan")

    def latency(self, q: float) -> float:
        """Quantile ``q`` in [0, 1] of the latencies (s); NaN without hits."""
        return float(np.quantile(self.latencies, q)) if self.latencies else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "keyword_events": self.keyword_events,
            "hits": self.hits,
            "recall": self.recall,
            "miss_rate": self.miss_rate,
            "false_accepts": self.false_accepts,
            "false_accepts_in_keyword_windows": self.false_accepts_in_keyword_windows,
            "false_accepts_by_context": self.false_accepts_by_context,
            "fa_per_hour": self.fa_per_hour,
            "fa_per_hour_upper95": self.fa_per_hour_upper,
            "fa_per_hour_stream": self.fa_per_hour_stream,
            "fa_per_hour_nonkeyword": self.fa_per_hour_nonkeyword,
            "stream_hours": self.stream_hours,
            "nonkeyword_hours": self.nonkeyword_hours,
            "latency_median_s": self.latency(0.5),
            "latency_p90_s": self.latency(0.9),
            "per_keyword": self.per_keyword,
        }


def _union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, end), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


def score_detections(
    detections: Sequence[Any],
    events: Sequence[StreamEvent],
    seconds: float,
    tolerance: float = MATCH_TOLERANCE_SECONDS,
    threshold: float | None = None,
) -> DetectionScore:
    """Match detections to the stream's keyword events.

    Args:
        detections: objects with ``.time`` (s from the stream start) and ``.keyword`` (e.g. runtime
            :class:`~kws.runtime.detect.Detection`).
        events: the stream's events.
        seconds: stream duration (s).
        tolerance: how long after the word's end a detection still counts (s).
        threshold: recorded in the result.
    """
    keyword_events = sorted((e for e in events if e.kind == KIND_KEYWORD), key=lambda e: e.start)
    windows = [(e.start, e.word_end + tolerance) for e in keyword_events]
    starts = [w[0] for w in windows]
    longest = max((b - a for a, b in windows), default=0.0)
    others = sorted((e for e in events if e.kind != KIND_KEYWORD), key=lambda e: e.start)
    other_starts = [e.start for e in others]
    other_longest = max((e.end + tolerance - e.start for e in others), default=0.0)
    hit_by: list[int | None] = [None] * len(keyword_events)
    hit_pairs: list[tuple[int, int]] = []
    contexts: Counter[str] = Counter()
    fa_keyword: Counter[str] = Counter()
    in_windows = 0
    order = sorted(range(len(detections)), key=lambda i: detections[i].time)
    for di in order:
        d = detections[di]
        t = float(d.time)
        near = range(bisect.bisect_right(starts, t) - 1, -1, -1)
        inside = []
        for i in near:
            if starts[i] < t - longest:
                break
            if windows[i][0] <= t <= windows[i][1]:
                inside.append(i)
        match = next((i for i in reversed(inside) if keyword_events[i].label == d.keyword and hit_by[i] is None), None)
        if match is not None:
            hit_by[match] = di
            hit_pairs.append((di, match))
            continue
        fa_keyword[d.keyword] += 1
        if inside:
            in_windows += 1
            contexts[CONTEXT_KEYWORD_WINDOW] += 1
            continue
        context = CONTEXT_NOISE
        for i in range(bisect.bisect_right(other_starts, t) - 1, -1, -1):
            e = others[i]
            if e.start < t - other_longest:
                break
            if e.start <= t <= e.end + tolerance:
                context = e.kind
                break
        contexts[context] += 1
    index_of = {id(e): i for i, e in enumerate(events)}
    hours = seconds / SECONDS_PER_HOUR
    keyword_seconds = _union_length(windows, 0.0, seconds)
    per_keyword: dict[str, dict[str, float]] = {}
    for label in sorted({e.label for e in keyword_events} | set(fa_keyword)):
        idx = [i for i, e in enumerate(keyword_events) if e.label == label]
        hits = sum(hit_by[i] is not None for i in idx)
        lat = [float(detections[j].time) - keyword_events[i].word_end for i in idx if (j := hit_by[i]) is not None]
        per_keyword[label] = {
            "events": len(idx),
            "hits": hits,
            "recall": hits / len(idx) if idx else float("nan"),
            "false_accepts": fa_keyword[label],
            "latency_median_s": float(np.median(lat)) if lat else float("nan"),
        }
    latencies = [float(detections[di].time) - keyword_events[ei].word_end for di, ei in hit_pairs]
    return DetectionScore(
        threshold=threshold,
        keyword_events=len(keyword_events),
        hits=len(hit_pairs),
        false_accepts=len(detections) - len(hit_pairs),
        false_accepts_in_keyword_windows=in_windows,
        stream_hours=hours,
        nonkeyword_hours=(seconds - keyword_seconds) / SECONDS_PER_HOUR,
        latencies=latencies,
        per_keyword=per_keyword,
        false_accepts_by_context=dict(sorted(contexts.items())),
        hit_pairs=[(di, index_of[id(keyword_events[ei])]) for di, ei in hit_pairs],
    )
