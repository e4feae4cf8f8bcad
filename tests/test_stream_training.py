"""Stream training (issue #9): the training-stream builder's audio and per-frame targets, the pooled stream loss
against the runtime's own pooling, a tiny run with the stream loss (metrics, checkpoint, evaluation, export, exact
resume), weight 0 unchanged, ``--init-from`` and the new options' one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_train_reliability import _one_line_error

import kws.train.loop as train_module
from kws.cli import main
from kws.config import FeatureConfig, StreamTrainConfig
from kws.data.audio import float_to_int16
from kws.data.splits import SplitData
from kws.format import POOL_LAST, POOL_MEAN
from kws.model.checkpoint import WEIGHTS_KEY, load_checkpoint, model_from_checkpoint, run_config
from kws.runtime.engine import LogitPool
from kws.train.objective import StreamObjective
from kws.train.streams import IGNORE, KIND_KEYWORD, KIND_NEGATIVE, NEGATIVE, FrameGrid, StreamBuilder, step_rng
from support.interrupt import train_killed_after_epoch_1
from support.synthetic import SAMPLE_RATE, synth_word
from support.tiny import TINY_LABELS, tiny_run_config

LABELS = ["_silence_", "_unknown_", "yes", "no"]
WORD_AT = 0.3
"""Where the word starts in the builder tests' clips (s)."""
FEATURES = FeatureConfig()


def _clip(word: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clip = (rng.standard_normal(SAMPLE_RATE) * 0.001).astype(np.float32)
    w = synth_word(word, rng)
    start = round(WORD_AT * SAMPLE_RATE)
    clip[start : start + len(w)] += w
    return clip


def _split() -> SplitData:
    """Two clips of each keyword and two unknown words, the word at ``WORD_AT``."""
    words = [("yes", 2), ("yes", 2), ("no", 3), ("no", 3), ("bed", 1), ("cat", 1)]
    audio = np.stack([float_to_int16(_clip(w, i)) for i, (w, _) in enumerate(words)])
    return SplitData(
        audio=audio,
        labels=np.asarray([label for _, label in words], np.int64),
        silence=np.zeros(len(words), bool),
        speakers=[f"s{i}" for i in range(len(words))],
        paths=[f"clip{i}" for i in range(len(words))],
    )


def _builder(data: SplitData, negatives=(), **fields) -> StreamBuilder:
    config = StreamTrainConfig(weight=1.0, snr_db_min=40.0, snr_db_max=40.0, **fields)
    return StreamBuilder(config, FEATURES, POOL_MEAN, data, LABELS, list(negatives), [])


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def _expected_targets(events, frames: int, grid: FrameGrid, window: int) -> np.ndarray:
    """The targets rule, frame by frame (an independent reading of the module docstring)."""
    out = np.full(frames, NEGATIVE, np.int64)
    for t in range(frames):
        end = t * grid.hop + grid.window
        oldest = (t - grid.pool_frames + 1) * grid.hop
        for e in (e for e in events if e.kind == KIND_KEYWORD):
            if e.word_start < end < e.word_end:
                out[t] = IGNORE
                break
            if e.word_end <= end <= e.word_end + window:
                out[t] = e.label
            elif out[t] == NEGATIVE and end > e.word_start and oldest < e.word_end:
                out[t] = IGNORE
    return out


def test_builder_audio_and_targets_line_up() -> None:
    data = _split()
    builder = _builder(data)
    seen = 0
    for step in range(6):
        stream = builder.stream(step_rng(0, 0, step))
        assert stream.audio.shape == (round(12 * SAMPLE_RATE),) and stream.audio.dtype == np.float32
        assert stream.targets.shape == (FEATURES.num_frames(len(stream.audio)),)
        for e in stream.events:
            assert 0 <= e.start < e.end <= len(stream.audio)
            if e.kind == KIND_KEYWORD:  # the clip is where the event says, its word where word_span found it
                assert e.label == data.labels[e.source] >= 2
                assert _correlation(stream.audio[e.start : e.end], data.audio[e.source]) > 0.99
                assert abs(e.word_start - e.start - WORD_AT * SAMPLE_RATE) < 0.03 * SAMPLE_RATE
                word = len(synth_word("yes", np.random.default_rng(0)))
                assert abs(e.word_end - e.start - WORD_AT * SAMPLE_RATE - word) < 0.03 * SAMPLE_RATE
                seen += 1
        expected = _expected_targets(stream.events, len(stream.targets), builder.grid, builder.label_window)
        np.testing.assert_array_equal(stream.targets, expected)
        ends = np.arange(len(stream.targets)) * FEATURES.hop_samples + FEATURES.n_fft
        for e in (e for e in stream.events if e.kind == KIND_KEYWORD):
            window = (ends >= e.word_end) & (ends <= e.word_end + builder.label_window)
            assert window.sum() in (15, 16) and (stream.targets[window] == e.label).all()  # 300 ms of 20 ms hops
            assert (stream.targets[(ends > e.word_start) & (ends < e.word_end)] == IGNORE).all()
    assert seen >= 6
    again = builder.stream(step_rng(0, 0, 5))
    np.testing.assert_array_equal(again.audio, stream.audio)  # seeded by the step
    assert not np.array_equal(builder.stream(step_rng(0, 1, 5)).audio, stream.audio)  # and by the rank


def test_negative_pieces_use_the_whole_recording() -> None:
    rng = np.random.default_rng(7)
    recording = float_to_int16((rng.standard_normal(8 * SAMPLE_RATE) * 0.1).astype(np.float32))
    builder = _builder(_split(), [recording], keyword_fraction=0.05, unknown_fraction=0.0, negative_fraction=0.95)
    pieces = []
    for step in range(40):
        stream = builder.stream(step_rng(1, 0, step))
        for e in (e for e in stream.events if e.kind == KIND_NEGATIVE):
            piece = recording[e.offset : e.offset + e.end - e.start]
            assert _correlation(stream.audio[e.start : e.end], piece) > 0.99
            pieces.append((e.offset, e.offset + e.end - e.start))
    covered = np.zeros(len(recording), bool)
    for a, b in pieces:
        covered[a:b] = True
    assert len(pieces) > 50 and covered.mean() == 1.0, "every sample of the recording is used"


@pytest.mark.parametrize("pooling", [POOL_MEAN, POOL_LAST])
def test_pooled_loss_is_the_runtime_pooling(pooling: str) -> None:
    grid = FrameGrid.of(FEATURES, pooling)
    rng = np.random.default_rng(3)
    batch, frames, n_labels = 3, 130, len(LABELS)
    logits = (rng.standard_normal((batch, frames, n_labels)) * 3).astype(np.float32)
    targets = rng.choice([NEGATIVE, IGNORE, 2, 3], size=(batch, frames), p=[0.6, 0.2, 0.1, 0.1])
    loss, figures = StreamObjective(grid.pool_frames, 0, 1)(torch.from_numpy(logits), torch.from_numpy(targets))

    total, counted, false_frames = 0.0, 0, 0
    for b in range(batch):
        pool = LogitPool(1, grid.pool_frames, n_labels)
        chunks = np.split(np.arange(frames), [7, 8, 50, 51, 99])
        posteriors = np.concatenate(
            [pool.process(logits[b][None, c], 0, int(c[-1]) + 1) for c in chunks]
        )  # the runtime's posteriors of one lane carried from the start
        for t in range(frames):
            p, y = posteriors[t].astype(np.float64), targets[b, t]
            if y >= 0:
                total -= np.log(p[y])
            elif y == NEGATIVE:
                total -= np.log(p[0] + p[1])
                false_frames += int(p[2:].max() > 0.5)
            counted += y != IGNORE
    assert loss.item() == pytest.approx(total / counted, rel=1e-5)
    assert figures["negative_frames"] == int((targets == NEGATIVE).sum())
    assert figures["false_frames"] == false_frames


# ------------------------------------------------------------------------------------------ tiny runs


@pytest.fixture(scope="module")
def negatives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --negatives folder: a few seconds of other synthetic words per file."""
    root = tmp_path_factory.mktemp("negatives") / "talk"
    root.mkdir()
    rng = np.random.default_rng(5)
    for i in range(8):
        words = [synth_word(w, rng) for w in ("bed", "cat", "tree", "house")]
        audio = np.concatenate([np.concatenate([w, np.zeros(2000, np.float32)]) for w in words])
        audio += (rng.standard_normal(len(audio)) * 0.002).astype(np.float32)
        sf.write(root / f"{i}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
    return root.parent


def _stream_config(roots: tuple[str, ...], negatives: Path, epochs: int = 2, **train_fields):
    config = tiny_run_config(roots, epochs=epochs)
    return replace(
        config,
        data=replace(config.data, negatives=(str(negatives),)),
        train=replace(config.train, **train_fields),
        stream=StreamTrainConfig(weight=1.0, seconds=4.0, batch=2),
    )


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path, negatives: Path) -> Path:
    """The best checkpoint of a 2-epoch tiny run with the stream loss."""
    return train_module.train(
        _stream_config((str(full_dataset),), negatives), tmp_path_factory.mktemp("stream") / "run"
    )


def test_stream_run_writes_a_usable_checkpoint(stream_run: Path, full_dataset: Path, tmp_path: Path) -> None:
    history = [json.loads(line) for line in (stream_run.parent / "metrics.jsonl").read_text().splitlines()]
    for key in ("stream_loss", "stream_false_frames", "stream_keyword_accuracy", "val_stream_false_frames"):
        assert all(np.isfinite(h[key]) for h in history), key
    assert 0 <= history[-1]["stream_false_frames"] <= 1
    model, labels, payload = model_from_checkpoint(stream_run)
    assert payload["config"]["stream"]["weight"] == 1.0 and labels[2:] == TINY_LABELS.split(",")
    out = tmp_path / "eval"
    assert main(["evaluate", str(stream_run), "--data", str(full_dataset), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["clips"] > 0
    from kws.export.pipeline import export_files

    paths = export_files(stream_run, tmp_path / "export")
    assert paths.stream.is_file() and paths.clip_int8.is_file()
    from kws.runtime import KeywordSpotter, load_model

    for path in (paths.stream, paths.stream_int8):  # trained to carry its state: runs as one lane, never reset
        model = load_model(path)
        assert model.info.reset_period_ms == 0.0
        assert KeywordSpotter(model).engine.lanes == 1
    assert load_model(paths.stream).info.thresholds == ()


def test_old_checkpoints_load_with_the_stream_loss_off(stream_run: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(stream_run)
    del payload["config"]["stream"]
    del payload["config"]["train"]["init_from"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    _, _, loaded = model_from_checkpoint(old)
    assert run_config(loaded).stream == StreamTrainConfig()


def test_weight_zero_is_the_clip_only_run(tmp_path: Path, full_dataset: Path) -> None:
    config = tiny_run_config((str(full_dataset),), epochs=1)
    config = replace(config, train=replace(config.train, max_steps=3))
    plain = load_checkpoint(train_module.train(config, tmp_path / "plain").parent / "last.pt")
    off = replace(config, stream=StreamTrainConfig(weight=0.0, seconds=5.0, batch=3, label_window_ms=100))
    other = load_checkpoint(train_module.train(off, tmp_path / "off").parent / "last.pt")
    for key in plain[WEIGHTS_KEY]:
        torch.testing.assert_close(plain[WEIGHTS_KEY][key], other[WEIGHTS_KEY][key], rtol=0, atol=0)
    assert plain["history"][0].keys() == other["history"][0].keys()
    assert not any(k.startswith("stream") for k in plain["history"][0])


def test_init_from_and_resume_with_streams_are_exact(
    stream_run: Path, full_dataset: Path, negatives: Path, tmp_path: Path, monkeypatch
) -> None:
    config = _stream_config((str(full_dataset),), negatives, epochs=2, init_from=str(stream_run), lr=1e-3)
    straight = load_checkpoint(train_module.train(config, tmp_path / "straight").parent / "last.pt")
    start = load_checkpoint(stream_run)[WEIGHTS_KEY]
    for key in ("frontend.mean", "frontend.std"):  # the input normalisation is the checkpoint's, not refitted
        torch.testing.assert_close(straight[WEIGHTS_KEY][key], start[key], rtol=0, atol=0)

    train_killed_after_epoch_1(config, tmp_path / "interrupted", monkeypatch)
    argv = ["train", "--resume", "--out", str(tmp_path / "interrupted"), "--init-from", str(stream_run)]
    assert main(argv) == 0  # --init-from is saved in the run: repeating it is no conflict
    resumed = load_checkpoint(tmp_path / "interrupted" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    for key in straight[WEIGHTS_KEY]:
        torch.testing.assert_close(straight[WEIGHTS_KEY][key], resumed[WEIGHTS_KEY][key], rtol=0, atol=0)
    assert [h["stream_loss"] for h in straight["history"]] == [h["stream_loss"] for h in resumed["history"]]


def test_init_from_a_different_model_is_one_line(stream_run: Path, full_dataset: Path, tmp_path: Path, capsys) -> None:
    base = ["train", "--data", str(full_dataset), "--labels", TINY_LABELS, "--epochs", "1", "--max-steps", "1"]
    argv = [*base, "--hidden-size", "48", "--init-from", str(stream_run), "--out", str(tmp_path / "a")]
    err = _one_line_error(capsys, argv)
    assert "--init-from" in err and "hidden_size 32 (this run: 48)" in err
    err = _one_line_error(capsys, [*base, "--init-from", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    assert "no such checkpoint" in err


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--stream-weight", "-1"], "stream weight"),
        (["--stream-weight", "nan"], "weight"),
        (["--stream-seconds", "1"], "stream seconds"),
        (["--stream-batch", "0"], "stream batch"),
    ],
)
def test_bad_stream_options_are_one_line(tmp_path: Path, full_dataset: Path, capsys, flags, expected) -> None:
    argv = ["train", "--data", str(full_dataset), "--labels", "yes,no", "--out", str(tmp_path / "run"), *flags]
    assert expected in _one_line_error(capsys, argv)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_stream_options_in_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--stream-weight", "--stream-seconds", "--stream-batch", "--init-from"):
        assert flag in out
