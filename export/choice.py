"""Which int8 variant ``kws export`` ships: :class:`VariantResult` (one variant, measured) and
:func:`choose_quantization` (dynamic, unless static QDQ is measurably better).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kws.export import checks as ck
from kws.format import QUANT_DYNAMIC, QUANT_STATIC

CHOICE_MARGIN = 0.25
"""Accuracy (or top-1 agreement) difference, in points, below which two int8 variants count as equal."""

CHOICE_SIGNIFICANCE = 0.05
"""A static variant counts as more accurate only if a sign test over the clips where the two variants
disagree gives a p-value below this (on a few hundred clips, one clip is a third of a point)."""

CHOICE_SPEEDUP = 0.9
"""Static QDQ is shipped on equal quality only if its streaming call takes less than this times dynamic's."""


@dataclass(frozen=True)
class VariantResult:
    """One int8 variant (``dynamic`` or ``static-qdq``), measured and checked.

    Attributes:
        variant: :data:`kws.format.QUANT_DYNAMIC` or :data:`kws.format.QUANT_STATIC`.
        row: its line of the comparison table.
        checks: its checks (subjects as measured: the file names, without the variant's folder).
        hits: bool ``[clips]``: per clip, the streaming int8 model (what the runtime runs) gets the label right,
            or, without labelled clips, agrees with the float model's top-1.
        what: which of the two ``hits`` counts (for the printed reason).
        stream_us: one streaming call (microseconds; NaN when not timed).
    """

    variant: str
    row: ck.ModelRow
    checks: tuple[ck.Check, ...]
    hits: np.ndarray
    what: str
    stream_us: float

    @property
    def passed(self) -> bool:
        """No check of this variant failed."""
        return all(c.passed is not False for c in self.checks)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value of ``wins`` vs ``losses`` discordant pairs under "both equally likely"."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def choose_quantization(variants: Sequence[VariantResult]) -> tuple[str, str]:
    """Pick the int8 variant to ship from measured quality and speed; returns it and the reason.

    Dynamic is the default; static QDQ is shipped only if it passes its checks and is more accurate by more
    than CHOICE_MARGIN points with a sign test over the clips where the two disagree at p < CHOICE_SIGNIFICANCE,
    or is as accurate (within the margin) and faster per streaming call by the factor CHOICE_SPEEDUP.

    Args:
        variants: one variant, or both (dynamic and static).
    """
    if len(variants) == 1:
        (only,) = variants
        return only.variant, "the only variant made" + ("" if only.passed else " (it fails a check)")
    by_name = {v.variant: v for v in variants}
    dyn, sta = by_name[QUANT_DYNAMIC], by_name[QUANT_STATIC]
    if dyn.passed != sta.passed:
        winner = QUANT_DYNAMIC if dyn.passed else QUANT_STATIC
        return winner, "the other variant fails a check"
    q_dyn, q_sta = 100 * float(np.mean(dyn.hits)), 100 * float(np.mean(sta.hits))
    wins = int(np.sum(sta.hits & ~dyn.hits))
    losses = int(np.sum(dyn.hits & ~sta.hits))
    p_value = sign_test(wins, losses)
    speed = sta.stream_us / dyn.stream_us
    summary = (
        f"{dyn.what} {q_dyn:.2f}% vs {q_sta:.2f}% on {len(dyn.hits)} clips "
        f"(sign test p={p_value:.2f}), streaming call {dyn.stream_us:.0f} vs {sta.stream_us:.0f} us "
        "(dynamic vs static)"
    )
    if q_sta > q_dyn + CHOICE_MARGIN and p_value < CHOICE_SIGNIFICANCE:
        return QUANT_STATIC, f"static is more accurate: {summary}"
    if q_sta >= q_dyn - CHOICE_MARGIN and speed < CHOICE_SPEEDUP:
        return QUANT_STATIC, f"static is as accurate and faster: {summary}"
    return QUANT_DYNAMIC, f"static is not measurably better: {summary}"
