"""The streaming engine (kws.runtime.engine): exact frames whatever the chunking; lanes re-synchronise the
state; posteriors pooled as the metadata says.

The model is the tiny checkpoint's real streaming export; the reference is the checkpoint's torch model
(torchaudio MFCC + LSTM) run over the whole sequence (``support.exports.TorchReference``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kws import format as F
from kws.errors import ConfigError
from kws.runtime import SpotterConfig, StreamEngine, StreamingModel
from support.exports import TorchReference, derive_model, noise, pooled_posteriors
from support.synthetic import SAMPLE_RATE
from support.tiny import HOP_SAMPLES, WINDOW_SAMPLES

RATE, WINDOW, HOP = SAMPLE_RATE, WINDOW_SAMPLES, HOP_SAMPLES
CONTEXT = WINDOW - HOP
HOP_S = HOP / RATE
POOL_FRAMES = 12
"""Frames the mean-pooled variant averages (a short "clip", so that pooling windows cross lane resets)."""


@pytest.fixture(scope="module")
def reference(tiny_checkpoint) -> TorchReference:
    return TorchReference(tiny_checkpoint)


@pytest.fixture(scope="module", params=["last", "mean"])
def any_pooling_model(request, tiny_exports, tmp_path_factory) -> tuple[Path, str, int]:
    """The streaming export read with each pooling of its per-frame logits: the last frame's, or the mean
    of the last :data:`POOL_FRAMES` frames'. Returns (path, pooling, pool frames)."""
    meta = {F.META_POOLING: "last", F.META_POOL_FRAMES: None}
    if request.param == "mean":
        meta = {F.META_POOLING: "mean", F.META_POOL_FRAMES: str(POOL_FRAMES)}
    out = tmp_path_factory.mktemp("pooling") / f"{request.param}.stream.onnx"
    return derive_model(tiny_exports.stream, out, meta), request.param, POOL_FRAMES


def _engine_frames(model: Path, audio: np.ndarray, chunks: list[int], config: SpotterConfig) -> np.ndarray:
    engine = StreamEngine(StreamingModel(model), config)
    blocks, pos = [], 0
    for size in chunks:
        blocks += engine.process(audio[pos : pos + size])
        pos += size
    blocks += engine.process(audio[pos:])
    blocks += engine.flush()
    assert all(b[0] == a[0] + len(a[1]) for a, b in zip(blocks, blocks[1:], strict=False))  # contiguous
    return np.concatenate([s for _, s in blocks])


class TestStreamingEngine:
    NO_RESET = SpotterConfig(lanes=1, reset_period_ms=0)

    def test_single_state_matches_the_whole_sequence_reference(self, any_pooling_model, reference):
        path, pooling, pool_frames = any_pooling_model
        audio = noise(1.3)
        scores = _engine_frames(path, audio, [], self.NO_RESET)
        expected = pooled_posteriors(reference.logits(audio), pooling, pool_frames)
        n_labels = len(StreamingModel(path).info.labels)
        assert scores.shape == expected.shape == (1 + (len(audio) - WINDOW) // HOP, n_labels)
        np.testing.assert_allclose(scores, expected, atol=1e-4)
        assert StreamingModel(path).info.pooling == pooling

    def test_chunking_and_sample_format_do_not_change_the_frames(self, tiny_exports):
        audio = noise(1.0, seed=1)
        pcm = np.round(audio * 32767).astype(np.int16)
        as_float = pcm.astype(np.float32) / 32768
        rng = np.random.default_rng(2)
        model = tiny_exports.stream
        whole = _engine_frames(model, as_float, [], self.NO_RESET)
        odd = _engine_frames(model, pcm, list(rng.integers(1, 900, 40)), self.NO_RESET)
        tiny = _engine_frames(model, pcm, [7] * 300, SpotterConfig(lanes=1, reset_period_ms=0, chunk_ms=20))
        np.testing.assert_allclose(odd, whole, atol=1e-6)
        np.testing.assert_allclose(tiny, whole, atol=1e-5)

    def test_short_stream_gives_its_frames_and_no_more(self, tiny_exports):
        engine = StreamEngine(StreamingModel(tiny_exports.stream), SpotterConfig())
        assert engine.process(np.zeros(WINDOW - 1, np.float32)) == [] and engine.flush() == []
        engine.reset()
        engine.process(np.zeros(WINDOW + 2 * HOP + 5, np.float32))
        ((first, scores),) = engine.flush()
        assert first == 0 and len(scores) == 3

    @pytest.mark.parametrize(
        ("lanes", "period_ms", "chunk_ms"), [(2, 800, 100), (3, 900, 60), (2, 700, 140), (2, 400, 100)]
    )
    def test_every_frame_is_read_from_the_lane_reset_longest_ago(
        self, any_pooling_model, reference, lanes, period_ms, chunk_ms
    ):
        """Each output frame equals a zero-state run started at the read lane's last reset, that context is
        never shorter than the guaranteed minimum (after the first resets) nor longer than one period."""
        path, pooling, pool_frames = any_pooling_model
        config = SpotterConfig(lanes=lanes, reset_period_ms=period_ms, chunk_ms=chunk_ms)
        engine = StreamEngine(StreamingModel(path), config)
        period, chunk = engine.period_frames, engine.chunk_frames
        assert period % chunk == 0 and period >= round(period_ms / 1000 / HOP_S)
        audio = noise(4.0, seed=3)
        scores = _engine_frames(path, audio, [], config)
        resets = [sorted({o + m * period for m in range(40)} - {0}) for o in engine.offsets]
        checked_min = False
        from_start = {}  # reference runs by start frame
        for t in range(len(scores)):
            chunk_start = t - t % chunk
            last = [max([r for r in lane if r <= chunk_start], default=0) for lane in resets]
            start = min(last)
            context = t - start + 1
            if all(lane[0] <= chunk_start for lane in resets):
                assert engine.min_context_frames <= context <= period
                checked_min = True
            if start not in from_start:
                from_start[start] = pooled_posteriors(reference.logits(audio[start * HOP :]), pooling, pool_frames)
            np.testing.assert_allclose(scores[t], from_start[start][t - start], atol=1e-4, err_msg=f"frame {t}")
        assert checked_min

    def test_two_lanes_of_two_seconds_always_hold_a_whole_word(self, tiny_exports):
        engine = StreamEngine(StreamingModel(tiny_exports.stream), SpotterConfig())
        one_second_frames = 1 + (RATE - WINDOW) // HOP
        assert engine.min_context_frames >= one_second_frames
        assert engine.period_frames * HOP_S <= 2.0 + engine.chunk_frames * HOP_S

    def test_lane_states_are_reset_on_schedule(self, tiny_exports):
        """After any number of chunks each lane's state is that of a zero-state run over exactly the frames
        since its own reset, and no lane ever runs longer than one period."""
        model = StreamingModel(tiny_exports.stream)
        engine = StreamEngine(model, SpotterConfig(lanes=2, reset_period_ms=1000))
        step = engine.chunk_frames * HOP
        audio = noise(CONTEXT / RATE + 60 * step / RATE, seed=4, scale=0.1)
        engine.process(audio[:CONTEXT])
        for n in range(60):
            engine.process(audio[CONTEXT + n * step : CONTEXT + (n + 1) * step])
            frames, contexts = engine.frames, engine.lane_context()
            assert max(contexts) <= engine.period_frames
            for lane, context in enumerate(contexts):
                since_reset = audio[(frames - context) * HOP : frames * HOP + CONTEXT]
                _, fresh = model.run(since_reset[None], model.initial_states(1))
                for state, spec, want in zip(engine.states, model.info.states, fresh, strict=True):
                    got = np.take(state, [lane], axis=spec.lane_axis)
                    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"chunk {n}, lane {lane}")
        assert len(set(engine.lane_context())) == 2

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"lanes": 0},
            {"lanes": 2, "reset_period_ms": 0},
            {"chunk_ms": 0},
            {"threshold": 1.5},
            {"thresholds": {"yes": 0}},
            {"smoothing_ms": -1},
        ],
    )
    def test_invalid_settings_are_config_errors(self, kwargs):
        with pytest.raises(ConfigError):
            SpotterConfig(**kwargs)

    def test_period_too_short_for_the_lanes(self, tiny_exports):
        with pytest.raises(ConfigError, match="too short"):
            StreamEngine(StreamingModel(tiny_exports.stream), SpotterConfig(lanes=4, reset_period_ms=200, chunk_ms=100))
