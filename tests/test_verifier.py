"""The second-stage verifier at run time (kws.runtime.verifier), with a stand-in verifier ONNX made in the test
(``support.verifier_models``): the ring buffer stays bounded and reads back what was written, the wrapper
confirms or rejects each detection as the verifier says (and waits for a window that ends after it), ``kws
listen --verifier`` end to end on a short synthetic file, and a bad verifier file or option is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.format import ModelError
from kws.runtime.detect import Detection
from kws.runtime.verifier import AudioRing, VerifiedSpotter, Verifier
from support.level import LEVELS, STANDARD_EVENTS
from support.listen import one_line_error, run_cli
from support.verifier_models import make_stand_in_verifier, stand_in_probability

RATE = 16_000
LABELS = (SILENCE_LABEL, UNKNOWN_LABEL, "yes", "no")


class FakeSpotter:
    """The first stage's interface with detections planted at given times (s): each is reported by the first
    ``process`` call whose audio reaches it."""

    def __init__(self, times: list[float], keyword: str = "yes") -> None:
        self.sample_rate, self.keywords = RATE, ("yes", "no")
        self.engine = SimpleNamespace(chunk_frames=5, samples=0, model_calls=0, model_seconds=0.0)
        self.info = SimpleNamespace(hop_samples=320, window_samples=640)
        self.config = None
        self._planned = [Detection(t, keyword, 0.9, i) for i, t in enumerate(sorted(times))]
        self.detections = 0
        self.calls: list[int] = []

    def process(self, chunk: np.ndarray) -> list[Detection]:
        self.calls.append(len(chunk))
        self.engine.samples += len(chunk)
        now = self.engine.samples / RATE
        out = [d for d in self._planned if d.time <= now]
        self._planned = [d for d in self._planned if d.time > now]
        return out

    def flush(self) -> list[Detection]:
        out, self._planned = self._planned, []
        return out

    def reset(self) -> None:
        self.engine.samples = 0


@pytest.fixture(scope="module")
def verifier_file(tmp_path_factory) -> Path:
    return make_stand_in_verifier(tmp_path_factory.mktemp("verifier") / "v.onnx", LABELS)


def _signal(seconds: float, segments: list[tuple[float, float, float]]) -> np.ndarray:
    audio = np.zeros(round(seconds * RATE), np.float32)
    for start, length, level in segments:
        audio[round(start * RATE) : round((start + length) * RATE)] = level
    return audio


def _feed(spotter, audio: np.ndarray, block: int) -> list[Detection]:
    out = []
    for start in range(0, len(audio), block):
        out += spotter.process(audio[start : start + block])
    return out + spotter.flush()


class TestAudioRing:
    def test_reads_back_any_range_and_zeros_outside(self) -> None:
        rng = np.random.default_rng(0)
        stream = rng.standard_normal(5000).astype(np.float32)
        ring = AudioRing(700)
        pos = 0
        for size in rng.integers(1, 900, 40):
            ring.write(stream[pos : pos + size])
            pos = min(pos + size, len(stream))
            lo = int(rng.integers(-100, pos + 50))
            hi = lo + int(rng.integers(0, 800))
            want = np.zeros(hi - lo, np.float32)
            kept = range(max(lo, pos - 700, 0), min(hi, pos))
            want[kept.start - lo : kept.stop - lo] = stream[kept.start : kept.stop]
            np.testing.assert_array_equal(ring.read(lo, hi), want)
            assert ring.end == pos
            if pos == len(stream):
                break

    def test_the_buffer_never_grows(self, verifier_file) -> None:
        spotter = VerifiedSpotter(FakeSpotter([]), Verifier(verifier_file))
        capacity = spotter.ring.capacity
        buffer = spotter.ring._buffer
        for _ in range(300):  # 30 s in 100 ms chunks, then one 20 s block
            spotter.process(np.zeros(1600, np.int16))
        spotter.process(np.zeros(20 * RATE, np.float32))
        assert spotter.ring._buffer is buffer and len(buffer) == capacity
        assert capacity <= spotter.verifier.window_samples + 4 * spotter.piece + 640
        assert max(spotter.spotter.calls) <= spotter.piece, "a long block reaches the first stage in pieces"


class TestVerifiedSpotter:
    def test_confirms_and_rejects_as_the_verifier_says(self, verifier_file) -> None:
        # a positive segment before the detection at 1.0 s, a negative one before the one at 3.0 s
        audio = _signal(4.0, [(0.6, 0.4, 0.3), (2.6, 0.4, -0.3)])
        spotter = VerifiedSpotter(FakeSpotter([1.0, 3.0]), Verifier(verifier_file), record_checks=True)
        found = _feed(spotter, audio, 1600)
        assert [d.time for d in found] == [1.0]
        assert spotter.candidates == 2 and spotter.accepted == spotter.detections == 1
        for check in spotter.checks:
            end = round(check.detection.time * RATE)
            assert check.probability == pytest.approx(stand_in_probability(audio[end - 8000 : end]), abs=1e-5)
        assert [c.accepted for c in spotter.checks] == [True, False]
        assert spotter.check_ms >= 0 and "1 of 2 detection(s) confirmed" in spotter.summary()

    def test_threshold_decides(self, verifier_file) -> None:
        audio = _signal(4.0, [(0.6, 0.4, 0.01), (2.6, 0.4, -0.3)])  # the first: probability 0.69
        for threshold, kept in ((0.0, [1.0, 3.0]), (0.6, [1.0]), (0.7, [])):
            spotter = VerifiedSpotter(FakeSpotter([1.0, 3.0]), Verifier(verifier_file, threshold=threshold))
            assert [d.time for d in _feed(spotter, audio, 1600)] == kept

    def test_a_window_ending_after_the_detection_is_waited_for(self, tmp_path) -> None:
        # the positive segment comes 200-300 ms after the detection: only a window reaching past it sees it
        path = make_stand_in_verifier(tmp_path / "late.onnx", LABELS, window_ms=400, window_end_ms=300)
        audio = _signal(3.0, [(1.2, 0.1, 0.5)])
        spotter = VerifiedSpotter(FakeSpotter([1.0]), Verifier(path), record_checks=True)
        early = spotter.process(audio[: round(1.1 * RATE)])
        assert early == [] and spotter.candidates == 0, "held until its window is complete"
        later = spotter.process(audio[round(1.1 * RATE) :])
        assert [d.time for d in later] == [1.0]
        check = spotter.checks[0]
        assert check.verified_s >= 1.3 > check.found_s and check.added_latency_s > 0.19
        assert Verifier(path, window_end_ms=0).window_end_ms == 0  # the file's setting can be overridden

    def test_flush_checks_what_is_pending_and_reset_forgets(self, tmp_path) -> None:
        path = make_stand_in_verifier(tmp_path / "late.onnx", LABELS, window_end_ms=500)
        spotter = VerifiedSpotter(FakeSpotter([1.0]), Verifier(path, threshold=0.0))
        assert spotter.process(_signal(1.2, [])) == []
        assert [d.time for d in spotter.flush()] == [1.0]
        spotter.reset()
        assert spotter.candidates == spotter.accepted == 0 and spotter.ring.end == 0

    def test_verifier_must_know_the_keywords_and_the_rate(self, tmp_path) -> None:
        path = make_stand_in_verifier(tmp_path / "other.onnx", (SILENCE_LABEL, UNKNOWN_LABEL, "yes"))
        with pytest.raises(ModelError, match="no label 'no'"):
            VerifiedSpotter(FakeSpotter([]), Verifier(path))
        path = make_stand_in_verifier(tmp_path / "rate.onnx", LABELS, props={"kws.sample_rate": "8000"})
        with pytest.raises(ModelError, match="8000 Hz"):
            VerifiedSpotter(FakeSpotter([]), Verifier(path))


@pytest.mark.usefixtures("level_engine")
class TestListenWithVerifier:
    """``kws listen --verifier`` on the planted level signal (yes at +0.4, no at -0.4): the stand-in confirms
    the two positive "yes" and rejects the negative "no"."""

    def test_end_to_end(self, tiny_exports, planted_wav, tmp_path, capsys) -> None:
        labels = tiny_exports_labels(tiny_exports.stream)
        verifier = make_stand_in_verifier(tmp_path / "v.onnx", labels, window_ms=300)
        base = ["--model", str(tiny_exports.stream), "--input", str(planted_wav)]
        rc, out, err = run_cli(capsys, *base)
        assert rc == 0 and [x.split()[2] for x in out.splitlines()] == ["yes", "no", "yes"]
        rc, out, err = run_cli(capsys, *base, "--verifier", str(verifier))
        assert rc == 0, err
        assert [x.split()[2] for x in out.splitlines()] == ["yes", "yes"]
        assert "verifier v.onnx (threshold 0.5, 300 ms ending +0 ms" in err
        assert "verifier: 2 of 3 detection(s) confirmed" in err.strip().splitlines()[-1]
        rc, out, err = run_cli(capsys, *base, "--verifier", str(verifier), "--verify-threshold", "0")
        assert rc == 0 and len(out.splitlines()) == 3
        assert LEVELS["yes"] > 0 > LEVELS["no"] and len(STANDARD_EVENTS) == 4

    @pytest.mark.parametrize(
        ("make", "parts"),
        [
            (lambda p, m: p.write_bytes(b"not onnx"), ["is not a loadable ONNX model"]),
            (lambda p, m: p.write_bytes(m.read_bytes()), ["is a kws 'stream' model, not a verifier"]),
            (lambda p, m: make_stand_in_verifier(p, LABELS, props={"kws.verifier.threshold": None}),
             ["not a kws verifier", "kws.verifier.threshold missing"]),
            (lambda p, m: make_stand_in_verifier(p, LABELS, props={"kws.verifier.window_ms": "-5"}),
             ["kws.verifier.window_ms=-5 is out of range"]),
            (lambda p, m: None, ["does not exist"]),
        ],
    )  # fmt: skip
    def test_bad_verifier_file_is_one_line(self, tiny_exports, planted_wav, tmp_path, capsys, make, parts) -> None:
        path = tmp_path / "bad.onnx"
        make(path, tiny_exports.stream)
        rc, out, err = run_cli(capsys, "--model", str(tiny_exports.stream), "--input", str(planted_wav),
                               "--verifier", str(path))  # fmt: skip
        assert rc == 2 and out == ""
        one_line_error(err, *parts)

    def test_verify_threshold_needs_a_verifier_and_a_probability(self, tiny_exports, planted_wav, tmp_path,
                                                                 capsys) -> None:  # fmt: skip
        base = ["--model", str(tiny_exports.stream), "--input", str(planted_wav)]
        rc, _, err = run_cli(capsys, *base, "--verify-threshold", "0.5")
        assert rc == 2
        one_line_error(err, "--verify-threshold", "--verifier")
        verifier = make_stand_in_verifier(tmp_path / "v.onnx", tiny_exports_labels(tiny_exports.stream))
        rc, _, err = run_cli(capsys, *base, "--verifier", str(verifier), "--verify-threshold", "1.5")
        assert rc == 2
        one_line_error(err, "--verify-threshold must be in [0, 1]")


def tiny_exports_labels(model: Path) -> tuple[str, ...]:
    from kws.runtime import load_model

    return load_model(model).info.labels


def test_the_verifier_path_needs_only_the_base_install() -> None:
    """kws.runtime.verifier (and kws listen with it) imports neither torch nor onnx."""
    import subprocess
    import sys

    code = ("import sys, kws.runtime.verifier, kws.runtime.listen; "
            "bad = [m for m in ('torch', 'onnx', 'torchaudio') if m in sys.modules]; assert not bad, bad")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
