"""Figures as the bench's text shows them: percentages with intervals, rates, milliseconds, sizes, markdown
tables and PASS/FAIL against a target (undefined figures, NaN or None, are ``n/a``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from kws.bench.scoring import POISSON_CONFIDENCE, poisson_upper
from kws.bench.speed import MS_PER_S
from kws.train.evaluate import format_with_interval

BYTES_PER_KIB = 1024.0
BYTES_PER_MIB = 1024.0 * 1024.0


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def pct_ci(x: float | None, interval: Sequence[float] | None, digits: int = 1) -> str:
    """``"82.0% (77.4-86.0)"``: a proportion with its 95% confidence interval (Wilson score)."""
    return "n/a" if x is None or not math.isfinite(x) else format_with_interval(x, interval, digits)


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None or not math.isfinite(seconds) else f"{MS_PER_S * seconds:.0f} ms"


def rate(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def size(n: int) -> str:
    return f"{n / BYTES_PER_KIB:.1f} KiB" if n < BYTES_PER_MIB else f"{n / BYTES_PER_MIB:.2f} MiB"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def status(ok: bool, interval: Sequence[float] | None = None, target: float | None = None) -> str:
    """PASS/FAIL; with a confidence interval that contains the target, a note that the data cannot tell."""
    status = "PASS" if ok else "FAIL"
    if interval is not None and target is not None and interval[0] <= target <= interval[1]:
        status += " (the 95% CI includes the target)"
    return status


def hours_needed(fa_per_hour: float, confidence: float = POISSON_CONFIDENCE) -> float:
    """Hours of audio without a false accept needed to show a rate below ``fa_per_hour`` at ``confidence``."""
    return poisson_upper(0, confidence) / fa_per_hour
