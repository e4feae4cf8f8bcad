"""Run settings from the model (kws.runtime.config.spotter_config): a model's kws.thresholds, kws.reset_period_ms and
kws.patience are the defaults, explicit settings and `kws listen` options override them, a model without them runs
exactly as before; patience (N consecutive frames over threshold) in the Decider.

The models are the tiny export with metadata entries added (``support.exports.derive_model``); posteriors are the
level posteriors of ``support.level`` where detections are checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kws import format as F
from kws.cli import main as cli_main
from kws.runtime import KeywordSpotter, SpotterConfig, StreamingModel, detect_audio, detections_from_scores
from kws.runtime import config as runtime_config
from kws.runtime.config import DEFAULT_RESET_PERIOD_MS, spotter_config
from kws.runtime.detect import Decider
from support.exports import derive_model
from support.level import STANDARD_EVENTS, assert_matches, level_for, plant

CALIBRATED = {F.META_THRESHOLDS: json.dumps({"yes": 0.55, "no": 0.65}), F.META_RESET_PERIOD_MS: "0",
              F.META_PATIENCE: "2"}  # fmt: skip


@pytest.fixture(scope="module")
def old_model(tiny_exports) -> Path:
    return tiny_exports.stream


@pytest.fixture(scope="module")
def calibrated(tiny_exports, tmp_path_factory) -> Path:
    return derive_model(tiny_exports.stream, tmp_path_factory.mktemp("calibrated") / "m.onnx", CALIBRATED)


class TestSettingsFromTheModel:
    def test_an_old_model_runs_with_the_built_in_defaults(self, old_model):
        info = StreamingModel(old_model).info
        assert (info.thresholds, info.reset_period_ms, info.patience) == ((), None, None)
        assert spotter_config(info) == SpotterConfig() == KeywordSpotter(old_model).config
        assert spotter_config(info, threshold=0.8, lanes=3) == SpotterConfig(threshold=0.8, lanes=3)

    def test_the_model_settings_are_the_defaults(self, calibrated):
        spotter = KeywordSpotter(calibrated)
        config = spotter.config
        assert dict(config.thresholds) == {"yes": 0.55, "no": 0.65} and config.threshold_for("up") == 0.7
        assert (config.lanes, config.reset_period_ms, config.patience) == (1, 0, 2)
        assert spotter.engine.period_frames == 0  # one lane, state carried forever

    def test_explicit_settings_override(self, calibrated):
        info = StreamingModel(calibrated).info
        default = spotter_config(info, threshold=0.8)  # a default replaces all the model's thresholds
        assert (default.thresholds, default.threshold) == ((), 0.8)
        merged = spotter_config(info, thresholds={"yes": 0.9})  # one keyword's replaces that one only
        assert dict(merged.thresholds) == {"yes": 0.9, "no": 0.65}
        two_lanes = spotter_config(info, lanes=2)  # a one-lane model asked for lanes: the default period
        assert (two_lanes.lanes, two_lanes.reset_period_ms) == (2, DEFAULT_RESET_PERIOD_MS)
        assert spotter_config(info, reset_period_ms=500).lanes == 1
        assert spotter_config(info, patience=1).patience == 1
        given = SpotterConfig(threshold=0.6)
        assert KeywordSpotter(calibrated, given).config == given  # a whole config is used as it is

    def test_offline_api_takes_the_model_settings(self, calibrated):
        from kws.runtime import stream_scores

        config = stream_scores(calibrated, plant(1.0, []), thresholds={"no": 0.9}).config
        assert dict(config.thresholds) == {"yes": 0.55, "no": 0.9} and (config.lanes, config.patience) == (1, 2)
        assert stream_scores(calibrated, plant(1.0, []), config=SpotterConfig()).config == SpotterConfig()


@pytest.mark.usefixtures("level_engine")
class TestListen:
    def _announce(self, capsys, model: Path, wav: Path, *args: str) -> str:
        assert cli_main(["listen", "--model", str(model), "--input", str(wav), *args]) == 0
        return capsys.readouterr().err.strip().splitlines()[0]

    def test_old_model_announce_is_unchanged(self, old_model, planted_wav, capsys):
        line = self._announce(capsys, old_model, planted_wav)
        assert line.endswith("; 200 ms per call, 2 lane(s) reset every 2000 ms; thresholds yes=0.7, no=0.7, up=0.7, "
                             "down=0.7")  # fmt: skip

    def test_announce_says_thresholds_come_from_the_model(self, calibrated, planted_wav, capsys):
        line = self._announce(capsys, calibrated, planted_wav)
        assert line.endswith("1 lane, never reset; thresholds yes=0.55, no=0.65, up=0.7, down=0.7 (from the model "
                             "but up, down: options or default); patience 2 frames")  # fmt: skip

    def test_options_override_the_model(self, calibrated, planted_wav, capsys):
        line = self._announce(capsys, calibrated, planted_wav, "-t", "0.8", "--patience", "1", "--lanes", "2")
        assert line.endswith("2 lane(s) reset every 2000 ms; thresholds yes=0.8, no=0.8, up=0.8, down=0.8")
        line = self._announce(capsys, calibrated, planted_wav, "--reset-period-ms", "0")  # the model's one lane
        assert "1 lane, never reset" in line
        line = self._announce(capsys, calibrated, planted_wav, "-t", "yes=0.9", "--reset-period-ms", "1000")
        assert "1 lane(s) reset every 1000 ms; thresholds yes=0.9, no=0.65, up=0.7, down=0.7 (from the model" in line

    def test_bad_model_settings_are_one_line(self, old_model, planted_wav, tmp_path, capsys):
        bad = derive_model(old_model, tmp_path / "bad.onnx", {F.META_THRESHOLDS: '{"yes": 2}'})
        assert cli_main(["listen", "--model", str(bad), "--input", str(planted_wav)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "kws.thresholds" in lines[0] and "threshold of yes" in lines[0], lines

    def test_bad_patience_option_is_one_line(self, old_model, planted_wav, capsys):
        assert cli_main(["listen", "--model", str(old_model), "--input", str(planted_wav), "--patience", "0"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "--patience must be in [1, 1000]" in lines[0], lines


class TestPatience:
    def test_decider_needs_n_consecutive_frames_whatever_the_blocks(self):
        thresholds = np.array([np.inf, 0.5], np.float32)
        scores = np.zeros((12, 2), np.float32)
        scores[2:4, 1] = 0.9  # 2 frames over
        scores[6:9, 1] = 0.9  # 3 frames over: reported on the third
        for patience, want in ((1, [2, 6]), (3, [8]), (4, [])):
            whole = Decider(thresholds, refractory_frames=0, patience=patience).process(0, scores)
            assert [f for f, _, _ in whole] == want, patience
            split = Decider(thresholds, refractory_frames=0, patience=patience)
            hits = [h for i in range(12) for h in split.process(i, scores[i : i + 1])]
            assert hits == whole

    def test_patience_drops_short_peaks(self, old_model, monkeypatch):
        from support.level import use_level_engine

        use_level_engine(monkeypatch)
        labels = StreamingModel(old_model).info.labels
        audio = plant(4.0, [(0.5, 0.4, "yes"), (2.0, 0.3, level_for("no", 0.99, labels))])
        config = SpotterConfig(smoothing_ms=0)
        assert [d.keyword for d in detect_audio(old_model, audio, config=config)[0]] == ["yes", "no"]
        patient = SpotterConfig(smoothing_ms=0, patience=16)  # 0.32 s: longer than the "no" (0.3 s)
        assert [d.keyword for d in detect_audio(old_model, audio, config=patient)[0]] == ["yes"]

    def test_default_patience_changes_nothing_and_replay_follows_it(self, old_model, monkeypatch):
        from kws.runtime import stream_scores
        from support.level import use_level_engine

        use_level_engine(monkeypatch)
        assert runtime_config.DEFAULT_PATIENCE == SpotterConfig().patience == 1
        audio = plant(6.5, STANDARD_EVENTS)
        detections, _ = detect_audio(old_model, audio)
        assert_matches(detections, STANDARD_EVENTS, SpotterConfig())
        trace = stream_scores(old_model, audio)
        for patience in (1, 5, 30):
            config = SpotterConfig(patience=patience)
            assert detections_from_scores(trace, config) == detect_audio(old_model, audio, config=config)[0]
