"""Moving averages of the runtime (kws.runtime.engine.mean_band / MovingMean): the pooled logits of a stream
and the smoothed posteriors are one MatMul per call, equal to the plain average of the last frames."""

from __future__ import annotations

import numpy as np
import pytest

from kws.runtime.detect import Smoother
from kws.runtime.engine import LogitPool, MovingMean, mean_band, softmax


def naive_means(rows: np.ndarray, window: int, start: int, first: int = 0) -> np.ndarray:
    """Mean of the last ``min(window, t - start + 1)`` rows at or after ``start``, ending at each row
    ``t >= first``."""
    return np.stack([rows[max(start, t - window + 1) : t + 1].mean(0) for t in range(first, len(rows))])


@pytest.mark.parametrize("window,k", [(1, 1), (1, 5), (4, 1), (10, 5), (49, 5), (49, 10), (3, 17)])
def test_mean_band_rows_average_the_last_frames(window, k):
    rows = np.random.default_rng(window * k).standard_normal((window - 1 + k, 3)).astype(np.float32)
    for seen in range(window + 2):
        got = mean_band(window, k, seen) @ rows
        start = max(0, window - 1 - seen)  # the rows before it are not part of the stream (yet)
        want = naive_means(rows, window, start, first=window - 1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"seen={seen}")


def test_steady_state_bands_are_cached_and_read_only():
    band = mean_band(49, 5, 48)
    assert band is mean_band(49, 5, 1000) and not band.flags.writeable
    assert mean_band(49, 5, 3) is not mean_band(49, 5, 3)  # a stream's first frames: built, not kept


@pytest.mark.parametrize("sizes", [[5] * 30, [1, 7, 2, 30, 5, 5, 9, 41]])
def test_smoother_and_pool_equal_the_plain_moving_average_whatever_the_calls(sizes):
    rng = np.random.default_rng(len(sizes))
    frames = rng.standard_normal((sum(sizes), 2, 6)).astype(np.float32)  # [t, lanes, labels]
    smoother, pool = Smoother(10, 6), LogitPool(2, 12, 6)
    smoothed, pooled, pos = [], [], 0
    for k in sizes:
        block = frames[pos : pos + k]
        pos += k
        smoothed.append(smoother.process(block[:, 0]))
        pooled.append(pool.process(block.transpose(1, 0, 2), lane=1, context=pos))
    np.testing.assert_allclose(np.concatenate(smoothed), naive_means(frames[:, 0], 10, 0), rtol=1e-5, atol=1e-6)
    want = softmax(naive_means(frames[:, 1], 12, 0))
    np.testing.assert_allclose(np.concatenate(pooled), want, rtol=1e-5, atol=1e-6)


def test_pool_reads_only_the_frames_since_the_lanes_reset():
    pool = LogitPool(1, 8, 4)
    old = np.full((1, 20, 4), 50.0, np.float32)
    pool.process(old, 0, 20)
    new = np.random.default_rng(0).standard_normal((1, 3, 4)).astype(np.float32)
    got = pool.process(new, 0, context=3)  # reset 3 frames ago: the 50s are not averaged
    np.testing.assert_allclose(got, softmax(naive_means(new[0], 8, 0)), rtol=1e-5, atol=1e-6)


def test_moving_mean_refuses_an_empty_window():
    with pytest.raises(ValueError, match="window"):
        MovingMean(0, 3)
