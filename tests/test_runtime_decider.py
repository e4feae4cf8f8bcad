"""The Decider's bit-mask loop (kws.runtime.detect.Decider) against the plain per-frame definition of
thresholds, re-arming and refractory time: same hits for random posteriors, any block sizes, many labels."""

from __future__ import annotations

import numpy as np
import pytest

from kws.runtime.detect import Decider


def reference_hits(smoothed: np.ndarray, thresholds: np.ndarray, refractory: int) -> list[tuple[int, int, float]]:
    """Frame by frame: a label over its threshold is reported if armed and the refractory time is over (the
    highest armed one wins); a label over threshold is disarmed until a frame where it is below."""
    armed = np.ones(len(thresholds), bool)
    last, hits = None, []
    for t, row in enumerate(smoothed >= thresholds):
        armed |= ~row
        candidates = row & armed
        if candidates.any() and (last is None or t - last >= refractory):
            best = int(np.argmax(np.where(candidates, smoothed[t], -np.inf)))
            hits.append((t, best, float(smoothed[t, best])))
            last = t
        armed &= ~row
    return hits


@pytest.mark.parametrize("labels,refractory", [(12, 50), (12, 0), (4, 3), (70, 5)])
def test_bit_mask_decider_matches_the_per_frame_definition(labels, refractory):
    rng = np.random.default_rng(labels + refractory)
    thresholds = rng.uniform(0.6, 0.9, labels).astype(np.float32)
    thresholds[:2] = np.inf  # _silence_, _unknown_
    bursts = (rng.random((3000, 1)) < 0.02).cumsum(0) % 2  # stretches of frames with high posteriors
    smoothed = (rng.random((3000, labels)) * (0.5 + 0.6 * bursts)).astype(np.float32)
    smoothed[rng.random(3000) < 0.01, 3] = 0.95  # one-frame spikes and ties
    smoothed[100, 2:4] = 0.99
    want = reference_hits(smoothed, thresholds, refractory)
    assert len(want) > 10
    for sizes in ([3000], [1] * 3000, [7, 1, 30, 2] * 300):
        decider, got, pos = Decider(thresholds, refractory), [], 0
        for k in sizes:
            got += decider.process(pos, smoothed[pos : pos + k])
            pos += k
        assert got == want, sizes[:4]
