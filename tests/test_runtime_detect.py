"""Detection decisions (kws.runtime.detect): smoothing, thresholds, refractory time; planted keywords give
exactly those detections.

Every KeywordSpotter here runs the tiny model's real export with level posteriors (``support.level``), so
that keywords are planted at known times with known confidences.
"""

from __future__ import annotations

import numpy as np
import pytest

from kws import constants as C
from kws.errors import ConfigError
from kws.runtime import KeywordSpotter, SpotterConfig, detect_audio, detections_from_scores, stream_scores
from support.level import HOP_S, STANDARD_EVENTS, assert_matches, level_for, plant
from support.synthetic import SAMPLE_RATE

pytestmark = pytest.mark.usefixtures("level_engine")


@pytest.fixture(scope="module")
def model(tiny_exports):
    return tiny_exports.stream


@pytest.fixture(scope="module")
def labels(model) -> tuple[str, ...]:
    from kws.runtime import StreamingModel

    return StreamingModel(model).info.labels


class TestDetection:
    def test_planted_keywords_are_detected_exactly(self, model):
        config = SpotterConfig()
        detections, stats = detect_audio(model, plant(6.5, STANDARD_EVENTS), config=config)
        assert_matches(detections, STANDARD_EVENTS, config)
        assert stats.detections == len(detections) and stats.audio_seconds == pytest.approx(6.5)

    def test_silence_and_unknown_are_never_reported(self, model, labels):
        audio = plant(4.0, [(0.5, 3.0, C.UNKNOWN_LABEL)])
        (detections, _), trace = detect_audio(model, audio, threshold=0.5), stream_scores(model, audio)
        assert detections == []
        assert trace.smoothed[:, labels.index(C.UNKNOWN_LABEL)].max() > 0.99  # it was there, and confident

    def test_a_long_utterance_gives_one_detection(self, model):
        """Refractory time plus re-arming: a 3 s plateau is one detection even with a short refractory."""
        audio = plant(5.0, [(0.5, 3.0, "yes")])
        detections, _ = detect_audio(model, audio, refractory_ms=300)
        assert [d.keyword for d in detections] == ["yes"]

    def test_refractory_time_merges_close_repeats(self, model):
        events = [(0.5, 0.3, "yes"), (1.0, 0.3, "yes")]
        audio = plant(2.5, events)
        merged, _ = detect_audio(model, audio, refractory_ms=1000)
        separate, _ = detect_audio(model, audio, refractory_ms=200)
        assert [d.keyword for d in merged] == ["yes"]
        assert_matches(separate, events, SpotterConfig(refractory_ms=200))

    def test_a_confusable_keyword_on_the_same_utterance_is_suppressed(self, model):
        """'yes' then immediately 'no' within the refractory time, 'no' lasting beyond it: one detection."""
        audio = plant(4.0, [(0.5, 0.3, "yes"), (0.8, 1.5, "no")])
        detections, _ = detect_audio(model, audio, refractory_ms=500)
        assert [d.keyword for d in detections] == ["yes"]

    def test_per_keyword_thresholds(self, model, labels):
        events = [(0.5, 0.4, level_for("yes", 0.85, labels)), (2.0, 0.4, level_for("no", 0.8, labels))]
        audio = plant(3.5, events)
        both, _ = detect_audio(model, audio, threshold=0.7)
        only_yes, _ = detect_audio(model, audio, threshold=0.7, thresholds={"no": 0.82})
        none, _ = detect_audio(model, audio, threshold=0.9)
        yes_lowered, _ = detect_audio(model, audio, threshold=0.9, thresholds={"yes": 0.8})
        assert [d.keyword for d in both] == ["yes", "no"]
        assert [d.keyword for d in only_yes] == ["yes"]
        assert none == []
        assert [d.keyword for d in yes_lowered] == ["yes"]
        assert 0.7 <= both[1].confidence <= 0.8 + 1e-3  # the smoothed score when it crossed the threshold

    def test_threshold_for_an_unknown_keyword_is_an_error(self, model):
        with pytest.raises(ConfigError, match="'maybe'.*keywords: yes, no"):
            KeywordSpotter(model, SpotterConfig(thresholds={"maybe": 0.5}))
        with pytest.raises(ConfigError, match="_silence_"):
            KeywordSpotter(model, SpotterConfig(thresholds={C.SILENCE_LABEL: 0.5}))

    def test_smoothing_removes_single_frame_spikes(self, model):
        audio = plant(2.0, [(0.5, 2 * HOP_S, "yes")])  # a 40 ms blip
        smoothed, _ = detect_audio(model, audio, smoothing_ms=200)
        raw, _ = detect_audio(model, audio, smoothing_ms=0)
        assert smoothed == [] and [d.keyword for d in raw] == ["yes"]

    def test_detections_do_not_depend_on_chunking(self, model):
        audio = plant(6.5, STANDARD_EVENTS)
        reference, _ = detect_audio(model, audio)
        for chunk_ms in (20, 60, 200):
            other, _ = detect_audio(model, audio, chunk_ms=chunk_ms)
            assert other == reference
        spotter = KeywordSpotter(model)
        pcm = np.round(audio * 32767).astype(np.int16)
        one_by_one = [d for i in range(0, len(pcm), 333) for d in spotter.process(pcm[i : i + 333])]
        one_by_one += spotter.flush()
        assert [(d.keyword, d.frame) for d in one_by_one] == [(d.keyword, d.frame) for d in reference]

    def test_score_trace_reproduces_the_live_detections(self, model, labels):
        audio = plant(6.5, STANDARD_EVENTS + [(6.0, 0.3, level_for("no", 0.8, labels))])
        trace = stream_scores(model, audio)
        assert trace.raw.shape == trace.smoothed.shape == (len(trace.times), len(labels))
        assert np.all(np.diff(trace.times) == pytest.approx(HOP_S))
        for config in (
            SpotterConfig(),
            SpotterConfig(threshold=0.9),
            SpotterConfig(thresholds={"no": 0.5}),
            SpotterConfig(smoothing_ms=0, refractory_ms=300),
            SpotterConfig(smoothing_ms=400),
        ):
            live, _ = detect_audio(model, audio, config=config)
            assert detections_from_scores(trace, config) == live, config

    def test_clear_trace_keeps_the_stream_going(self, model):
        """clear_trace drops the recorded scores only: the next trace is the rest of the same stream, on its
        times, and equals the whole stream's trace from there."""
        audio = plant(6.5, STANDARD_EVENTS)
        pcm = np.round(audio * 32767).astype(np.int16)
        whole = KeywordSpotter(model, record_scores=True)
        whole.process(pcm)
        whole.flush()
        reference = whole.trace()
        split = KeywordSpotter(model, record_scores=True)
        split.process(pcm[: 3 * SAMPLE_RATE])
        kept = len(split.trace().times)
        split.clear_trace()
        split.process(pcm[3 * SAMPLE_RATE :])
        split.flush()
        rest = split.trace()
        np.testing.assert_array_equal(rest.times, reference.times[kept:])
        np.testing.assert_array_equal(rest.raw, reference.raw[kept:])
        split.reset()
        assert len(split.trace().times) == 0

    def test_long_streams_keep_detecting(self, model):
        """Two minutes of background with a keyword every 7.3 s: every one found, nothing else."""
        rng = np.random.default_rng(5)
        events = [(t, 0.4, ["yes", "no"][i % 2]) for i, t in enumerate(np.arange(1.0, 118.0, 7.3))]
        audio = plant(120.0, events) + (rng.standard_normal(120 * SAMPLE_RATE) * 0.02).astype(np.float32)
        config = SpotterConfig()
        detections, stats = detect_audio(model, audio, config=config)
        assert_matches(detections, events, config)
        assert stats.model_calls == pytest.approx(120.0 / (config.chunk_ms / 1000), abs=2)
