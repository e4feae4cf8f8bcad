"""Hard-negative mining (issue #9): peak picking, the mined spots' positions, the model's posteriors carried
across chunks, pieces cut around the spots, a share of 0 leaving the streams unchanged, and a tiny run that mines
every epoch (metrics, exact resume) and its one-line option errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_stream_training import _builder, _split, _stream_config, negatives  # noqa: F401 (a fixture)
from test_train_reliability import _one_line_error

import kws.train.hard_negatives as hard
import kws.train.loop as train_module
from kws.config import FeatureConfig, ModelConfig
from kws.data.audio import float_to_int16
from kws.format import POOL_MEAN
from kws.model.checkpoint import WEIGHTS_KEY, load_checkpoint
from kws.model.network import KWSModel
from kws.train.objective import pooled_logits
from kws.train.streams import HARD_AFTER_SECONDS, KIND_NEGATIVE, FrameGrid, step_rng
from support.interrupt import train_killed_after_epoch_1
from support.synthetic import SAMPLE_RATE

FEATURES = FeatureConfig()
GRID = FrameGrid.of(FEATURES, POOL_MEAN)


def test_peaks_keep_the_highest_and_drop_close_ones() -> None:
    scores = np.zeros(100, np.float32)
    scores[[10, 12, 30, 80]] = [0.5, 0.9, 0.4, 0.2]
    np.testing.assert_array_equal(hard.peaks(scores, 0.3, separation=5), [12, 30])  # 10 is within 5 of 12
    np.testing.assert_array_equal(hard.peaks(scores, 0.3, separation=1), [10, 12, 30])
    assert len(hard.peaks(scores, 0.95, separation=5)) == 0


def test_epoch_fraction_grows_to_the_set_share() -> None:
    shares = [hard.epoch_fraction(0.5, e, 5) for e in range(5)]
    assert shares == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def _model(seed: int = 0) -> KWSModel:
    torch.manual_seed(seed)
    return KWSModel(FEATURES, ModelConfig(hidden_size=16, num_layers=2, n_inputs=FEATURES.n_mfcc, n_labels=4)).eval()


def test_posteriors_carry_the_state_across_chunks(monkeypatch) -> None:
    model = _model()
    rng = np.random.default_rng(0)
    recording = float_to_int16((rng.standard_normal(5 * SAMPLE_RATE) * 0.1).astype(np.float32))
    keyword = np.array([False, False, True, True])
    whole = hard.keyword_posteriors(model, recording, GRID, keyword, SAMPLE_RATE)
    with torch.no_grad():  # the same figure computed independently: one pass over the whole recording
        audio = torch.from_numpy(recording.astype(np.float32) / 32768)[None]
        logits = pooled_logits(model(model.frontend(audio))[0], GRID.pool_frames)[0]
        expected = torch.softmax(logits, -1)[:, 2:].max(-1).values.numpy()
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(hard, "MINE_CHUNK_SECONDS", 0.7)  # many chunks, the state and pooling carried
    np.testing.assert_allclose(hard.keyword_posteriors(model, recording, GRID, keyword, SAMPLE_RATE), whole, atol=1e-5)


def test_mined_spots_are_the_firing_frames_ends(monkeypatch) -> None:
    planted = {0: [50, 300], 1: [], 2: [120]}

    def fake(model, recording, grid, keyword, rate):
        out = np.zeros(grid.frames(len(recording)), np.float32)
        out[planted[int(recording[0])]] = 0.8
        return out

    monkeypatch.setattr(hard, "keyword_posteriors", fake)
    recordings = [np.full(8 * SAMPLE_RATE, i, np.int16) for i in range(3)]
    spots = hard.mine(_model(), recordings, GRID, np.ones(4, bool), SAMPLE_RATE, threshold=0.5)
    np.testing.assert_array_equal(spots.source, [0, 0, 2])
    np.testing.assert_array_equal(spots.position, GRID.ends(400)[[50, 300, 120]])
    np.testing.assert_allclose(spots.score, 0.8)


def test_pieces_are_cut_around_the_spots() -> None:
    rng = np.random.default_rng(7)
    recordings = [float_to_int16((rng.standard_normal(20 * SAMPLE_RATE) * 0.1).astype(np.float32)) for _ in range(2)]
    builder = _builder(_split(), recordings, keyword_fraction=0.05, unknown_fraction=0.0, negative_fraction=0.95)
    spots = np.array([6 * SAMPLE_RATE, 15 * SAMPLE_RATE])
    builder.use_hard(np.array([0, 1]), spots, 1.0)
    seen = 0
    for step in range(20):
        for e in (e for e in builder.stream(step_rng(2, 0, step)).events if e.kind == KIND_NEGATIVE):
            end = e.offset + e.end - e.start
            after = (end - spots[e.source]) / SAMPLE_RATE
            assert HARD_AFTER_SECONDS[0] - 1e-3 <= after <= HARD_AFTER_SECONDS[1] + 1e-3, "the spot ends the piece"
            seen += 1
    assert seen > 20


def test_no_spot_or_zero_share_leaves_the_streams_unchanged() -> None:
    rng = np.random.default_rng(7)
    recording = float_to_int16((rng.standard_normal(8 * SAMPLE_RATE) * 0.1).astype(np.float32))
    plain = _builder(_split(), [recording], unknown_fraction=0.1, negative_fraction=0.5)
    for spots, share in ((np.zeros(0, np.int64), 1.0), (np.array([SAMPLE_RATE]), 0.0)):
        other = _builder(_split(), [recording], unknown_fraction=0.1, negative_fraction=0.5)
        other.use_hard(np.zeros(len(spots), np.int64), spots, share)
        np.testing.assert_array_equal(other.stream(step_rng(0, 0, 3)).audio, plain.stream(step_rng(0, 0, 3)).audio)
    with pytest.raises(ValueError):
        plain.use_hard(np.array([1]), np.array([0]), 0.5)  # no recording 1


def test_a_run_mines_every_epoch_and_resumes_exactly(
    full_dataset: Path,
    negatives: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
    monkeypatch,
) -> None:
    config = _stream_config((str(full_dataset),), negatives, epochs=2)
    config = replace(config, stream=replace(config.stream, hard_fraction=1.0, hard_threshold=0.05))
    straight = train_module.train(config, tmp_path / "straight")
    history = [json.loads(line) for line in (straight.parent / "metrics.jsonl").read_text().splitlines()]
    assert [h["hard_fraction"] for h in history] == pytest.approx([0.5, 1.0])
    assert all(h["hard_negatives"] > 0 and h["hard_per_hour"] > 0 for h in history)

    train_killed_after_epoch_1(config, tmp_path / "resumed", monkeypatch)
    resumed = train_module.train(config, tmp_path / "resumed", resume=True)
    a, b = load_checkpoint(straight.parent / "last.pt"), load_checkpoint(resumed.parent / "last.pt")
    for key in a[WEIGHTS_KEY]:  # mined again from the saved weights: the same spots, the same run
        torch.testing.assert_close(a[WEIGHTS_KEY][key], b[WEIGHTS_KEY][key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--hard-negatives", "1.5"], "hard-negative fraction must be in [0, 1]"),
        (["--hard-threshold", "1"], "hard-negative threshold must be in (0, 1)"),
    ],
)
def test_bad_hard_negative_options_are_one_line(tmp_path: Path, full_dataset: Path, capsys, flags, expected) -> None:
    argv = ["train", "--data", str(full_dataset), "--labels", "yes,no", "--out", str(tmp_path / "run"), *flags]
    assert expected in _one_line_error(capsys, argv)
    assert not (tmp_path / "run" / "last.pt").exists()
