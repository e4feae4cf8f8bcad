"""``kws teacher --export-verifier OUT --train-verifier-with MODEL``: the verifier's head fine-tuned on windows
where a first stage fires in training streams (kws.teacher.verifier_train), with the stand-in embedding files of
``support.teacher_models`` and the tiny first stage, and exported as a verifier file saying how it was trained."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from test_stream_training import negatives  # noqa: F401 (a fixture)
from test_verifier_export import LABELS, make_teacher

from kws import cli
from kws.config import DataConfig
from kws.runtime.verifier import Verifier
from kws.teacher.build import load_teacher
from kws.teacher.verifier_export import export_verifier
from kws.teacher.verifier_train import (
    KIND_FALSE,
    KIND_HIT,
    KIND_MISSED,
    KIND_UNKNOWN_CLIP,
    WINDOW_KINDS,
    VerifierTrainConfig,
    cut,
    stream_windows,
    train_verifier_head,
)
from kws.train.streams import KIND_KEYWORD, KIND_NEGATIVE, KIND_UNKNOWN, StreamEvent, TrainingStream
from kws.verifier_format import META_TEACHER
from support.teacher_models import SR, make_stand_in_models

UNKNOWN, YES, NO = LABELS.index("_unknown_"), LABELS.index("yes"), LABELS.index("no")


@pytest.fixture(scope="module")
def embedding_models(tmp_path_factory) -> Path:
    return make_stand_in_models(tmp_path_factory.mktemp("embedding_models"))


def test_cut_pads_with_zeros_outside_the_stream() -> None:
    audio = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(cut(audio, 3, 5), [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(cut(audio, 12, 4), [9, 10, 0, 0])
    np.testing.assert_array_equal(cut(audio, 6, 2), [5, 6])


def test_windows_are_labelled_by_what_was_planted_there() -> None:
    """A detection inside a keyword is that keyword's (even under another name); elsewhere it is a false accept
    (one window per jitter); a missed keyword and an unknown clip give windows too."""
    audio = np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32)
    events = (
        StreamEvent(KIND_KEYWORD, YES, SR, 2 * SR, SR + 2000, SR + 9000),
        StreamEvent(KIND_KEYWORD, NO, 4 * SR, 5 * SR, 4 * SR + 2000, 4 * SR + 9000),
        StreamEvent(KIND_NEGATIVE, UNKNOWN, 6 * SR, 8 * SR, 6 * SR, 8 * SR),
        StreamEvent(KIND_UNKNOWN, UNKNOWN, 8 * SR, 9 * SR, 8 * SR, 9 * SR),
    )
    stream = TrainingStream(audio, np.zeros(1, np.int64), events)
    detections = [SimpleNamespace(time=(SR + 9500) / SR, keyword="no"), SimpleNamespace(time=7.0, keyword="yes")]
    rows = stream_windows(stream, detections, LABELS, SR, 800, 160, (-64, 0, 64), np.random.default_rng(1))
    kinds = [WINDOW_KINDS[k] for _, _, k in rows]
    assert kinds == [KIND_HIT, KIND_FALSE, KIND_FALSE, KIND_FALSE, KIND_MISSED, KIND_UNKNOWN_CLIP]
    assert [label for _, label, _ in rows] == [YES, UNKNOWN, UNKNOWN, UNKNOWN, NO, UNKNOWN]
    np.testing.assert_array_equal(rows[0][0], audio[SR + 9500 + 160 - 800 : SR + 9500 + 160])
    np.testing.assert_array_equal(rows[3][0], audio[7 * SR + 224 - 800 : 7 * SR + 224])
    assert all(len(w) == 800 for w, _, _ in rows)


def test_config_is_checked() -> None:
    with pytest.raises(Exception, match="first_stage_threshold"):
        VerifierTrainConfig(first_stage_threshold=0.0)
    with pytest.raises(Exception, match="keyword_minutes"):
        VerifierTrainConfig(keyword_minutes=0.0)


def test_head_trained_on_first_stage_windows_and_exported(
    embedding_models,
    tiny_exports,
    full_dataset,
    negatives,  # noqa: F811 (the fixture)
    tmp_path,
) -> None:
    teacher = make_teacher(tmp_path / "teacher")
    rng = np.random.default_rng(0)  # the teacher's cache (kws.teacher.cache): 20 clips, 2 augmented views
    targets = rng.integers(0, len(LABELS), 20)
    np.savez(teacher.parent / "embeddings.npz", train=rng.standard_normal((20, 16, 96)).astype(np.float16))
    np.savez(teacher.parent / "train_views.npz", train_views=rng.standard_normal((2, 20, 16, 96)).astype(np.float16))
    np.savez(teacher.parent / "soft_labels.npz", labels=np.asarray(LABELS), targets=targets,
             splits=np.asarray(["train"] * 20))  # fmt: skip
    data = DataConfig(roots=(str(full_dataset),), negatives=(str(negatives),), labels="yes,no,up,down")
    config = VerifierTrainConfig(keyword_minutes=1.5, negative_minutes=1.0, stream_seconds=15.0, epochs=8,
                                 patience=8, holdout=0.3)  # fmt: skip
    head_file = train_verifier_head(teacher, tiny_exports.stream, data, tmp_path / "v.head.pt", window_ms=1300,
                                    window_end_ms=100, config=config, embedding_models=embedding_models)  # fmt: skip
    head, _, labels, payload = load_teacher(head_file)
    training = payload["verifier_training"]
    assert labels == LABELS and training["window_ms"] == 1300 and training["data"]["negatives_part"] == "train"
    assert training["windows"][KIND_HIT] > 0 and training["windows"][KIND_UNKNOWN_CLIP] > 0
    assert len(training["history"]) >= 1 and training["config"]["first_stage_threshold"] == 0.2
    assert training["teacher_clips"] == 60, "the teacher's clean clips and both views"
    original, _, _, _ = load_teacher(teacher)
    assert any(not torch.equal(a, b) for a, b in zip(head.state_dict().values(), original.state_dict().values(),
                                                     strict=True)), "the head was fine-tuned"  # fmt: skip
    out = tmp_path / "verifier.onnx"
    meta = export_verifier(head_file, out, embedding_models=embedding_models, window_ms=1300, window_end_ms=100)
    assert meta.teacher["verifier_training"]["windows"] == training["windows"]
    assert "history" not in meta.teacher["verifier_training"]
    assert Verifier(out).scores(np.zeros(1300 * SR // 1000, np.float32)).shape == (len(LABELS),)


def test_command_trains_then_exports(embedding_models, tiny_exports, full_dataset, negatives, tmp_path,  # noqa: F811
                                     capsys) -> None:  # fmt: skip
    make_teacher(tmp_path / "teacher")
    out = tmp_path / "verifier.onnx"
    base = ["teacher", "--out", str(tmp_path / "teacher"), "--embedding-models", str(embedding_models),
            "--export-verifier", str(out), "--train-verifier-with", str(tiny_exports.stream)]  # fmt: skip
    assert cli.main(base) == 2 and "needs --data" in capsys.readouterr().err
    argv = [*base, "--data", str(full_dataset), "--negatives", str(negatives), "--labels", "yes,no,up,down",
            "--verifier-keyword-minutes", "1", "--verifier-negative-minutes", "0.5", "--threads", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "trained for verification" in capsys.readouterr().out
    assert (tmp_path / "verifier.head.pt").is_file()
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert '"verifier_training"' in props[META_TEACHER] and "kws.teacher.verifier_train" in props[META_TEACHER]
