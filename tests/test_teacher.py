"""The pretrained-embedding teacher, with tiny stand-in ONNX models (same names and shapes as openWakeWord's two):
it learns the synthetic words, caches and reuses its work, aligns soft labels by path and fails in one line."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

import kws.teacher.build as teacher
import kws.teacher.embedding as embedding
from kws import cli
from kws.config import DataConfig, TeacherConfig, to_dict
from kws.data.splits import prepare
from kws.errors import KWSError
from kws.teacher import cache as teacher_cache
from kws.teacher import head as teacher_head
from support.teacher_models import HOP, N_FFT, SR, make_stand_in_models
from support.tiny import TINY_LABELS

EPOCHS = 80


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_stand_in_models(tmp_path_factory.mktemp("embedding_models"))


def _data_config(full_dataset: Path, **changes) -> DataConfig:
    return DataConfig(
        roots=(str(full_dataset),), labels=TINY_LABELS, validation_percent=15, testing_percent=15, **changes
    )


class CountingEmbed:
    """Wraps ``SpeechEmbedding.embed`` to count the clips it embeds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls, self.clips = 0, 0
        real = embedding.SpeechEmbedding.embed

        def embed(this, audio, *args, **kwargs):
            self.calls += 1
            self.clips += len(audio)
            return real(this, audio, *args, **kwargs)

        monkeypatch.setattr(embedding.SpeechEmbedding, "embed", embed)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path, models: Path):
    """One teacher trained on the synthetic dataset: (out_dir, result, data_config, config)."""
    logging.getLogger("kws").setLevel(logging.WARNING)
    out = tmp_path_factory.mktemp("teacher")
    data_config = _data_config(full_dataset)
    config = TeacherConfig(epochs=EPOCHS)
    result = teacher.build_teacher(data_config, config, out, embedding_models=models, threads=1)
    return out, result, data_config, config


def test_embedding_shapes_units_and_batch_independence(models: Path) -> None:
    embedder = embedding.SpeechEmbedding(models, threads=1)
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    floats = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.01 * rng.standard_normal(SR)]).astype(np.float32)
    ints = np.round(floats * 32768).astype(np.int16)
    out = embedder.embed(ints)
    assert out.shape == (2, 16, embedding.EMBEDDING_DIM) and out.dtype == np.float32
    np.testing.assert_array_equal(embedder.embed(floats), out)  # float in [-1, 1] == its int16 version
    np.testing.assert_allclose(embedder.embed(ints[1:], batch_clips=1)[0], out[1], rtol=1e-5, atol=1e-5)
    # centred in 0.5 s of zeros: the windows cover the whole clip and the first one starts in silence
    pad = embedder.pad_samples
    assert pad == SR // 2
    mel = embedder.mel(np.concatenate([np.zeros(pad), ints[0].astype(np.float32), np.zeros(pad)]).astype(np.float32))
    assert mel.shape == ((SR + 2 * pad - N_FFT) // HOP + 1, embedding.MEL_BINS)
    assert mel[: pad // HOP - 4].std() < 1e-6 < mel[pad // HOP + 5 :].std()
    assert embedder.embed(np.zeros((0, SR), np.int16)).shape == (0, 16, embedding.EMBEDDING_DIM)
    assert set(embedder.fingerprint) == {embedding.MEL_FILE, embedding.EMBEDDING_FILE}


def test_teacher_learns_the_synthetic_words(built) -> None:
    out, result, _, _ = built
    assert not result.reused and result.embed_seconds > 0
    n_labels = len(TINY_LABELS.split(",")) + 2
    hits = clips = 0
    for split in ("validation", "test"):
        report = result.reports[split]
        assert report["clips"] >= 10 and len(report["per_class"]) == n_labels
        hits, clips = hits + round(report["accuracy"] * report["clips"]), clips + report["clips"]
        assert (out / f"{split}.json").is_file() and (out / f"{split}_confusion.png").stat().st_size > 1000
    assert hits / clips > 0.8, (hits, clips)  # chance is 1/6
    head, config, labels, payload = teacher.load_teacher(out / teacher.TEACHER)
    assert labels == ["_silence_", "_unknown_", *TINY_LABELS.split(",")]
    assert config == TeacherConfig(epochs=EPOCHS)
    assert tuple(payload["data"]["roots"]) == built[2].roots
    with np.load(out / teacher_cache.SOFT_LABELS) as f:
        logits, targets, splits = f["logits"], f["targets"], f["splits"]
        assert f["labels"].tolist() == labels and logits.dtype == np.float32
    assert logits.shape == (len(targets), n_labels)
    val = splits == "validation"
    assert np.mean(logits[val].argmax(1) == targets[val]) == pytest.approx(result.reports["validation"]["accuracy"])
    history = payload["history"]
    assert max(h["val_accuracy"] for h in history) == pytest.approx(result.reports["validation"]["accuracy"])
    assert history[-1]["train_loss"] < history[0]["train_loss"] and payload["train_accuracy"] > 0.9


@pytest.mark.parametrize("pooling", ["attention", "flatten"])
def test_every_head_learns(built, pooling: str) -> None:
    out, _, data_config, _ = built
    prepared = prepare(data_config, SR, SR, 0, ("train", "validation", "test"))
    with np.load(out / teacher_cache.EMBEDDINGS) as f:
        x = {name: f[name].astype(np.float32) for name in ("train", "validation", "test")}
    config = TeacherConfig(epochs=EPOCHS, pooling=pooling)
    n_labels = len(prepared.labels)
    head, _ = teacher_head.train_head(
        config,
        n_labels,
        x["train"],
        prepared.splits["train"].labels,
        x["validation"],
        prepared.splits["validation"].labels,
    )
    held_out = np.concatenate([x["validation"], x["test"]])
    truth = np.concatenate([prepared.splits["validation"].labels, prepared.splits["test"].labels])
    logits = teacher_head.head_logits(head, held_out)
    assert logits.shape == (len(truth), n_labels)
    assert np.mean(logits.argmax(1) == truth) > 0.8


def test_soft_labels_cover_the_students_examples(built) -> None:
    out, _, data_config, _ = built
    prepared = prepare(data_config, SR, SR, 0, ("train", "validation"))  # exactly what `kws train` loads
    with np.load(out / teacher_cache.SOFT_LABELS) as f:
        stored_paths, stored_logits, splits = f["paths"].tolist(), f["logits"], f["splits"]
    for split in ("train", "validation"):
        paths = prepared.splits[split].paths
        assert [p for p, s in zip(stored_paths, splits, strict=True) if s == split] == paths
    paths = prepared.splits["train"].paths
    soft = teacher_cache.load_soft_labels(out, prepared.labels, paths)
    assert soft.shape == (len(paths), len(prepared.labels)) and not np.isnan(soft).any()
    np.testing.assert_array_equal(soft, stored_logits[: len(paths)])
    order = np.random.default_rng(0).permutation(len(paths))
    shuffled = teacher_cache.load_soft_labels(out, prepared.labels, [paths[i] for i in order] + ["nowhere.wav"])
    np.testing.assert_array_equal(shuffled[:-1], soft[order])
    assert np.isnan(shuffled[-1]).all()
    with pytest.raises(KWSError) as exc:
        teacher_cache.load_soft_labels(out, [*prepared.labels[:-1], "stop"], paths)
    assert "differ" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(KWSError, match="no soft_labels.npz"):
        teacher_cache.load_soft_labels(out / "missing", prepared.labels, paths)


def test_duplicate_paths_match_occurrence_by_occurrence(tmp_path: Path) -> None:
    teacher_cache.save_npz(
        tmp_path / teacher_cache.SOFT_LABELS,
        {
            "paths": np.asarray(["noise:a.wav@0", "x.wav", "noise:a.wav@0"]),
            "logits": np.arange(6, dtype=np.float32).reshape(3, 2),
            "labels": np.asarray(["_silence_", "_unknown_"]),
        },
    )
    paths = ["noise:a.wav@0", "noise:a.wav@0", "x.wav"]
    soft = teacher_cache.load_soft_labels(tmp_path, ["_silence_", "_unknown_"], paths)
    np.testing.assert_array_equal(soft, [[0, 1], [4, 5], [2, 3]])


def test_second_run_reuses_the_cache(built, models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, first, data_config, config = built
    before = (out / teacher_cache.SOFT_LABELS).read_bytes()
    counter = CountingEmbed(monkeypatch)
    trained = []
    real_train = teacher.train_head
    monkeypatch.setattr(teacher, "train_head", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    again = teacher.build_teacher(data_config, config, out, embedding_models=models, threads=1)
    assert again.reused and counter.calls == 0 and not trained
    assert again.reports["test"]["accuracy"] == first.reports["test"]["accuracy"]
    assert (out / teacher_cache.SOFT_LABELS).read_bytes() == before
    # a new head setting retrains the head on the cached embeddings
    changed = teacher.build_teacher(
        data_config, TeacherConfig(epochs=3, pooling="flatten"), out, embedding_models=models, threads=1
    )
    assert not changed.reused and counter.calls == 0 and trained and changed.embed_seconds == 0
    # a changed data config embeds again
    other_data = _data_config(data_config.roots[0], unknown_ratio=0.5)
    other = teacher.build_teacher(other_data, config, out, embedding_models=models, threads=1)
    assert not other.reused and counter.calls == 3 and other.embed_seconds > 0


def test_augmented_views_are_embedded_and_cached(tmp_path: Path, full_dataset: Path, models: Path, monkeypatch) -> None:
    counter = CountingEmbed(monkeypatch)
    config = TeacherConfig(epochs=2, augment_views=2, pooling="attention")
    data_config = _data_config(full_dataset)
    teacher.build_teacher(data_config, config, tmp_path, embedding_models=models, threads=1)
    n_train = len(prepare(data_config, SR, SR, 0, ("train",)).splits["train"])
    assert counter.calls == 3 + 2 and counter.clips > 3 * n_train
    with np.load(tmp_path / teacher_cache.VIEWS) as f:
        views = f["train_views"]
    with np.load(tmp_path / teacher_cache.EMBEDDINGS) as f:
        clean = f["train"]
    assert views.shape == (2, *clean.shape) and not np.array_equal(views[0], views[1])
    retrained = TeacherConfig(epochs=3, augment_views=2)
    teacher.build_teacher(data_config, retrained, tmp_path, embedding_models=models, threads=1)
    assert counter.calls == 5  # clean embeddings and views both reused


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str, str]:
    """Run ``kws teacher ARGS`` through the real CLI (registering the command if cli.py does not yet)."""
    monkeypatch.setitem(cli.COMMANDS, "teacher", ("kws.teacher.build", "teacher"))
    code = cli.main(["teacher", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_builds_the_same_data_config_as_train(
    tmp_path: Path, full_dataset: Path, models: Path, monkeypatch, capsys
):
    from kws.train import cli as train_cli

    argv = ["--data", str(full_dataset), "--labels", TINY_LABELS, "--seed", "3", "--unknown-ratio", "0.8"]
    code, out, err = _cli(
        [*argv, "--out", str(tmp_path), "--embedding-models", str(models), "--epochs", "5"], monkeypatch, capsys
    )
    assert code == 0, err
    assert "validation split: accuracy" in out and "soft labels:" in out
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    student = train_cli.config_from_args(parser.parse_args(argv))
    payload = teacher.load_teacher_payload(tmp_path / teacher.TEACHER)
    assert payload["data"] == to_dict(student.data) and payload["data_seed"] == student.train.seed == 3
    parser = argparse.ArgumentParser()
    teacher.add_arguments(parser)
    args = parser.parse_args(["--data", "a", "b", "--data", "c"])
    assert args.data == ["a", "b", "c"] and args.out == Path("runs/teacher")


def test_missing_package_is_one_line(tmp_path: Path, full_dataset: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(embedding, "find_spec", lambda name: None)
    with pytest.raises(KWSError) as exc:
        embedding.SpeechEmbedding()
    assert str(exc.value) == embedding.MISSING_PACKAGE
    code, out, err = _cli(["--data", str(full_dataset), "--out", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert err.strip() == f"kws teacher: error: {embedding.MISSING_PACKAGE}"
    assert "pip install 'kws[teacher]'" in err and not list(tmp_path.iterdir())


def test_bad_model_folder_is_one_line(tmp_path: Path, full_dataset: Path, models: Path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ["--out", str(tmp_path / "out")]
    code, _, err = _cli(["--data", str(full_dataset), "--embedding-models", str(empty), *out], monkeypatch, capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "melspectrogram.onnx" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / embedding.MEL_FILE).write_bytes(b"not onnx")
    (broken / embedding.EMBEDDING_FILE).write_bytes((models / embedding.EMBEDDING_FILE).read_bytes())
    code, _, err = _cli(["--data", str(full_dataset), "--embedding-models", str(broken), *out], monkeypatch, capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "cannot load" in err
    assert not (tmp_path / "out").exists()


def test_installed_package_files_are_found_without_importing_it() -> None:
    import sys

    try:
        folder = embedding.package_models_dir()
    except KWSError:
        pytest.skip("openwakeword is not installed (the optional kws[teacher] extra)")
    assert (folder / embedding.MEL_FILE).is_file() and (folder / embedding.EMBEDDING_FILE).is_file()
    assert "openwakeword" not in sys.modules


def test_out_of_fold_soft_labels(built, models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--soft-label-folds K: each training clip's soft label comes from a head that never saw its speaker;
    validation and test keep the head trained on everything."""
    from kws.teacher.head import speaker_folds

    _, _, data_config, config = built
    sizes = []
    real_train = teacher.train_head

    def recording(cfg, n_labels, x, y, *rest):
        sizes.append(len(x))
        return real_train(cfg, n_labels, x, y, *rest)

    monkeypatch.setattr(teacher, "train_head", recording)
    import kws.teacher.head as head_module

    monkeypatch.setattr(head_module, "train_head", recording)
    folds = 3
    oof = dataclasses.replace(config, soft_label_folds=folds)
    teacher.build_teacher(data_config, oof, tmp_path, embedding_models=models, threads=1)
    sizes_oof, sizes[:] = list(sizes), []
    teacher.build_teacher(data_config, config, tmp_path / "plain", embedding_models=models, threads=1)
    train = prepare(data_config, SR, SR, 0, ("train",)).splits["train"]
    fold = speaker_folds(train.speakers, folds)
    for speaker in set(train.speakers):  # a speaker's clips share one fold
        assert len({int(f) for f, s in zip(fold, train.speakers, strict=True) if s == speaker}) == 1
    held_out_sizes = sorted(int((fold != k).sum()) for k in range(folds) if 0 < (fold == k).sum() < len(fold))
    assert sizes_oof[0] == len(train) and sorted(sizes_oof[1:]) == held_out_sizes, "fold heads never see their fold"
    assert sizes == [len(train)], "without folds: the one head"
    plain = tmp_path / "plain" / teacher_cache.SOFT_LABELS
    with np.load(tmp_path / teacher_cache.SOFT_LABELS) as a, np.load(plain) as b:
        train_rows, other_rows = a["splits"] == "train", a["splits"] != "train"
        assert np.isfinite(a["logits"]).all()
        assert not np.allclose(a["logits"][train_rows], b["logits"][train_rows])
        np.testing.assert_allclose(a["logits"][other_rows], b["logits"][other_rows], rtol=1e-5, atol=1e-5)
