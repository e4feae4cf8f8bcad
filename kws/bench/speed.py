"""Single-clip latency of the whole-clip models (PyTorch, ONNX fp32, ONNX int8), one thread each."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kws.bench.report import MODEL_FP32, MODEL_INT8, MODEL_TORCH, Latency

BENCH_THREADS = 1
"""Threads of every timed model (onnxruntime intra-op, PyTorch): the runtime's default on a device."""
LATENCY_WARMUP = 10
"""Untimed calls before the timed ones."""
LATENCY_QUANTILE = 0.95
MS_PER_S = 1000.0


def latency_ms(fn: Callable[[], Any], runs: int, warmup: int = LATENCY_WARMUP) -> Latency:
    """Median and ``LATENCY_QUANTILE`` of the wall time of ``fn()`` over ``runs`` calls (ms)."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - start
    return Latency(
        median_ms=MS_PER_S * float(np.median(times)),
        p95_ms=MS_PER_S * float(np.quantile(times, LATENCY_QUANTILE)),
        runs=runs,
    )


def clip_latencies(model: Any, files: Any, clip: np.ndarray, runs: int) -> dict[str, Latency]:
    """Single-clip latency of each whole-clip model, ``BENCH_THREADS`` thread(s), by model name.

    Args:
        model: the checkpoint's :class:`~kws.model.network.KWSModel`.
        files: the :class:`~kws.bench.inputs.ModelFiles`.
        clip: float32 ``[clip_samples]``.
    """
    import torch

    from kws.export import checks as ck
    from kws.format import INPUT_AUDIO

    out = {}
    before = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    try:
        x = torch.from_numpy(clip[None].astype(np.float32))
        with torch.no_grad():
            out[MODEL_TORCH] = latency_ms(lambda: model.classify(x), runs)
    finally:
        torch.set_num_threads(before)
    feed = {INPUT_AUDIO: clip[None].astype(np.float32)}
    for name, path in ((MODEL_FP32, files.clip), (MODEL_INT8, files.clip_int8)):
        sess = ck.session(path, BENCH_THREADS)
        out[name] = latency_ms(lambda s=sess: s.run(None, feed), runs)
    return out
