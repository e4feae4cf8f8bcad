"""The ground truth of a labelled stream: what was played where (torch-free).

Shared vocabulary of the stream builder (:mod:`kws.bench.streams`), which writes these records, and the
scorer (:mod:`kws.bench.scoring`), which reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KIND_KEYWORD, KIND_UNKNOWN, KIND_NEGATIVE = "keyword", "unknown", "negative"
"""Event kinds: a test-split keyword clip, a test-split ``_unknown_`` clip, a recording of non-keyword speech."""
EVENT_TIME_DIGITS = 4
"""Decimals of the times and levels of an event in the report (0.1 ms)."""


@dataclass(frozen=True)
class StreamEvent:
    """One event of a rendered stream (times in s from the stream start).

    Attributes:
        kind: :data:`KIND_KEYWORD`, :data:`KIND_UNKNOWN` or :data:`KIND_NEGATIVE`.
        label: the keyword (keyword events), the word (unknown events) or the negative's folder name.
        source: where the utterance comes from (a path, for the report).
        start, end: the utterance's first and last sample (s).
        word_start, word_end: the spoken word (keyword events; for other events the loudest word) (s).
        use, gain_db, snr_db: how it was played (the planned event's reuse count, gain and SNR, dB).
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

    def rounded(self) -> StreamEvent:
        """The event as the report keeps it: times and levels to ``EVENT_TIME_DIGITS`` decimals."""
        return StreamEvent(**self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, EVENT_TIME_DIGITS) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class StreamComposition:
    """What a stream is made of (durations in s).

    Attributes:
        keywords_per_label: keyword events per keyword.
        snr_db, gap_seconds: the ranges the events' SNR (dB) and the gaps before them (s) were drawn from.
        notes: what the report should say about subsets and reuse.
    """

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
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
