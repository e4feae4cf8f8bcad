"""The ``--verifier`` section of ``bench.md`` and the lines ``kws bench`` prints (every figure from the report)."""

from __future__ import annotations

import math
from typing import Any

from kws.bench.formatting import pct_ci, rate, table
from kws.bench.verification import MAX_RECALL_LOSS, MIN_FA_CUT, VERIFIER_THRESHOLDS, VerifierPoint
from kws.train.evaluate import wilson_interval

SWEEP_SHOWN = (0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
"""Verifier thresholds of the sweep table in bench.md (a subset of :data:`VERIFIER_THRESHOLDS`)."""
assert set(SWEEP_SHOWN) <= set(VERIFIER_THRESHOLDS)


def _recall(hits: int, events: int) -> str:
    return pct_ci(hits / events if events else math.nan, wilson_interval(hits, events) if events else None)


def _fa(count: int, p: VerifierPoint) -> str:
    from kws.bench.scoring import poisson_upper

    if not p.nonkeyword_hours:
        return "n/a"
    return f"{rate(count / p.nonkeyword_hours)} ({rate(poisson_upper(count) / p.nonkeyword_hours)})"


def _cut(p: VerifierPoint) -> str:
    return "n/a" if math.isnan(p.fa_cut) else ("all" if math.isinf(p.fa_cut) else f"{p.fa_cut:.1f}x")


def _row(name: str, p: VerifierPoint) -> list[str]:
    return [name, _recall(p.hits_without, p.keyword_events) if p.keyword_events else "—",
            _recall(p.hits, p.keyword_events) if p.keyword_events else "—",
            _fa(p.false_accepts_without, p), _fa(p.false_accepts, p), _cut(p),
            f"{p.nonkeyword_hours:.2f} h"]  # fmt: skip


def verifier_lines(v: Any) -> list[str]:
    """What ``kws bench`` prints for ``--verifier``."""
    c = v.combined
    return [
        f"verifier {v.path} (threshold {v.threshold:g}, {v.window_ms:g} ms ending {v.window_end_ms:+g} ms): recall "
        f"{100 * c.recall_without:.1f}% -> {100 * c.recall:.1f}%, false accepts/h {rate(c.fa_per_hour_without)} -> "
        f"{rate(c.fa_per_hour)} (both streams, {_cut(c)} fewer); "
        f"{v.cost.cpu_ms_median:.1f} ms CPU per check, added latency {v.cost.added_latency_ms_median:.0f} ms "
        f"(median); {'meets' if v.meets_rule else 'does not meet'} the rule for on by default",
    ]


def verifier_section(report: Any) -> list[str]:
    """``## Second-stage verifier`` (nothing without ``--verifier``)."""
    v = report.verifier
    if v is None:
        return []
    rows = [_row(s.name, s.at_threshold) for s in (v.mixed, v.negative) if s is not None]
    rows.append(_row("both together", v.combined))
    lines = [
        "## Second-stage verifier",
        "",
        f"`{v.path}`: {v.attribution}. Each first-stage detection is held until the audio up to "
        f"{v.window_end_ms:+g} ms after it has arrived, then the verifier scores the {v.window_ms:g} ms ending "
        f"there and the detection is reported only if its keyword's probability is at least {v.threshold:g} "
        "(`kws listen --verifier`, the same code path). Recall with its 95% interval; false accepts per hour with "
        "the 95% Poisson upper bound in brackets.",
        "",
        *table(
            ["stream", "recall without", "recall with", "FA/h without", "FA/h with", "FA cut", "non-keyword audio"],
            rows,
        ),  # fmt: skip
        "",
    ]
    if v.negative is not None and v.negative.real_speech_hours:
        n = v.negative
        lines += [f"Real speech only (negative stream, {n.real_speech_hours:.2f} h): "
                  f"{rate(n.real_speech_false_accepts_without / n.real_speech_hours)} -> "
                  f"{rate(n.real_speech_false_accepts / n.real_speech_hours)} false accepts per hour.", ""]  # fmt: skip
    costs = [f"{s.name}: {s.cost.checks} checks, {s.cost.cpu_ms_median:.1f} ms CPU per check (median; mean "
             f"{s.cost.cpu_ms_mean:.1f})" for s in (v.mixed, v.negative) if s is not None]  # fmt: skip
    lines += [
        "Cost: " + "; ".join(costs) + f". The verified run of the mixed stream took {v.cpu_ms_per_audio_second:.2f} "
        "ms CPU per audio second, first stage included. Added latency of a confirmed detection (the wait for the "
        f"window's end, in whole chunks, plus the check): median {v.cost.added_latency_ms_median:.0f} ms, p90 "
        f"{v.cost.added_latency_ms_p90:.0f} ms.",
        "",
        f"Rule for shipping it on by default (issue #9): at least {MIN_FA_CUT:g}x fewer false accepts for at most "
        f"{100 * MAX_RECALL_LOSS:g} point of recall, both streams together: "
        f"**{'met' if v.meets_rule else 'not met'}** ({_cut(v.combined)} fewer, recall "
        f"{100 * v.combined.recall_loss:+.1f} points lost).",
        "",
        "Verifier threshold sweep (same runs):",
        "",
    ]
    sweep = {p.threshold: p for p in v.mixed.sweep}
    negative = {p.threshold: p for p in v.negative.sweep} if v.negative is not None else {}
    rows = []
    for t in SWEEP_SHOWN:
        m, n = sweep.get(t), negative.get(t)
        if m is None:
            continue
        rows.append([f"{t:g}", _recall(m.hits, m.keyword_events), _fa(m.false_accepts, m),
                     _fa(n.false_accepts, n) if n is not None else "n/a"])  # fmt: skip
    lines += [*table(["verifier threshold", "recall (mixed)", "FA/h mixed", "FA/h negative stream"], rows), ""]
    return lines
