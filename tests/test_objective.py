"""The training loss: class weights and distillation from a teacher's soft labels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import kws.train.loop as train_module
from kws.config import TrainConfig
from kws.data.splits import prepare
from kws.errors import ConfigError
from kws.train.objective import Objective, class_weights
from support.interrupt import train_killed_after_epoch_1
from support.tiny import tiny_run_config


def test_class_weights_balance_the_classes() -> None:
    labels = np.array([0] * 10 + [1] * 40 + [2] * 50)
    assert class_weights(labels, 3, 0.0) is None
    full = class_weights(labels, 4, 1.0)
    counts = np.bincount(labels, minlength=4)
    totals = full * counts
    np.testing.assert_allclose(totals[:3], totals[0], rtol=1e-6)  # every present class weighs the same in total
    assert full[3] == 0
    assert np.isclose((full * counts).sum(), len(labels), rtol=1e-6)  # mean weight per example is 1
    half = class_weights(labels, 3, 0.5)
    assert full[0] > half[0] > 1 > half[2] > full[2]


def test_plain_objective_is_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(8, 4, generator=gen), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    objective = Objective(TrainConfig(label_smoothing=0.1), labels.numpy(), 4)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(objective(logits, labels, np.arange(8)), expected)
    weighted = Objective(TrainConfig(label_smoothing=0.0, class_weight_power=1.0), np.array([0, 0, 0, 1]), 2)
    two = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    w = weighted.weights
    expected = torch.nn.functional.cross_entropy(two, torch.tensor([0, 1]), weight=w)
    torch.testing.assert_close(weighted(two, torch.tensor([0, 1]), np.arange(2)), expected)


def test_distillation_pulls_towards_the_teacher() -> None:
    n, labels = 6, np.array([0, 1, 2, 0, 1, 2])
    teacher = np.tile(np.array([[4.0, 0.0, 0.0]], np.float32), (n, 1))
    teacher[5] = np.nan  # no soft label: hard loss only, at full weight
    config = TrainConfig(label_smoothing=0.0, distill_weight=0.5, distill_temperature=2.0)
    objective = Objective(config, labels, 3, teacher)
    student = torch.zeros(n, 3, requires_grad=True)
    loss = objective(student, torch.from_numpy(labels), np.arange(n))
    loss.backward()
    assert student.grad[1, 0] < 0 and student.grad[2, 0] < 0, "rows 1-2 are pushed towards the teacher's class 0"
    assert student.grad[5, 2] < 0 and student.grad[5, 0] > 0, "row 5 only follows its hard label"
    matching = Objective(config, labels, 3, np.tile(np.array([[0.0, 0.0, 0.0]], np.float32), (n, 1)))
    hard = Objective(replace(config, distill_weight=0.0), labels, 3)
    x = torch.zeros(n, 3)
    y = torch.from_numpy(labels)
    # a teacher that agrees with the student adds nothing; the hard term keeps half the weight
    torch.testing.assert_close(matching(x, y, np.arange(n)), 0.5 * hard(x, y, np.arange(n)))


def test_bad_settings_are_refused() -> None:
    for kwargs in ({"class_weight_power": -1}, {"distill_weight": 2}, {"distill_temperature": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**kwargs)


def test_train_with_soft_labels(tmp_path: Path, full_dataset: Path) -> None:
    """A student trains from a teacher folder's soft labels; missing labels are a one-line error."""
    config = tiny_run_config((str(full_dataset),), epochs=1)
    fc = config.features
    prepared = prepare(config.data, fc.sample_rate, fc.clip_samples, config.train.seed, ("train",))
    train = prepared.splits["train"]
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    logits = np.eye(len(prepared.labels), dtype=np.float32)[train.labels] * 5
    np.savez(teacher_dir / "soft_labels.npz", paths=np.array(train.paths), logits=logits, labels=prepared.labels)
    config = replace(config, train=replace(config.train, teacher=str(teacher_dir), class_weight_power=0.5))
    best = train_module.train(config, tmp_path / "student")
    assert best.is_file()
    np.savez(teacher_dir / "soft_labels.npz", paths=np.array(train.paths), logits=logits, labels=["a", "b"])
    with pytest.raises(Exception, match="differ from the student"):
        train_module.train(config, tmp_path / "student2")


def test_embedding_term_regresses_the_teachers_embeddings() -> None:
    """The embedding term is weight * MSE(regressor(hidden), target) over the rows with a target; it trains the
    regressor and the student's hidden state, and is absent at weight 0."""
    n, dims, width = 6, 4, 5
    labels = np.array([0, 1, 2, 0, 1, 2])
    targets = np.random.default_rng(0).standard_normal((n, dims)).astype(np.float32)
    targets[5] = np.nan  # no teacher row: no embedding term for it
    config = TrainConfig(label_smoothing=0.0, teacher="t", distill_weight=0.0, embed_distill_weight=2.0)
    objective = Objective(config, labels, 3, None, "cpu", None, targets, width)
    assert objective.regressor is not None and len(objective.parameters()) == 2
    logits = torch.zeros(n, 3)
    hidden = torch.randn(n, width, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.from_numpy(labels)
    loss = objective(logits, y, np.arange(n), None, hidden)
    hard = torch.nn.functional.cross_entropy(logits, y)
    mse = torch.nn.functional.mse_loss(objective.regressor(hidden[:5]), torch.from_numpy(targets[:5]))
    torch.testing.assert_close(loss, hard + 2.0 * mse)
    loss.backward()
    assert hidden.grad[:5].abs().sum() > 0 and not hidden.grad[5].any(), "row 5 has no target"
    assert objective.regressor.weight.grad.abs().sum() > 0
    torch.testing.assert_close(objective(logits, y, np.arange(n)), hard)  # no hidden state given: no term
    off = Objective(replace(config, embed_distill_weight=0.0), labels, 3, None, "cpu", None, targets, width)
    assert off.regressor is None and off.parameters() == []
    with pytest.raises(ConfigError, match="needs a teacher"):
        TrainConfig(embed_distill_weight=1.0)


def _teacher_folder(folder: Path, paths: list[str], labels: np.ndarray, label_names: list[str]) -> None:
    """A stand-in `kws teacher` folder: one-hot soft labels and random [clips, 3 windows, 8] embeddings."""
    folder.mkdir()
    logits = np.eye(len(label_names), dtype=np.float32)[labels] * 5
    np.savez(folder / "soft_labels.npz", paths=np.array(paths), logits=logits, labels=label_names,
             splits=np.array(["train"] * len(paths)))  # fmt: skip
    rng = np.random.default_rng(0)
    np.savez(folder / "embeddings.npz", train=rng.standard_normal((len(paths), 3, 8)).astype(np.float16))


def test_embedding_targets_are_aligned_and_standardised(tmp_path: Path) -> None:
    from kws.errors import KWSError
    from kws.teacher.cache import load_embedding_targets

    paths = ["a.wav", "b.wav", "c.wav", "d.wav"]
    _teacher_folder(tmp_path / "t", paths, np.array([0, 1, 0, 1]), ["x", "y"])
    with np.load(tmp_path / "t" / "embeddings.npz") as f:
        means = f["train"].astype(np.float32).mean(1)
    out = load_embedding_targets(tmp_path / "t", ["c.wav", "a.wav", "nowhere.wav", "b.wav", "d.wav"])
    assert out.shape == (5, 8) and np.isnan(out[2]).all()
    found = out[[1, 3, 0, 4]]  # a, b, c, d
    np.testing.assert_allclose(found.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(found.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(found, (means - means.mean(0)) / means.std(0), rtol=1e-4, atol=1e-4)
    (tmp_path / "t" / "embeddings.npz").unlink()
    with pytest.raises(KWSError, match="no embeddings.npz"):
        load_embedding_targets(tmp_path / "t", paths)


def test_train_with_embedding_distillation_resumes_exactly(tmp_path: Path, full_dataset: Path, monkeypatch) -> None:
    """A student trains with the embedding term; the regressor is saved in the checkpoint (not in the model's
    weights) and an interrupted run resumes to the same weights."""
    from kws.model.checkpoint import WEIGHTS_KEY, load_checkpoint

    config = tiny_run_config((str(full_dataset),), epochs=2)
    fc = config.features
    prepared = prepare(config.data, fc.sample_rate, fc.clip_samples, config.train.seed, ("train",))
    train = prepared.splits["train"]
    _teacher_folder(tmp_path / "teacher", train.paths, train.labels, prepared.labels)
    config = replace(config, train=replace(config.train, teacher=str(tmp_path / "teacher"), embed_distill_weight=1.0))
    straight = load_checkpoint(train_module.train(config, tmp_path / "straight").parent / "last.pt")
    assert straight[train_module.AUX_KEY]["weight"].shape == (8, config.model.hidden_size)
    assert not any("regressor" in key for key in straight[WEIGHTS_KEY])

    train_killed_after_epoch_1(config, tmp_path / "interrupted", monkeypatch)
    resumed = load_checkpoint(train_module.train(config, tmp_path / "interrupted", resume=True).parent / "last.pt")
    for key in straight[WEIGHTS_KEY]:
        torch.testing.assert_close(straight[WEIGHTS_KEY][key], resumed[WEIGHTS_KEY][key], rtol=0, atol=0)
    torch.testing.assert_close(straight[train_module.AUX_KEY]["weight"], resumed[train_module.AUX_KEY]["weight"])
