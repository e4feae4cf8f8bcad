"""kws export: checks on inputs it chose itself must not fail a good model, and must still fail a broken export;
staging folders left by a killed export are removed by the next one.

Without real clips the parity checks run on synthetic clips (kws.export.synthetic). They must be inputs a
keyword model meets: speech-like words over a recording noise floor, background noise, zero-padded short
recordings. Pure tones leave mel bands at the FFT's rounding residue, where two correct float32 front ends
disagree, and a trained model then "failed" the parity check by 1.5e-4 (1e-6 on real speech).
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from kws.export import checks, pipeline  # noqa: E402
from kws.export import synthetic as speech  # noqa: E402
from kws.export.clips import PARITY_CLIPS, synthetic_clips  # noqa: E402
from kws.export.measure import REFERENCE_CLIPS  # noqa: E402
from kws.export.pipeline import export_checkpoint  # noqa: E402
from support.export_models import export_model, make_model, write_checkpoint  # noqa: E402

TOL = checks.PARITY_TOLERANCE
SHARPNESS = 6.0
"""Factor on the LSTM and classifier weights of an untrained model: logits as large and as sensitive to the
features as a trained model's (an untrained model's outputs are too flat to show rounding problems)."""
SAMPLE_RATE, CLIP = 16000, 16000


def old_synthetic_clips(count: int, seed: int = 1234) -> np.ndarray:
    """The parity clips kws export used before: noise at several levels, tones, chirps, bursts, near-silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(CLIP) / SAMPLE_RATE
    clips = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            clip = rng.standard_normal(CLIP) * 10 ** rng.uniform(-3, -0.7)
        elif kind == 1:
            clip = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
        elif kind == 2:
            f0, f1 = rng.uniform(100, 1000), rng.uniform(1000, 6000)
            clip = 0.3 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / 2))
        elif kind == 3:
            clip = rng.standard_normal(CLIP) * 1e-4
            start = rng.integers(0, CLIP // 2)
            clip[start : start + CLIP // 4] += rng.standard_normal(CLIP // 4) * 0.3
        else:
            clip = rng.standard_normal(CLIP) * 1e-5
        clips.append(clip)
    return np.clip(np.stack(clips), -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def sharp(tmp_path_factory):
    """A model as sharp as a trained one, and its float ONNX files (``export_files``)."""
    model, config = make_model(hidden=64, sharpness=SHARPNESS)
    files = export_model(model, config, tmp_path_factory.mktemp("sharp"), evaluation=None, quantization="none")
    return model, config, files


@pytest.fixture(scope="module")
def parity_clips() -> np.ndarray:
    return synthetic_clips(CLIP, SAMPLE_RATE, PARITY_CLIPS)


# ----------------------------------------------------------------------------------------- the inputs


class TestSyntheticClips:
    def test_speech_like_at_recording_levels(self, parity_clips) -> None:
        clips = parity_clips
        assert clips.shape == (PARITY_CLIPS, CLIP) and clips.dtype == np.float32
        np.testing.assert_array_equal(clips * 32768, np.round(clips * 32768))  # 16-bit samples
        assert np.abs(clips).max() <= speech.PEAK
        frames = clips[:, : CLIP // 160 * 160].reshape(len(clips), -1, 160).astype(np.float64)
        level = 10 * np.log10(np.mean(frames**2, axis=2) + 1e-20)  # dBFS per 10 ms
        for i, clip_level in enumerate(level):
            kind = i % speech.KINDS
            sounding = clip_level[clip_level > -150]  # zero padding is digital silence, as in a padded file
            assert sounding.min() > speech.FLOOR_DBFS[0] - 6, "a noise floor under everything, never near-silence"
            if kind == speech.KINDS - 1:
                assert sounding.max() - sounding.min() < 15, "background noise only"
                continue
            assert sounding.max() > speech.WORD_DBFS[0] - 3 and sounding.max() < 0
            assert sounding.max() - np.percentile(sounding, 10) > 10, "a word over the floor: level modulated"
            if kind == 2:
                assert (clip_level[-5:] < -150).all(), "short recording, zero-padded"

    def test_float32_rounding_is_negligible_on_them(self, parity_clips) -> None:
        """The root cause: on these inputs the float32 front end is within 1e-4 of float64 (real speech:
        ~1e-5 typical, 1e-4 worst), so two correct float32 implementations agree; tones and chirps: ~5e-4."""
        model, _ = make_model(hidden=8)
        front32 = model.frontend
        front64 = copy.deepcopy(front32).double()

        def worst(clips: np.ndarray) -> float:
            with torch.no_grad():
                a = front32(torch.from_numpy(clips)).numpy()
                b = front64(torch.from_numpy(clips).double()).numpy()
            return float(np.abs(a - b).max())

        assert worst(parity_clips) <= TOL
        assert worst(old_synthetic_clips(10)) > TOL, "the old inputs measured rounding, not the export"

    def test_seeded(self) -> None:
        np.testing.assert_array_equal(synthetic_clips(CLIP, SAMPLE_RATE, 5), synthetic_clips(CLIP, SAMPLE_RATE, 5))
        assert not np.array_equal(synthetic_clips(CLIP, SAMPLE_RATE, 5, seed=1), synthetic_clips(CLIP, SAMPLE_RATE, 5))


# ------------------------------------------------------------------------------------ a good model passes


class TestGoodModelPasses:
    def test_fp32_parity(self, sharp, parity_clips) -> None:
        model, _, files = sharp
        onnx_scores = checks.onnx_clip_scores(checks.session(files["clip"]), parity_clips)
        found = checks.compare_scores("fp32 parity", "x", onnx_scores, checks.torch_clip_scores(model, parity_clips))
        assert all(c.passed for c in found), found
        assert len(set(onnx_scores.argmax(1))) > 1, "the clips are not all one class to the model"

    def test_streaming_and_reference_evaluator(self, sharp, parity_clips) -> None:
        _, config, files = sharp
        f = config.features
        whole = checks.onnx_clip_scores(checks.session(files["clip"]), parity_clips[:4])
        found = checks.check_streaming(checks.session(files["stream"]), whole, parity_clips[:4], "s")
        found.append(checks.check_reference(files["clip"], {"audio": parity_clips[:REFERENCE_CLIPS]}))
        feeds = checks.stream_feeds(files["stream"], parity_clips[0], f.context_samples, f.hop_samples)
        found.append(checks.check_reference(files["stream"], feeds))
        assert all(c.passed for c in found), found

    def test_the_old_inputs_failed_it(self, sharp) -> None:
        """The same model on the old tones and chirps: the check failed a model that is exported correctly."""
        model, _, files = sharp
        clips = old_synthetic_clips(24)
        onnx_scores = checks.onnx_clip_scores(checks.session(files["clip"]), clips)
        assert np.abs(onnx_scores - checks.torch_clip_scores(model, clips)).max() > TOL


# -------------------------------------------------------------------------------- broken exports still fail


def _mutated(path: Path, out: Path, pick, change) -> Path:
    """A copy of the ONNX file with one initializer changed (the first for which ``pick(initializer)``)."""
    proto = onnx.load(str(path))
    init = next(i for i in proto.graph.initializer if pick(i))
    value = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(change(value.copy()).astype(value.dtype), init.name))
    onnx.save(proto, str(out))
    return out


def _add_at(index, delta: float):
    def change(v: np.ndarray) -> np.ndarray:
        v[index] += delta
        return v

    return change


def _scale_at(index, factor: float):
    def change(v: np.ndarray) -> np.ndarray:
        v[index] *= factor
        return v

    return change


def _recurrent_weight(hidden: int):
    return lambda i: list(i.dims) == [1, 4 * hidden, hidden]


BROKEN = {
    "classifier bias +0.01": (lambda i: i.name.endswith("head.bias"), _add_at(1, 0.01)),
    "normalisation mean +0.01": (lambda i: i.name.endswith("frontend.mean"), _add_at(3, 0.01)),
    "window one sample late": (lambda i: list(i.dims) == [512], lambda v: np.roll(v, 1)),
    "one DCT row 1% off": (lambda i: i.name.endswith("dct_mat"), _scale_at(5, 1.01)),
    "one mel filter 1% off": (lambda i: i.name.endswith("mel_scale.fb"), _scale_at((slice(None), 20), 1.01)),
}


class TestBrokenExportsFail:
    @pytest.mark.parametrize("mutation", list(BROKEN))
    def test_fp32_parity_catches_it(self, sharp, parity_clips, tmp_path, mutation) -> None:
        model, _, files = sharp
        pick, change = BROKEN[mutation]
        broken = _mutated(files["clip"], tmp_path / "broken.onnx", pick, change)
        scores = checks.onnx_clip_scores(checks.session(broken), parity_clips)
        diff_check, _ = checks.compare_scores("p", "x", scores, checks.torch_clip_scores(model, parity_clips))
        assert diff_check.passed is False, diff_check

    def test_lstm_weights_one_percent_off_fail_the_streaming_check(self, sharp, parity_clips, tmp_path) -> None:
        _, config, files = sharp
        broken = _mutated(
            files["stream"], tmp_path / "s.onnx", _recurrent_weight(config.model.hidden_size), lambda v: v * 1.01
        )
        whole = checks.onnx_clip_scores(checks.session(files["clip"]), parity_clips[:4])
        found = checks.check_streaming(checks.session(broken), whole, parity_clips[:4], "s")
        assert not any(c.passed for c in found), found


# ------------------------------------------------------------------------------------- meaningful scales


class TestScales:
    def test_a_tie_within_the_tolerance_is_not_a_top1_disagreement(self) -> None:
        reference = np.array([[0.50002, 0.49998], [0.9, 0.1]], np.float32)
        scores = np.array([[0.49999, 0.50001], [0.9, 0.1]], np.float32)
        diff, top1 = checks.compare_scores("p", "x", scores, reference)
        assert diff.passed and top1.passed, (diff, top1)
        assert "a tie" in top1.value

    def test_a_real_disagreement_still_fails(self) -> None:
        reference = np.array([[0.6, 0.4]], np.float32)
        assert [c.passed for c in checks.compare_scores("p", "x", reference[:, ::-1], reference)] == [False, False]
        flipped = np.array([[0.4999, 0.5001]], np.float32)
        assert not checks.top1_agrees(flipped, np.array([[0.5003, 0.4997]], np.float32), TOL).all()

    def test_raw_outputs_are_compared_on_their_own_scale(self) -> None:
        states = np.array([0.5, -0.9], np.float32)
        assert checks.scaled_difference(states + 5e-5, states) == pytest.approx(5e-5, rel=1e-3)
        logits = np.array([40.0, -12.0], np.float32)
        assert checks.scaled_difference(logits + 2e-3, logits) == pytest.approx(5e-5, rel=1e-2)
        assert checks.scaled_difference(logits + 0.1, logits) > TOL


# --------------------------------------------------------------------------- staging folders of killed runs


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    model, config = make_model(hidden=8, layers=1)
    return write_checkpoint(tmp_path / "small.pt", model, config, evaluation=None)


KILLED = """
import os, signal, sys
from kws.export import pipeline

def killed(staging, *args, **kwargs):
    (staging / "kws.onnx").write_bytes(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)

pipeline._export_in = killed
pipeline.export_checkpoint(sys.argv[1], sys.argv[2])
"""


class Stop(Exception):
    pass


def test_staging_folders_of_killed_exports_are_removed_by_the_next(small_checkpoint, tmp_path, monkeypatch,
                                                                   caplog) -> None:  # fmt: skip
    out = tmp_path / "models"
    run = subprocess.run([sys.executable, "-c", KILLED, str(small_checkpoint), str(out)], capture_output=True)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    (left,) = [p for p in out.iterdir() if p.name.startswith(".kws.export-")]
    assert (left / "kws.onnx").is_file()

    legacy = out / ".other.export-q8x2ab_c"  # a name from before staging folders carried the process id
    legacy.mkdir()
    live = out / f".kws.export-{os.getpid()}-live"  # another export, still running
    live.mkdir()
    not_a_folder = out / ".kws.export-1-file"
    not_a_folder.write_text("")
    keep = out / ".cache"
    keep.mkdir()
    killed_report = out / ".kws.export.json.ab12cd34.tmp"  # a report write killed an hour ago
    killed_report.write_text("{")
    os.utime(killed_report, (time.time() - 3600, time.time() - 3600))
    seen = {}

    def stop(staging, *args, **kwargs):
        seen["staging"] = staging
        raise Stop

    monkeypatch.setattr(pipeline, "_export_in", stop)
    with caplog.at_level(logging.INFO, logger="kws.export.pipeline"), pytest.raises(Stop):
        export_checkpoint(small_checkpoint, out)
    assert not left.exists() and not legacy.exists() and not killed_report.exists()
    assert live.is_dir() and not_a_folder.is_file() and keep.is_dir()
    assert seen["staging"].name.startswith(f".kws.export-{os.getpid()}-") and not seen["staging"].exists()
    lines = [r.getMessage() for r in caplog.records if "staging folder" in r.getMessage()]
    assert len(lines) == 1 and left.name in lines[0] and legacy.name in lines[0] and live.name not in lines[0]
