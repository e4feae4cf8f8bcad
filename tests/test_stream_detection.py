"""A tiny model trained with the stream loss (issue #9), run through the runtime's one-lane streaming path over a
long synthetic stream: it fires on the planted keywords (at least half of them; 9 of 12 when written) and stays
under the threshold on non-keyword speech (at most one false accept in 12 other words; 0 when written)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_stream_training import _stream_config, negatives  # noqa: F401 (a fixture)

import kws.train.loop as train_module
from support.synthetic import SAMPLE_RATE, synth_word
from support.tiny import TINY_THRESHOLD

KEYWORDS = ("yes", "no", "up", "down")
OTHERS = ("bed", "cat", "tree", "house")


@pytest.fixture(scope="module")
def stream_model(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path, negatives: Path) -> Path:  # noqa: F811
    """The int8 streaming export of a tiny run trained with the stream loss (more epochs than the contract tests)."""
    config = _stream_config((str(full_dataset),), negatives, epochs=8)
    config = replace(config, stream=replace(config.stream, weight=2.0))
    out = tmp_path_factory.mktemp("stream_detect")
    best = train_module.train(config, out / "run")
    from kws.export.pipeline import export_files

    return export_files(best, out / "export").stream_int8


def _stream(words: list[str], seed: int) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Words 1.2-1.8 s apart over a low noise floor; returns the audio and (word, end second) of each."""
    rng = np.random.default_rng(seed)
    pieces, ends, t = [], [], 0.0
    for w in words:
        gap = np.zeros(round(rng.uniform(1.2, 1.8) * SAMPLE_RATE), np.float32)
        word = synth_word(w, rng)
        pieces += [gap, word]
        t += (len(gap) + len(word)) / SAMPLE_RATE
        ends.append((w, t))
    audio = np.concatenate([*pieces, np.zeros(SAMPLE_RATE, np.float32)])
    return audio + (rng.standard_normal(len(audio)) * 0.002).astype(np.float32), ends


def test_fires_on_planted_keywords_and_stays_quiet_on_other_speech(stream_model: Path) -> None:
    from kws.runtime import KeywordSpotter, SpotterConfig, load_model

    model = load_model(stream_model)
    assert model.info.reset_period_ms == 0.0  # one lane, state carried through the whole stream
    config = SpotterConfig(threshold=TINY_THRESHOLD)
    rng = np.random.default_rng(0)
    planted = [str(w) for w in rng.choice(KEYWORDS, 12)]
    audio, ends = _stream(planted, seed=1)
    spotter = KeywordSpotter(model, config)
    found = spotter.process(audio) + spotter.flush()
    hits = sum(any(d.keyword == w and end - 0.3 <= d.time <= end + 1.0 for d in found) for w, end in ends)
    assert hits >= len(ends) // 2, (hits, [(d.keyword, round(d.time, 2)) for d in found], ends)
    others, _ = _stream([str(w) for w in rng.choice(OTHERS, 12)], seed=2)
    spotter = KeywordSpotter(model, config)
    false = spotter.process(others) + spotter.flush()
    assert len(false) <= 1, [(d.keyword, round(d.time, 2)) for d in false]
