"""``kws bench --verifier FILE``: the second stage on the bench's two streams, through the runtime's own path
(:class:`~kws.runtime.verifier.VerifiedSpotter` in :class:`~kws.runtime.stream.StreamRunner`, as ``kws listen
--verifier`` runs it).

The mixed stream runs once more, verified (its first-stage figures in the report stay those of the plain run;
the verified run gives both "with" and "without", :mod:`kws.bench.verification`). The negative stream's passes
run verified in the same pass (:func:`kws.bench.negative_stream.run_negative_stream`): its report keeps the first
stage's figures, and the verifier's are added up over the passes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kws.bench.events import KIND_NEGATIVE, StreamEvent
from kws.bench.scoring import SECONDS_PER_HOUR, score_detections
from kws.bench.verification import (
    CheckCost,
    VerifiedRun,
    VerifierPoint,
    VerifierReport,
    VerifierStream,
    combine,
    meets_rule,
    run_verified,
    sum_points,
    verifier_points,
)

MIXED, NEGATIVE = "mixed stream", "negative stream"


def load_verifier(path: Any, threads: int) -> Any:
    """The bench's :class:`~kws.runtime.verifier.Verifier` (its own settings)."""
    from kws.runtime.verifier import Verifier

    return Verifier(path, threads)


def _at(points: Sequence[VerifierPoint], threshold: float) -> VerifierPoint:
    return next(p for p in points if p.threshold == threshold)


def verify_mixed(model: Any, config: Any, verifier: Any, stream: Any, tolerance: float) -> tuple[VerifierStream, float]:
    """The mixed stream (its WAV file) through the verified path: its figures and the run's CPU per audio
    second (ms, first stage and checks)."""
    from kws.runtime import KeywordSpotter
    from kws.runtime.files import FileSource

    spotter = KeywordSpotter(model, config)
    chunk = spotter.engine.chunk_frames * spotter.info.hop_samples / spotter.sample_rate
    run = run_verified(spotter, verifier, FileSource(stream.path, spotter.sample_rate, chunk))
    points = verifier_points(run, stream.events, stream.seconds, tolerance)
    result = VerifierStream(MIXED, _at(points, run.threshold), points, CheckCost.of(run.checks))
    return result, run.stats["cpu_ms_per_audio_second"]


@dataclass(frozen=True)
class VerifiedPass:
    """One negative pass through the verified path: the run, its points and its real-speech false accepts
    (with the verifier, and without)."""

    run: VerifiedRun
    points: tuple[VerifierPoint, ...]
    real: int
    real_without: int
    real_hours: float


def verified_pass(spotter: Any, stats: Any, found: list[Any], events: list[StreamEvent], seconds: float,
                  tolerance: float) -> VerifiedPass:  # fmt: skip
    """A pass just run through ``spotter`` (a recording VerifiedSpotter, before its reset): ``found`` is what it
    confirmed."""
    run = VerifiedRun(checks=tuple(spotter.checks), stats=stats.to_dict(), threshold=spotter.verifier.threshold)
    with_ = score_detections(found, events, seconds, tolerance)
    without = score_detections(run.candidates, events, seconds, tolerance)
    real_hours = sum(e.end - e.start for e in events if e.kind == KIND_NEGATIVE) / SECONDS_PER_HOUR
    return VerifiedPass(
        run, verifier_points(run, events, seconds, tolerance), with_.false_accepts_by_context.get(KIND_NEGATIVE, 0),
        without.false_accepts_by_context.get(KIND_NEGATIVE, 0), real_hours,
    )  # fmt: skip


def negative_verifier_stream(passes: Sequence[VerifiedPass]) -> VerifierStream:
    """The passes' figures added up."""
    points = sum_points([p.points for p in passes])
    checks = [c for p in passes for c in p.run.checks]
    return VerifierStream(
        NEGATIVE, _at(points, passes[0].run.threshold), points, CheckCost.of(checks),
        real_speech_false_accepts=sum(p.real for p in passes),
        real_speech_false_accepts_without=sum(p.real_without for p in passes),
        real_speech_hours=sum(p.real_hours for p in passes),
    )  # fmt: skip


def verifier_report(verifier: Any, mixed: VerifierStream, mixed_cpu_ms: float,
                    negative: VerifierStream | None) -> VerifierReport:  # fmt: skip
    """The report of both streams; ``combined`` and the rule on both together; ``cost``: the mixed stream's
    checks (its confirmed detections are keywords: the added latency is theirs)."""
    combined = combine(mixed.at_threshold, negative.at_threshold if negative is not None else None)
    cost = mixed.cost
    return VerifierReport(
        path=str(verifier.path), threshold=verifier.threshold, window_ms=verifier.window_ms,
        window_end_ms=verifier.window_end_ms, attribution=verifier.meta.attribution,
        teacher=dict(verifier.meta.teacher), mixed=mixed, negative=negative, combined=combined, cost=cost,
        cpu_ms_per_audio_second=mixed_cpu_ms, meets_rule=meets_rule(combined),
    )  # fmt: skip
