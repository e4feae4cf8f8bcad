"""The second-stage verifier measured on a labelled stream, through the runtime's own path.

A stream runs once through :class:`~kws.runtime.stream.StreamRunner` with a
:class:`~kws.runtime.verifier.VerifiedSpotter` that records every check (what ``kws listen --verifier`` runs):
the first stage's detections ("without") and the confirmed ones ("with") come from that one run. A check's
decision depends on nothing but its own probability, so the figures at another verifier threshold are those of
the recorded checks over it (:func:`verified_at`): the live run at that threshold would report exactly those.
Used by ``kws bench --verifier`` and by the choice of the verifier's settings (``kws teacher --export-verifier
... --calibrate-with``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kws.bench.events import StreamEvent
from kws.bench.scoring import poisson_upper, score_detections

VERIFIER_THRESHOLDS: tuple[float, ...] = (
    0.0, 0.001, 0.003, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
    0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99,
)  # fmt: skip
"""Verifier thresholds of the sweep (0: every first-stage detection confirmed)."""
MAX_RECALL_LOSS = 0.01
"""The verifier may cost at most 1 point of recall (issue #9's rule for shipping it on by default)."""
MIN_FA_CUT = 5.0
"""... and must cut false accepts at least 5x."""


@dataclass(frozen=True)
class VerifiedRun:
    """One stream through the verified path.

    Attributes:
        checks: every check (:class:`~kws.runtime.verifier.Check`), in order.
        stats: the runner's :class:`~kws.runtime.stream.StreamStats` as a dict (CPU includes the checks).
        threshold: the verifier threshold of the run.
    """

    checks: tuple[Any, ...]
    stats: dict[str, Any]
    threshold: float

    def verified_at(self, threshold: float) -> list[Any]:
        """The detections a live run at verifier ``threshold`` would report."""
        return [c.detection for c in self.checks if c.probability >= threshold]

    @property
    def candidates(self) -> list[Any]:
        """The first stage's detections (every check)."""
        return [c.detection for c in self.checks]


def run_verified(spotter: Any, verifier: Any, source: Any) -> VerifiedRun:
    """``source`` through ``spotter`` + ``verifier`` (:class:`~kws.runtime.verifier.VerifiedSpotter`, recording
    every check); the spotter is used from its current state and left as the run leaves it."""
    from kws.runtime.stream import StreamRunner
    from kws.runtime.verifier import VerifiedSpotter

    verified = VerifiedSpotter(spotter, verifier, record_checks=True)
    stats = StreamRunner(verified, source).run()
    return VerifiedRun(checks=tuple(verified.checks), stats=stats.to_dict(), threshold=verifier.threshold)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


@dataclass(frozen=True)
class VerifierPoint:
    """Detection figures with the verifier at one threshold, beside the first stage alone on the same run.

    ``fa_cut``: false accepts without / with (inf when none are left; nan when there were none).
    """

    threshold: float
    hits: int
    keyword_events: int
    false_accepts: int
    hits_without: int
    false_accepts_without: int
    nonkeyword_hours: float

    @property
    def recall(self) -> float:
        return _ratio(self.hits, self.keyword_events)

    @property
    def recall_without(self) -> float:
        return _ratio(self.hits_without, self.keyword_events)

    @property
    def recall_loss(self) -> float:
        return self.recall_without - self.recall

    @property
    def fa_per_hour(self) -> float:
        return _ratio(self.false_accepts, self.nonkeyword_hours)

    @property
    def fa_per_hour_without(self) -> float:
        return _ratio(self.false_accepts_without, self.nonkeyword_hours)

    @property
    def fa_per_hour_upper95(self) -> float:
        return _ratio(poisson_upper(self.false_accepts), self.nonkeyword_hours)

    @property
    def fa_cut(self) -> float:
        if not self.false_accepts_without:
            return math.nan
        return self.false_accepts_without / self.false_accepts if self.false_accepts else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold, "hits": self.hits, "keyword_events": self.keyword_events,
            "false_accepts": self.false_accepts, "hits_without": self.hits_without,
            "false_accepts_without": self.false_accepts_without, "nonkeyword_hours": self.nonkeyword_hours,
            "recall": self.recall, "recall_without": self.recall_without, "fa_per_hour": self.fa_per_hour,
            "fa_per_hour_without": self.fa_per_hour_without,
            "fa_per_hour_upper95": self.fa_per_hour_upper95, "fa_cut": self.fa_cut,
        }  # fmt: skip


def verifier_points(run: VerifiedRun, events: Sequence[StreamEvent], seconds: float, tolerance: float,
                    thresholds: Sequence[float] = VERIFIER_THRESHOLDS) -> tuple[VerifierPoint, ...]:  # fmt: skip
    """The run scored against the stream's ``events`` at every verifier threshold (and the run's own)."""
    without = score_detections(run.candidates, events, seconds, tolerance)
    points = []
    for t in sorted({*thresholds, run.threshold}):
        with_ = score_detections(run.verified_at(t), events, seconds, tolerance)
        points.append(VerifierPoint(t, with_.hits, with_.keyword_events, with_.false_accepts, without.hits,
                                    without.false_accepts, without.nonkeyword_hours))  # fmt: skip
    return tuple(points)


def choose_point(points: Sequence[VerifierPoint], max_recall_loss: float = MAX_RECALL_LOSS) -> VerifierPoint:
    """The threshold that removes the most false accepts for at most ``max_recall_loss`` of recall (ties: the
    lower threshold); the lowest threshold if none keeps recall within it."""
    fine = [p for p in points if p.recall_loss <= max_recall_loss + 1e-12]
    if not fine:
        return min(points, key=lambda p: p.threshold)
    return min(fine, key=lambda p: (p.false_accepts, p.threshold))


@dataclass(frozen=True)
class CheckCost:
    """What the checks cost: CPU per check (ms; median and mean) and the latency the second stage adds to a
    confirmed detection (ms; median and p90: the wait for the window's end plus the check)."""

    checks: int
    cpu_ms_median: float
    cpu_ms_mean: float
    added_latency_ms_median: float
    added_latency_ms_p90: float

    @classmethod
    def of(cls, checks: Sequence[Any]) -> CheckCost:
        cpu = [1000 * c.cpu_seconds for c in checks]
        added = [1000 * c.added_latency_s for c in checks if c.accepted]

        def q(values: list[float], p: float) -> float:
            return float(np.quantile(values, p)) if values else math.nan

        return cls(len(checks), q(cpu, 0.5), float(np.mean(cpu)) if cpu else math.nan, q(added, 0.5), q(added, 0.9))


@dataclass(frozen=True)
class VerifierStream:
    """The verifier on one bench stream.

    Attributes:
        name: which stream.
        at_threshold: the figures at the verifier's threshold (with, and the first stage alone).
        sweep: the same at every threshold of :data:`VERIFIER_THRESHOLDS`.
        cost: what the checks cost on this stream.
        real_speech_false_accepts, real_speech_false_accepts_without, real_speech_hours: the negative stream's
            real-speech part (0 for the mixed stream).
    """

    name: str
    at_threshold: VerifierPoint
    sweep: tuple[VerifierPoint, ...]
    cost: CheckCost
    real_speech_false_accepts: int = 0
    real_speech_false_accepts_without: int = 0
    real_speech_hours: float = 0.0


@dataclass(frozen=True)
class VerifierReport:
    """``kws bench --verifier``: the second stage on the bench's streams.

    Attributes:
        path, threshold, window_ms, window_end_ms, attribution, teacher: the verifier and its settings.
        mixed, negative: the mixed keyword stream and the negative stream (None without ``--negative-hours``).
        combined: both streams together (recall from the mixed stream, false accepts over both).
        cost: every check together.
        cpu_ms_per_audio_second: the verified run of the mixed stream (first stage and checks, one core).
        meets_rule: at least :data:`MIN_FA_CUT` times fewer false accepts for at most :data:`MAX_RECALL_LOSS`
            of recall, on ``combined`` (issue #9's rule for shipping it on by default).
    """

    path: str
    threshold: float
    window_ms: float
    window_end_ms: float
    attribution: str
    teacher: dict[str, Any]
    mixed: VerifierStream
    negative: VerifierStream | None
    combined: VerifierPoint
    cost: CheckCost
    cpu_ms_per_audio_second: float
    meets_rule: bool


def combine(mixed: VerifierPoint, negative: VerifierPoint | None) -> VerifierPoint:
    """Recall of the mixed stream, false accepts of both streams over both streams' non-keyword hours."""
    if negative is None:
        return mixed
    return VerifierPoint(
        mixed.threshold, mixed.hits, mixed.keyword_events, mixed.false_accepts + negative.false_accepts,
        mixed.hits_without, mixed.false_accepts_without + negative.false_accepts_without,
        mixed.nonkeyword_hours + negative.nonkeyword_hours,
    )  # fmt: skip


def sum_points(parts: Sequence[Sequence[VerifierPoint]]) -> tuple[VerifierPoint, ...]:
    """The points of several streams (the negative stream's passes) added up, threshold by threshold."""
    out = []
    for same in zip(*parts, strict=True):
        out.append(VerifierPoint(same[0].threshold, *(sum(getattr(p, f) for p in same) for f in (
            "hits", "keyword_events", "false_accepts", "hits_without", "false_accepts_without",
            "nonkeyword_hours"))))  # fmt: skip
    return tuple(out)


def meets_rule(point: VerifierPoint) -> bool:
    """At least :data:`MIN_FA_CUT` times fewer false accepts for at most :data:`MAX_RECALL_LOSS` of recall."""
    return point.recall_loss <= MAX_RECALL_LOSS + 1e-12 and point.fa_cut >= MIN_FA_CUT
