"""`kws calibrate` (kws.export.calibrate) and the three parts of the non-keyword speech files it and the bench use
(kws.data.layout.negative_split).

The calibration runs the tiny model's streaming export over a short stream of the synthetic dataset's validation
split and synthetic "negative" recordings.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws import format as F
from kws.cli import main as cli_main
from kws.constants import MAX_CLIPS_PER_SPEAKER_BITS
from kws.data import layout
from kws.data.layout import NEGATIVE_CALIBRATION, NEGATIVE_HELD_OUT, NEGATIVE_TRAIN, negative_split
from support.synthetic import OTHER_WORDS, SAMPLE_RATE, synth_clip

pytest.importorskip("onnx")

NAMES = [Path(f"{folder}/{folder}_{i}.wav") for folder in ("alexa", "snowboy") for i in range(12)]
TRAIN_NAMES = [
    "alexa/alexa_1.wav", "alexa/alexa_2.wav", "alexa/alexa_4.wav", "alexa/alexa_6.wav", "alexa/alexa_7.wav",
    "alexa/alexa_8.wav", "alexa/alexa_9.wav", "snowboy/snowboy_0.wav", "snowboy/snowboy_9.wav",
    "snowboy/snowboy_10.wav", "snowboy/snowboy_11.wav",
]  # fmt: skip
"""The training half of :data:`NAMES` before the held-out half was split (what `kws train --negatives` used)."""


def old_training_half(path: Path) -> bool:
    """The rule before the calibration part existed, written out: SHA-1 of the salted name (up to ``_nohash_``)."""
    name = re.sub(r"_nohash_.*$", "", path.name)
    digest = int(hashlib.sha1(("kws-negatives" + name).encode()).hexdigest(), 16)
    return (digest % (MAX_CLIPS_PER_SPEAKER_BITS + 1)) * (100.0 / MAX_CLIPS_PER_SPEAKER_BITS) >= 50.0


class TestNegativeSplit:
    def test_the_training_half_is_unchanged(self):
        assert [p.as_posix() for p in NAMES if negative_split(p) == NEGATIVE_TRAIN] == TRAIN_NAMES
        assert all((negative_split(p) == NEGATIVE_TRAIN) == old_training_half(p) for p in NAMES)
        many = [Path(f"speaker{i % 7}/{i}_nohash_{i % 3}.wav") for i in range(2000)]
        assert all((negative_split(p) == NEGATIVE_TRAIN) == old_training_half(p) for p in many)

    def test_three_disjoint_parts_of_the_expected_sizes(self):
        many = [Path(f"folder/utterance_{i}.wav") for i in range(6000)]
        parts = {p: negative_split(p) for p in many}
        assert set(parts.values()) == {NEGATIVE_TRAIN, NEGATIVE_CALIBRATION, NEGATIVE_HELD_OUT}
        share = {part: sum(v == part for v in parts.values()) / len(many) for part in set(parts.values())}
        assert share[NEGATIVE_TRAIN] == pytest.approx(0.5, abs=0.03)
        assert share[NEGATIVE_CALIBRATION] == pytest.approx(0.5 / 3, abs=0.03)
        assert share[NEGATIVE_HELD_OUT] == pytest.approx(0.5 * 2 / 3, abs=0.03)

    def test_training_bench_and_calibration_take_disjoint_parts(self, tmp_path, full_dataset):
        from kws.bench.utterances import negative_utterances
        from kws.config import DataConfig
        from kws.export.calibrate import calibration_negatives

        negatives = write_negatives(tmp_path / "negatives")
        files = layout.negative_files(negatives)
        config = DataConfig(roots=(str(full_dataset),), negatives=(str(negatives),))
        trained = set(layout.load_corpus(config).negatives)
        assert sorted(p.relative_to(negatives).as_posix() for p in trained) == sorted(TRAIN_NAMES)
        bench = {Path(u.source) for u in negative_utterances(negatives)}
        calibration = {Path(u.source) for u in calibration_negatives([negatives])}
        assert trained and bench and calibration
        assert not (trained & bench or trained & calibration or bench & calibration)
        assert trained | bench | calibration == set(files)


def write_negatives(folder: Path) -> Path:
    """:data:`NAMES` as 1.5 s recordings of the synthetic other words."""
    rng = np.random.default_rng(3)
    for i, name in enumerate(NAMES):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        audio = np.concatenate([synth_clip(OTHER_WORDS[i % 2], rng), synth_clip(None, rng)[: SAMPLE_RATE // 2]])
        sf.write(folder / name, audio, SAMPLE_RATE, subtype="PCM_16")
    return folder


@pytest.fixture(scope="module")
def negatives(tmp_path_factory) -> Path:
    return write_negatives(tmp_path_factory.mktemp("negatives") / "negatives")


class TestCalibrate:
    def test_lowest_within(self):
        from kws.export.calibrate import lowest_within

        assert lowest_within([5, 3, 0, 0], 0) == 2
        assert lowest_within([0, 1, 0, 0], 0) == 2  # from which on every higher one stays within
        assert lowest_within([4, 3, 2, 1], 0) == 3  # none within: the highest
        assert lowest_within([1, 1, 0], 1.5) == 0

    def test_writes_a_model_the_runtime_then_uses(self, tiny_exports, full_dataset, negatives, tmp_path, capsys,
                                                  planted_wav):  # fmt: skip
        from kws.runtime import KeywordSpotter, StreamingModel

        out = tmp_path / "calibrated.onnx"
        argv = ["calibrate", str(tiny_exports.stream), "--data", str(full_dataset), "--negatives", str(negatives),
                "--minutes", "1.5", "--reset-period-ms", "0", "--fa-per-hour", "0.5", "-o", str(out)]  # fmt: skip
        assert cli_main(argv) == 0, capsys.readouterr().err
        report = capsys.readouterr().out.splitlines()
        info = StreamingModel(out).info
        thresholds = dict(info.thresholds)
        assert set(thresholds) == {"yes", "no", "up", "down"} and all(0 < t <= 1 for t in thresholds.values())
        assert info.reset_period_ms == 0 and info.patience is None
        for keyword, threshold in thresholds.items():
            assert any(line.split()[2:5] == [keyword, "threshold", f"{threshold:g}"] for line in report), report
        assert any("1 lane, never reset" in line for line in report)
        assert any("NOT resolved" in line and "24.0 h needed" in line for line in report), report  # 0.125/h each
        assert report[-1].endswith(f"wrote {out} (kws.thresholds, kws.reset_period_ms in its metadata)")
        from kws.export.onnx_export import read_metadata

        written, source = read_metadata(out), read_metadata(tiny_exports.stream)
        assert {k: v for k, v in written.items() if k not in (F.META_THRESHOLDS, F.META_RESET_PERIOD_MS)} == source
        config = KeywordSpotter(out).config
        assert dict(config.thresholds) == thresholds and (config.lanes, config.reset_period_ms) == (1, 0)
        assert cli_main(["listen", "--model", str(out), "--input", str(planted_wav)]) == 0
        assert "(from the model)" in capsys.readouterr().err.splitlines()[0]

    def test_calibration_keeps_each_keyword_within_the_stream_budget(self, tiny_exports, full_dataset, negatives,
                                                                     tmp_path):  # fmt: skip
        from kws.export.calibrate import CalibrationOptions, calibrate

        options = CalibrationOptions(model=tiny_exports.stream, data=(str(full_dataset),), negatives=(str(negatives),),
                                     out=tmp_path / "unused.onnx", minutes=1.5, fa_per_hour=1e4)  # fmt: skip
        result = calibrate(options)
        hours = result.score.nonkeyword_hours
        assert result.stream.composition.negative_events > 0 and result.stream.composition.keyword_events > 0
        assert result.config.lanes == 2 and result.config.reset_period_ms == 2000
        assert result.resolved == (hours >= result.needed_hours)
        for k in result.keywords:
            assert k.within_budget == (k.false_accepts <= result.budget_per_keyword * hours)
            assert result.score.per_keyword.get(k.keyword, {}).get("false_accepts", 0) == k.false_accepts
        assert not (tmp_path / "unused.onnx").exists()  # calibrate() writes nothing

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"model": "/nonexistent/m.onnx"}, "does not exist"),
            ({"data": "/nonexistent/data"}, "does not exist"),
            ({"negatives": "EMPTY"}, "no readable calibration audio"),
            (("--fa-per-hour", "0"), "--fa-per-hour and --minutes must be > 0"),
            (("--reset-period-ms", "-5"), "reset_period_ms must be in"),
            (("--patience", "0"), "patience must be in"),
        ],
    )
    def test_bad_input_is_one_line(self, tiny_exports, full_dataset, negatives, tmp_path, capsys, change, message):
        only_trained = tmp_path / "only_trained"
        for name in TRAIN_NAMES:
            (only_trained / name).parent.mkdir(parents=True, exist_ok=True)
            (only_trained / name).write_bytes((negatives / name).read_bytes())
        model, data, negs = str(tiny_exports.stream), str(full_dataset), str(negatives)
        extra: list[str] = []
        if isinstance(change, dict):
            model, data = change.get("model", model), change.get("data", data)
            negs = str(only_trained) if change.get("negatives") == "EMPTY" else negs
        else:
            extra = list(change)
        argv = ["calibrate", model, "--data", data, "--negatives", negs, "--minutes", "0.5", "-o",
                str(tmp_path / "out.onnx"), *extra]  # fmt: skip
        assert cli_main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kws calibrate: error: ") and message in lines[0], lines
        assert not (tmp_path / "out.onnx").exists()
