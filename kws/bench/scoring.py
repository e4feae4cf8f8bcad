"""The scoring of detections against a labelled stream's ground truth (torch-free).

A detection of keyword ``k`` within ``[event start, word end + tolerance]`` of a not-yet-detected event of
``k`` is a hit; every other detection is a false accept, attributed to where it happened. The scorer reads
only the ground truth records (:class:`~kws.bench.events.StreamEvent`); it knows nothing of how a stream is
made.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kws.bench.events import KIND_KEYWORD, StreamEvent

CONTEXT_KEYWORD_WINDOW, CONTEXT_NOISE = "keyword window", "noise"
"""Where a false accept happened: in a keyword event's window (a wrong keyword or a repeat), in an unknown or
negative event (or within the tolerance after it), or in background noise only."""
MATCH_TOLERANCE_SECONDS = 1.0
"""A keyword detected up to this long after the end of the spoken word is a hit."""
POISSON_CONFIDENCE = 0.95
"""Confidence of the upper bound given for false-accept rates."""
SECONDS_PER_HOUR = 3600.0


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


@dataclass(frozen=True)
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
