"""Fine-grained unknowns (issue #8, ``kws train --fine-unknowns``): the word list comes from the data, the model's
labels' logits are the log-sum-exp collapse of its word outputs, the fine loss, a tiny run that trains, evaluates,
exports (ONNX = PyTorch on the labels) and resumes exactly; the flag off is the plain run; old checkpoints load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from test_stream_training import negatives  # noqa: F401 (a fixture)
from test_train_reliability import _one_line_error

import kws.train.loop as train_module
from kws.cli import main
from kws.config import DataConfig, FeatureConfig, ModelConfig, RunConfig, TrainConfig, from_dict, to_dict
from kws.data.splits import prepare
from kws.errors import ConfigError
from kws.model.checkpoint import WEIGHTS_KEY, load_checkpoint, model_from_checkpoint, run_config
from kws.model.network import UNKNOWN_OUTPUT, KWSModel, UnknownWordsHead, collapse_unknowns
from kws.train.objective import Objective
from support.interrupt import train_killed_after_epoch_1
from support.synthetic import OTHER_WORDS, SAMPLE_RATE
from support.tiny import TINY_LABELS, tiny_run_config

LABELS = ["_silence_", "_unknown_", *TINY_LABELS.split(",")]
WORDS = tuple(sorted(OTHER_WORDS))
"""The synthetic datasets' non-keyword words ("bed", "cat"): the fine outputs of a tiny run."""


def _prepare(roots: tuple[str, ...], negatives: tuple[str, ...] = ()):  # noqa: F811 (not the fixture)
    config = DataConfig(roots=roots, negatives=negatives, labels=TINY_LABELS, validation_percent=15, testing_percent=15)
    return prepare(config, SAMPLE_RATE, SAMPLE_RATE, 0, ("train", "validation"))


@pytest.mark.parametrize("layout", ["full", "archive"])
def test_the_word_list_and_targets_come_from_the_data(
    layout: str,
    full_dataset: Path,
    test_archive: Path,
    negatives: Path,  # noqa: F811 (the fixture)
) -> None:
    from kws.data.layout import unknown_words

    root = full_dataset if layout == "full" else test_archive  # the archive names the word: _unknown_/WORD_...
    prepared = _prepare((str(root),), (str(negatives),))
    assert prepared.labels == LABELS and unknown_words(prepared.corpus, prepared.labels) == WORDS
    train = prepared.splits["train"]
    fine = train.fine_labels(LABELS, WORDS)
    unknown = train.labels == UNKNOWN_OUTPUT
    crops = np.asarray([s == "negative" for s in train.speakers])
    assert crops.any() and (fine[crops] == UNKNOWN_OUTPUT).all(), "--negatives crops stay on _unknown_"
    for i in np.flatnonzero(unknown & ~crops):
        assert fine[i] == len(LABELS) + WORDS.index(train.words[i]) and train.words[i] in train.paths[i]
    np.testing.assert_array_equal(fine[~unknown], train.labels[~unknown])  # keywords and _silence_ keep theirs
    assert {len(LABELS), len(LABELS) + 1} <= set(fine[unknown])
    np.testing.assert_array_equal(train.fine_labels(LABELS, ()), train.labels)
    partial = train.fine_labels(LABELS, WORDS[:1])  # a word without an output stays on _unknown_
    assert set(partial[unknown]) == {UNKNOWN_OUTPUT, len(LABELS)}


def test_the_labels_logits_are_the_logsumexp_collapse() -> None:
    config = ModelConfig(hidden_size=16, n_inputs=40, n_labels=len(LABELS), unknown_words=WORDS)
    model = KWSModel(FeatureConfig(), config).eval()
    assert isinstance(model.head, UnknownWordsHead) and model.head.out_features == len(LABELS) + len(WORDS)
    plain = KWSModel(FeatureConfig(), replace(config, unknown_words=()))
    assert model.state_dict().keys() == plain.state_dict().keys()  # head.weight / head.bias, only taller
    feats = torch.randn(3, 20, 40)
    with torch.no_grad():
        logits, state = model(feats)
        fine, fine_state = model(feats, fine=True)
    assert logits.shape == (3, 20, len(LABELS)) and fine.shape == (3, 20, len(LABELS) + len(WORDS))
    torch.testing.assert_close(state, fine_state, rtol=0, atol=0)
    p, q = logits.softmax(-1), fine.softmax(-1)  # the softmax of the collapse merges the unknown probabilities
    torch.testing.assert_close(p[..., UNKNOWN_OUTPUT], q[..., UNKNOWN_OUTPUT] + q[..., len(LABELS) :].sum(-1))
    others = [i for i in range(len(LABELS)) if i != UNKNOWN_OUTPUT]
    torch.testing.assert_close(p[..., others], q[..., others])
    torch.testing.assert_close(logits[..., others], fine[..., others], rtol=0, atol=0)
    expected = torch.logsumexp(fine[..., [UNKNOWN_OUTPUT, *range(len(LABELS), fine.shape[-1])]], -1)
    torch.testing.assert_close(logits[..., UNKNOWN_OUTPUT], expected)
    coarse, pooled = model.pool_fine(fine)
    torch.testing.assert_close(coarse, model.pool(logits))
    torch.testing.assert_close(pooled, model.pool(fine))
    assert plain.pool_fine(fine[..., : len(LABELS)])[1] is None
    bound = 1 / np.sqrt(16)  # nn.Linear's initial biases lie in [-bound, bound]
    merged = collapse_unknowns(model.head.bias.detach(), len(LABELS))[UNKNOWN_OUTPUT]
    assert float(merged) <= bound + 1e-6, "the collapsed _unknown_ bias starts in a plain head's range"


def test_fine_loss_adds_the_word_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    n_labels, labels = 4, np.array([0, 1, 1, 2, 3, 1])
    fine_labels = np.array([0, 4, 1, 2, 3, 5])
    logits, fine = torch.randn(6, n_labels, generator=gen), torch.randn(6, n_labels + 2, generator=gen)
    y = torch.from_numpy(labels)
    for power in (0.0, 1.0):
        config = TrainConfig(label_smoothing=0.1, class_weight_power=power, fine_weight=0.5)
        plain = Objective(config, labels, n_labels)
        objective = Objective(config, labels, n_labels, fine_labels=fine_labels)
        per_clip = torch.nn.functional.cross_entropy(
            fine, torch.from_numpy(fine_labels), label_smoothing=0.1, reduction="none"
        )
        w = torch.ones(6) if plain.weights is None else plain.weights[y]
        expected = plain(logits, y, np.arange(6)) + 0.5 * (w * per_clip).sum() / w.sum()
        torch.testing.assert_close(objective(logits, y, np.arange(6), fine), expected)
        torch.testing.assert_close(plain(logits, y, np.arange(6), fine), plain(logits, y, np.arange(6)))
        picked = np.array([4, 1])  # index picks the batch's rows of the fine labels
        torch.testing.assert_close(
            objective(logits[picked], y[picked], picked, fine[picked]),
            plain(logits[picked], y[picked], picked) + 0.5 * (w[picked] * per_clip[picked]).sum() / w[picked].sum(),
        )


# ------------------------------------------------------------------------------------------ tiny runs


def _fine_config(roots: tuple[str, ...], epochs: int = 2, **train_fields) -> RunConfig:
    config = tiny_run_config(roots, epochs=epochs)
    return replace(config, train=replace(config.train, fine_unknowns=True, **train_fields))


@pytest.fixture(scope="module")
def fine_run(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path) -> Path:
    """The best checkpoint of a 2-epoch tiny run with --fine-unknowns."""
    return train_module.train(_fine_config((str(full_dataset),)), tmp_path_factory.mktemp("fine") / "run")


def test_fine_run_trains_evaluates_and_rebuilds(fine_run: Path, full_dataset: Path, tmp_path: Path) -> None:
    model, labels, payload = model_from_checkpoint(fine_run)
    assert labels == LABELS and model.config.unknown_words == WORDS
    assert model.head.weight.shape[0] == len(LABELS) + len(WORDS)
    assert tuple(payload["config"]["model"]["unknown_words"]) == WORDS
    history = [json.loads(line) for line in (fine_run.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) and 0 <= h["val_accuracy"] <= 1 for h in history)
    out = tmp_path / "eval"
    assert main(["evaluate", str(fine_run), "--data", str(full_dataset), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] > 0 and report["labels"] == LABELS


def test_fine_run_exports_the_labels(fine_run: Path, full_dataset: Path, tmp_path: Path) -> None:
    from kws.export import checks as ck
    from kws.export.pipeline import ExportOptions, export_checkpoint
    from kws.runtime import load_model

    result = export_checkpoint(fine_run, tmp_path / "export", ExportOptions(timing=False, data=full_dataset))
    failed = [c for c in result.checks if c.passed is False and "size" not in c.name]
    assert not failed, failed  # fp32 = PyTorch, streaming = whole clip, reference evaluator, int8 accuracy
    names = {c.name for c in result.checks}
    assert {"fp32 parity: max |diff| of scores", "ReferenceEvaluator = onnxruntime"} <= names
    paths = result.paths
    model, _, _ = model_from_checkpoint(fine_run)
    files = [sorted((full_dataset / w).glob("*.wav"))[0] for w in (*WORDS, "yes", "up")]
    clips = np.stack([sf.read(f, dtype="float32")[0][:SAMPLE_RATE] for f in files])
    reference = ck.torch_clip_scores(model, clips)
    assert reference.shape == (len(clips), len(LABELS))
    np.testing.assert_allclose(ck.onnx_clip_scores(ck.session(paths.clip), clips), reference, atol=1e-4)
    np.testing.assert_allclose(ck.streamed_clip_scores(paths.stream, clips), reference, atol=1e-4)
    assert load_model(paths.stream_int8).info.labels == tuple(LABELS)
    int8 = ck.onnx_clip_scores(ck.session(paths.clip_int8), clips)
    assert int8.shape == reference.shape and np.abs(int8 - reference).max() < 0.2
    streamed_int8 = ck.streamed_clip_scores(paths.stream_int8, clips)
    assert streamed_int8.shape == reference.shape and np.abs(streamed_int8 - reference).max() < 0.2


def test_fine_run_resumes_exactly(full_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    config = _fine_config((str(full_dataset),), epochs=2)
    straight = load_checkpoint(train_module.train(config, tmp_path / "straight").parent / "last.pt")
    train_killed_after_epoch_1(config, tmp_path / "interrupted", monkeypatch)
    assert main(["train", "--resume", "--out", str(tmp_path / "interrupted"), "--fine-unknowns"]) == 0
    resumed = load_checkpoint(tmp_path / "interrupted" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2
    assert run_config(resumed).model.unknown_words == WORDS
    for key in straight[WEIGHTS_KEY]:
        torch.testing.assert_close(straight[WEIGHTS_KEY][key], resumed[WEIGHTS_KEY][key], rtol=0, atol=0)
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]


def _plain_config(full_dataset: Path) -> RunConfig:
    config = tiny_run_config((str(full_dataset),), epochs=1)
    return replace(config, train=replace(config.train, max_steps=3))


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path) -> Path:
    """``last.pt`` of a 3-step tiny run without --fine-unknowns."""
    return train_module.train(_plain_config(full_dataset), tmp_path_factory.mktemp("plain") / "run").parent / "last.pt"


def test_flag_off_is_the_plain_run(plain_run: Path, tmp_path: Path, full_dataset: Path) -> None:
    config = _plain_config(full_dataset)
    plain = load_checkpoint(plain_run)
    off = replace(config, train=replace(config.train, fine_unknowns=False, fine_weight=7.0))
    other = load_checkpoint(train_module.train(off, tmp_path / "off").parent / "last.pt")
    assert run_config(plain).model.unknown_words == () and plain[WEIGHTS_KEY]["head.weight"].shape[0] == len(LABELS)
    for key in plain[WEIGHTS_KEY]:
        torch.testing.assert_close(plain[WEIGHTS_KEY][key], other[WEIGHTS_KEY][key], rtol=0, atol=0)
    assert [h["train_loss"] for h in plain["history"]] == [h["train_loss"] for h in other["history"]]
    on = replace(config, train=replace(config.train, fine_unknowns=True))
    fine = load_checkpoint(train_module.train(on, tmp_path / "on").parent / "last.pt")
    assert fine[WEIGHTS_KEY]["head.weight"].shape[0] == len(LABELS) + len(WORDS)
    assert fine["history"][0]["train_loss"] != plain["history"][0]["train_loss"]


def test_old_checkpoints_load_without_unknown_words(plain_run: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(plain_run)
    del payload["config"]["model"]["unknown_words"]
    del payload["config"]["train"]["fine_unknowns"]
    del payload["config"]["train"]["fine_weight"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    model, _, loaded = model_from_checkpoint(old)
    config = run_config(loaded)
    assert config.model.unknown_words == () and not config.train.fine_unknowns and config.train.fine_weight == 1.0
    assert type(model.head) is torch.nn.Linear


def test_config_round_trip_and_bad_values(tmp_path: Path, full_dataset: Path, capsys) -> None:
    config = ModelConfig(unknown_words=WORDS)
    assert from_dict(ModelConfig, json.loads(json.dumps(to_dict(config)))) == config
    for words in (("bed", "bed"), ("",)):
        with pytest.raises(ConfigError, match="unknown_words"):
            ModelConfig(unknown_words=words)
    argv = ["train", "--data", str(full_dataset), "--labels", TINY_LABELS, "--out", str(tmp_path / "run")]
    assert "fine_weight" in _one_line_error(capsys, [*argv, "--fine-unknowns", "--fine-weight", "-1"])
    assert not (tmp_path / "run" / "last.pt").exists()


def test_fine_options_in_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--fine-unknowns" in out and "--fine-weight" in out


def test_init_from_a_fine_run(fine_run: Path, full_dataset: Path, tmp_path: Path, capsys) -> None:
    base = ["train", "--data", str(full_dataset), "--labels", TINY_LABELS, "--epochs", "1", "--max-steps", "1"]
    base += ["--hidden-size", "32", "--dropout", "0", "--init-from", str(fine_run)]
    err = _one_line_error(capsys, [*base, "--out", str(tmp_path / "a")])  # a second stage needs the flag too
    assert "--init-from" in err and "unknown_words ('bed', 'cat') (this run: ())" in err
    assert main([*base, "--fine-unknowns", "--out", str(tmp_path / "b")]) == 0
    assert run_config(load_checkpoint(tmp_path / "b" / "last.pt")).model.unknown_words == WORDS
