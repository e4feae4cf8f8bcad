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
