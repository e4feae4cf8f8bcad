"""kws evaluate: confidence intervals, repeated flags, the checkpoint's own split rule (shared with kws export and
kws bench), and results that are never lost (the output folder is checked first, the figures are printed
before the report is written)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.cli import main
from support.synthetic import KEYWORDS, SAMPLE_RATE, _speaker, make_full_dataset, make_test_archive, synth_clip
from support.tiny import tiny_run_config

torch = pytest.importorskip("torch")

from kws.config import to_dict  # noqa: E402
from kws.data.audio import int16_to_float  # noqa: E402
from kws.data.layout import SPLIT_SALT, load_corpus, which_set  # noqa: E402
from kws.model.checkpoint import load_checkpoint, run_config, save_checkpoint  # noqa: E402
from kws.train import evaluate, evaluation_data  # noqa: E402
from kws.train.evaluate import accuracy, classification_report, format_report, wilson_interval  # noqa: E402
from kws.train.evaluation_data import (  # noqa: E402
    EvaluationError,
    evaluation_corpus,
    load_evaluation_data,
    resolve_split_mode,
)


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _one_line_error(capsys, argv: list[str], command: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith(f"kws {command}: error:") and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------ confidence intervals


class TestWilsonInterval:
    @pytest.mark.parametrize(
        ("successes", "trials", "low", "high"),
        [
            (82, 100, 0.7333, 0.8830),  # textbook values
            (0, 10, 0.0, 0.2775),
            (10, 10, 0.7225, 1.0),
            (1, 2, 0.0945, 0.9055),
            (259, 317, 0.7708, 0.8557),  # scipy.stats.binomtest(259, 317).proportion_ci(method="wilson")
        ],
    )
    def test_known_values(self, successes, trials, low, high) -> None:
        lo, hi = wilson_interval(successes, trials)
        assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)

    def test_exact_ends_symmetry_and_width(self) -> None:
        assert wilson_interval(0, 0) == (0.0, 1.0)
        assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
        lo, hi = wilson_interval(30, 100)
        lo2, hi2 = wilson_interval(70, 100)
        assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
        assert np.diff(wilson_interval(820, 1000)) < np.diff(wilson_interval(82, 100))
        with pytest.raises(ValueError):
            wilson_interval(11, 10)

    def test_report_carries_intervals_of_accuracy_and_recall(self) -> None:
        y_true = np.array([0] * 10 + [1] * 10)
        y_pred = np.array([0] * 8 + [1] * 2 + [1] * 10)
        report = classification_report(y_true, y_pred, ["a", "b"])
        assert report["accuracy_ci95"] == pytest.approx(list(wilson_interval(18, 20)))
        assert report["per_class"]["a"]["recall_ci95"] == pytest.approx(list(wilson_interval(8, 10)))
        assert report["per_class"]["b"]["precision_ci95"] == pytest.approx(list(wilson_interval(10, 12)))
        json.dumps(report)  # plain lists and floats
        text = format_report(report)
        lo, hi = wilson_interval(18, 20)
        assert f"90.00% (95% CI {100 * lo:.2f}-{100 * hi:.2f}%)" in text
        lo, hi = wilson_interval(8, 10)
        assert f"80.0% ({100 * lo:.1f}-{100 * hi:.1f})" in text

    def test_one_accuracy_of_scores_or_predictions(self) -> None:
        labels = np.array([0, 1, 2, 1])
        scores = np.eye(3)[[0, 2, 2, 1]]  # three of four right
        assert accuracy(scores, labels) == accuracy(scores.argmax(1), labels) == 0.75
        assert classification_report(labels, scores.argmax(1), ["a", "b", "c"])["accuracy"] == 0.75
        assert np.isnan(accuracy(np.zeros((0, 3)), np.zeros(0, np.int64)))
        assert accuracy(np.zeros(0, np.int64), np.zeros(0, np.int64), empty=0.0) == 0.0
        assert classification_report(np.zeros(0, np.int64), np.zeros(0, np.int64), ["a"])["accuracy"] == 0.0
        with pytest.raises(ValueError, match="do not match"):
            accuracy(np.zeros(3, np.int64), labels)

    def test_bench_tables_show_the_intervals(self) -> None:
        from kws.bench.formatting import pct_ci

        assert pct_ci(0.82, list(wilson_interval(82, 100))) == "82.0% (73.3-88.3)"
        assert pct_ci(float("nan"), None) == "n/a"


# ----------------------------------------------------------------------------------------- repeated flags


class TestRepeatedFlags:
    """`--data A --data B` means both folders, in every command that takes a list of folders."""

    def test_evaluate(self) -> None:
        args = _parse(evaluate, ["ckpt.pt", "--data", "A", "--data", "B", "C"])
        assert args.data == ["A", "B", "C"]

    def test_bench(self) -> None:
        from kws.bench import options as bench

        argv = ["--checkpoint", "c.pt", "--out", "o", "--data", "A", "--data", "B"]
        argv += ["--negatives", "N", "--negatives", "M"]
        options = bench.options_from_args(_parse(bench, argv))
        assert options.data == ("A", "B") and options.negatives == (Path("N"), Path("M"))
        assert "--negatives N M" in options.command()
        assert bench.options_from_args(_parse(bench, argv[:8])).negatives == ()

    def test_export(self) -> None:
        from kws.export import cli

        args = _parse(
            cli, ["c.pt", "-o", "o", "--data", "A", "--data", "B", "--calibration", "C", "--calibration", "D"]
        )
        assert args.data == [Path("A"), Path("B")] and args.calibration == [Path("C"), Path("D")]
        assert _parse(cli, ["c.pt", "-o", "o"]).data is None


# --------------------------------------------------------------------------- the checkpoint's own split rule


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory) -> tuple[Path, Path]:
    """A test archive and a full-layout dataset: trained on together, the salted speaker split applies."""
    base = tmp_path_factory.mktemp("two_roots")
    return make_test_archive(base / "archive"), make_full_dataset(base / "full", speakers=24, clips_per_speaker=1)


@pytest.fixture(scope="module")
def multi_root_checkpoint(two_roots, tmp_path_factory) -> Path:
    """A (barely) trained checkpoint of both roots: a few steps are enough, what matters is its record."""
    from kws.train.loop import train

    config = tiny_run_config(tuple(str(r) for r in two_roots), epochs=1)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=2))
    return train(config, tmp_path_factory.mktemp("multi_run"))


def _training_test_clips(checkpoint: Path, root: Path) -> set[str]:
    """The clips of ``root`` that the checkpoint's training put into its test split."""
    corpus = load_corpus(run_config(load_checkpoint(checkpoint)).data)  # the training's own scan
    return {str(c.path) for c in corpus.clips if c.split == "test" and Path(c.path).parent.parent == root}


def _files(paths: list[str]) -> set[str]:
    return {p for p in paths if not p.startswith("noise:")}


class TestSplitRule:
    def test_one_root_of_a_multi_root_run_is_split_as_in_training(self, multi_root_checkpoint, two_roots) -> None:
        _, full = two_roots
        payload = load_checkpoint(multi_root_checkpoint)
        trained_test = _training_test_clips(multi_root_checkpoint, full)
        official_test = {str(c.path) for c in load_corpus(dataclasses.replace(
            run_config(payload).data, roots=(str(full),)), "official").clips if c.split == "test"}  # fmt: skip
        assert trained_test and official_test != trained_test, "the data must tell the two rules apart"

        ev = load_evaluation_data(payload, [full], "test")
        assert ev.split_mode == "speaker-hash" and "as in training" in ev.split_mode_how
        labels = payload["labels"]
        scored = _files(ev.data.paths)
        assert scored <= trained_test, f"training clips scored as test: {sorted(scored - trained_test)[:3]}"
        keyword_clips = {p for p in trained_test if Path(p).parent.name in KEYWORDS}
        scored_keywords = {p for p, y in zip(ev.data.paths, ev.data.labels, strict=True) if labels[y] in KEYWORDS}
        assert scored_keywords == keyword_clips

    def test_kws_evaluate_scores_the_training_test_split(self, multi_root_checkpoint, two_roots, tmp_path,
                                                         capsys) -> None:  # fmt: skip
        _, full = two_roots
        out = tmp_path / "eval"
        assert main(["evaluate", str(multi_root_checkpoint), "--data", str(full), "--out", str(out)]) == 0
        report = json.loads((out / "report.json").read_text())
        expected = load_evaluation_data(load_checkpoint(multi_root_checkpoint), [full], "test").data
        assert report["split_mode"] == "speaker-hash" and report["clips"] == len(expected)
        assert len(report["accuracy_ci95"]) == 2 and "95% CI" in capsys.readouterr().out

    def test_contradicting_split_mode_is_refused(self, multi_root_checkpoint, two_roots, tmp_path, capsys) -> None:
        _, full = two_roots
        argv = ["evaluate", str(multi_root_checkpoint), "--data", str(full), "--split-mode", "official"]
        err = _one_line_error(capsys, [*argv, "--out", str(tmp_path / "e")], "evaluate")
        assert "contradicts" in err and "speaker-hash" in err and "--split all" in err
        assert main([*argv, "--split", "all", "--out", str(tmp_path / "all")]) == 0  # no split rule applies
        assert main([*argv[:-2], "--split-mode", "speaker-hash", "--out", str(tmp_path / "same")]) == 0

    def test_export_reads_its_clips_with_the_same_rule(self, multi_root_checkpoint, two_roots, tmp_path) -> None:
        from kws.export.pipeline import ExportOptions, export_checkpoint, load_clips

        _, full = two_roots
        payload = load_checkpoint(multi_root_checkpoint)
        ev = load_evaluation_data(payload, [full], "test")
        clips = load_clips(payload, [full], "test", 0, run_config(payload).train.seed)
        np.testing.assert_array_equal(clips.audio, int16_to_float(ev.data.audio))
        np.testing.assert_array_equal(clips.labels, ev.data.labels)
        assert "speaker-hash" in clips.source
        with pytest.raises(EvaluationError, match="contradicts"):
            export_checkpoint(multi_root_checkpoint, tmp_path / "m", ExportOptions(data=full, split_mode="official"))
        assert not (tmp_path / "m").exists(), "refused before anything is written"

    def test_bench_refuses_a_contradicting_split_mode_first(self, multi_root_checkpoint, two_roots, tmp_path,
                                                            capsys) -> None:  # fmt: skip
        _, full = two_roots
        argv = ["bench", "--checkpoint", str(multi_root_checkpoint), "--data", str(full), "--split-mode", "official"]
        assert "contradicts" in _one_line_error(capsys, [*argv, "--out", str(tmp_path / "b")], "bench")

    def test_training_only_folders_are_not_evaluation_data(self, multi_root_checkpoint, two_roots, tmp_path) -> None:
        """The checkpoint's --negatives and --extra-train folders (here: not on this machine) are not read."""
        _, full = two_roots
        payload = load_checkpoint(multi_root_checkpoint)
        config = run_config(payload)
        data = dataclasses.replace(config.data, negatives=(str(tmp_path / "gone"),), extra_train=(str(full),))
        payload["config"] = to_dict(dataclasses.replace(config, data=data))
        moved = tmp_path / "moved.pt"
        save_checkpoint(moved, payload)
        ev = load_evaluation_data(load_checkpoint(moved), [full], "train")
        expected = load_evaluation_data(load_checkpoint(multi_root_checkpoint), [full], "train")
        assert ev.data.paths == expected.data.paths
        assert not ev.prepared.corpus.negatives

    def test_checkpoint_without_a_record_falls_back_to_its_folders_then_the_auto_rule(
        self, multi_root_checkpoint, two_roots, tmp_path
    ) -> None:
        payload = load_checkpoint(multi_root_checkpoint)
        payload.pop("data_summary")
        assert resolve_split_mode(payload)[0] == "speaker-hash"  # its training folders are here
        config = run_config(payload)
        payload["config"] = to_dict(
            dataclasses.replace(config, data=dataclasses.replace(config.data, roots=(str(tmp_path / "elsewhere"),)))
        )
        mode, how = resolve_split_mode(payload)
        assert mode == "auto" and "does not record" in how
        source = evaluation_corpus(payload, two_roots, "test")  # the auto rule resolved on the given folders
        assert source.split_mode == "speaker-hash" and "does not record" in source.split_mode_how
        assert evaluation_corpus(payload, [two_roots[1]], "test").split_mode == "official"

    def test_corpus_without_audio_has_the_loaders_rule(self, multi_root_checkpoint, two_roots) -> None:
        _, full = two_roots
        payload = load_checkpoint(multi_root_checkpoint)
        source = evaluation_corpus(payload, [full], "test")
        ev = load_evaluation_data(payload, [full], "test")
        assert source.split_mode == ev.split_mode == "speaker-hash" and source.split_mode_how == ev.split_mode_how
        assert source.corpus == ev.prepared.corpus and not source.config.extra_train


# --------------------------------------------------------------------------------------- nothing is lost


@pytest.fixture
def data_never_loaded(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the data was loaded before the output folder was checked")

    monkeypatch.setattr(evaluation_data, "prepare", fail)


class TestOutput:
    def test_unwritable_output_is_refused_before_loading_data(self, multi_root_checkpoint, two_roots, tmp_path,
                                                              capsys, data_never_loaded) -> None:  # fmt: skip
        blocker = tmp_path / "a-file"
        blocker.write_text("not a folder")
        for out in (blocker / "eval", blocker):
            argv = ["evaluate", str(multi_root_checkpoint), "--data", str(two_roots[1]), "--out", str(out)]
            err = _one_line_error(capsys, argv, "evaluate")
            assert str(blocker) in err

    def test_figures_are_printed_when_the_report_cannot_be_written(self, multi_root_checkpoint, two_roots,
                                                                   tmp_path, capsys, monkeypatch) -> None:  # fmt: skip
        def disk_full(path, write):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(evaluate, "atomic_write", disk_full)
        argv = ["evaluate", str(multi_root_checkpoint), "--data", str(two_roots[1]), "--out", str(tmp_path / "e")]
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert "accuracy" in captured.out and "95% CI" in captured.out, "the figures are shown"
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and "No space left on device" in err and "not saved" in err, err


def test_temporaries_of_a_killed_run_are_removed(multi_root_checkpoint, two_roots, tmp_path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    old, fresh = out / ".report.json.x1y2z3w4.tmp", out / ".report_confusion.png.a1b2c3d4.tmp"
    for path in (old, fresh):
        path.write_text("partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))  # fresh: perhaps another run's write in progress
    assert main(["evaluate", str(multi_root_checkpoint), "--data", str(two_roots[1]), "--out", str(out)]) == 0
    assert not old.exists() and fresh.exists() and (out / "report.json").is_file()


def test_an_empty_split_is_an_error_not_another_split(multi_root_checkpoint, tmp_path) -> None:
    """A folder whose speakers all fall into training has no test clips: say so (and how to score it)."""
    from kws.data.layout import DataError
    from kws.export.pipeline import load_clips

    speaker = next(
        s for s in (_speaker(1000 + i) for i in range(200)) if which_set(f"{s}_nohash_0", 15, 15, SPLIT_SALT) == "train"
    )
    rng = np.random.default_rng(0)
    for word in KEYWORDS:
        (tmp_path / "one" / word).mkdir(parents=True)
        sf.write(tmp_path / "one" / word / f"{speaker}_nohash_0.wav", synth_clip(word, rng), SAMPLE_RATE)
    payload = load_checkpoint(multi_root_checkpoint)
    with pytest.raises(DataError, match="no clips in the test split"):
        load_evaluation_data(payload, [tmp_path / "one"], "test")
    with pytest.raises(DataError, match="--split all"):
        load_clips(payload, [tmp_path / "one"], "test", 0, 0)
    assert len(load_clips(payload, [tmp_path / "one"], "test", 0, 0, fallback=True).audio) == len(KEYWORDS)
