"""The offline API (kws.runtime.stream: detect_file, detect_audio) end to end, with the tiny model trained by
``kws train`` and exported by ``kws export`` (``tiny_exports``), on the synthetic words it was trained on."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from kws.runtime import SpotterConfig, detect_audio, detect_file
from support.synthetic import SAMPLE_RATE, plant_keywords
from support.tiny import TINY_THRESHOLD


def _assert_near_their_words(detections, truth, config: SpotterConfig) -> None:
    """Each detection near the end of a different planted word (from 0.5 s before it to the smoothing and
    chunk delay after it)."""
    latest = config.smoothing_ms / 1000 + config.chunk_ms / 1000 + 0.5
    near = [min(truth, key=lambda w: abs(w[1] - d.time)) for d in detections]
    assert all(end - 0.5 < d.time < end + latest for d, (_, end) in zip(detections, near, strict=True)), detections
    assert len({end for _, end in near}) == len(near), "one detection per word"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["stream", "stream_int8"])
def test_trained_model_finds_the_planted_words(tiny_exports, precision, tmp_path):
    """The synthetic words of the training fixture, planted in a noisy stream (longer than the reset period,
    so lanes are reset several times): fp32 reports each one once, in order, near the end of the word; int8
    (dynamic quantisation of a tiny model may confuse close words) reports nothing outside the words."""
    words = ["yes", "no", "up", "down", "no", "yes"]
    audio, truth = plant_keywords(words, gap_seconds=1.0, lead_seconds=0.5)
    path = tmp_path / "planted.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    config = SpotterConfig(threshold=TINY_THRESHOLD)
    detections, stats = detect_file(getattr(tiny_exports, precision), path, config=config)
    assert stats.audio_seconds == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.01)
    _assert_near_their_words(detections, truth, config)
    if precision == "stream":
        assert [d.keyword for d in detections] == words, detections


def test_long_streams_keep_detecting_with_the_trained_model(tiny_exports):
    """Two minutes with a synthetic word every 7.3 s (about 60 lane resets): every one found, once, in
    order, and one model call per chunk. ("yes" and "up": the words the tiny model never confuses.)"""
    words = [["yes", "up"][i % 2] for i in range(16)]
    audio, truth = plant_keywords(words, gap_seconds=6.85, lead_seconds=1.0)
    config = SpotterConfig(threshold=TINY_THRESHOLD)
    detections, stats = detect_audio(tiny_exports.stream, audio, config=config)
    assert [d.keyword for d in detections] == words, detections
    _assert_near_their_words(detections, truth, config)
    assert stats.model_calls == pytest.approx(len(audio) / SAMPLE_RATE / (config.chunk_ms / 1000), abs=2)
    assert np.isclose(stats.audio_seconds, len(audio) / SAMPLE_RATE, atol=0.01)
