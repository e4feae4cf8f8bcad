"""The torch-free runtime on a Raspberry Pi (aarch64), emulated: a Debian bookworm arm64 root with only
python3, the runtime's dependencies installed from their aarch64 wheels (no torch), run under qemu.

Proves that ``pip install kws`` resolves to wheels that exist for the Pi and that ``kws listen`` there gives
the same answers as on x86. Emulated timings mean nothing and are not checked. Needs qemu-user-static and
debootstrap (``.ci/install-system.sh``) and, for the first build only, the Debian mirror and PyPI; skipped
with the missing tool's name locally, a failure in CI. Builds the root once (~1 min) into
~/.cache/kws-pi-root.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from onnx import TensorProto, helper, numpy_helper

from support.pi import PiRoot, build_pi_root
from support.tools import export_stream_model, kws_command, read_json_lines, run_checked

pytestmark = pytest.mark.slow

PLANTED_WORDS = ["yes", "no", "up", "down"]
RUNTIME_MODULES = ("numpy", "onnxruntime", "soundfile", "soxr", "kws.cli", "kws.runtime",
                   "kws.runtime.listen")  # fmt: skip
SCORE_TOLERANCE = 1e-4  # fp32 posteriors, x86 vs aarch64 kernels
INT8_TOLERANCE = 0.05  # int8 vs fp32 posteriors (the tiny model: ~0.02 on a Cortex-A72)
INT8_ARGMAX_AGREEMENT = 0.95  # frames whose top class is the float model's
CONFIDENCE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def pi() -> PiRoot:
    return build_pi_root()


@pytest.fixture(scope="module")
def stream_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_stream_model(tiny_checkpoint, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def int8_stream_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_stream_model(tiny_checkpoint, tmp_path_factory.mktemp("model"), int8=True)


@pytest.fixture(scope="module")
def planted_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.synthetic import SAMPLE_RATE, plant_keywords

    audio, _ = plant_keywords(PLANTED_WORDS, gap_seconds=1.0, lead_seconds=0.5)
    path = tmp_path_factory.mktemp("pi") / "planted.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return path


class TestInstall:
    """The runtime's dependencies install from aarch64 wheels, and torch is nowhere."""

    def test_runtime_imports_on_aarch64_without_torch(self, pi: PiRoot) -> None:
        probe = textwrap.dedent(f"""
            import importlib, importlib.util, json, platform, sys
            modules = {RUNTIME_MODULES!r}
            versions = {{m: getattr(importlib.import_module(m), "__version__", "") for m in modules}}
            torch_loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchaudio"))
            print(json.dumps({{
                "machine": platform.machine(), "versions": versions, "torch_loaded": torch_loaded,
                "torch_installed": importlib.util.find_spec("torch") is not None,
                "files": {{m: sys.modules[m].__file__ for m in ("numpy", "onnxruntime", "kws")}},
            }}))
        """)
        report = json.loads(pi.run("python3", "-c", probe).stdout)
        assert report["machine"] == "aarch64"
        assert report["torch_installed"] is False
        assert report["torch_loaded"] == []
        # Imported from the root's installed packages, not from the checkout or the host's venv.
        assert report["files"]["numpy"].startswith("/opt/site/"), report["files"]
        assert report["files"]["onnxruntime"].startswith("/opt/site/"), report["files"]
        assert report["files"]["kws"].startswith("/opt/kws/"), report["files"]
        assert not any((pi.path / "opt" / "site").glob("torch*"))

    def test_onnxruntime_runs_a_graph(self, pi: PiRoot, tmp_path: Path) -> None:
        rng = np.random.default_rng(0)
        weights = rng.standard_normal((8, 5)).astype(np.float32)
        x = rng.standard_normal((3, 8)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["y"])],
            "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
            [numpy_helper.from_array(weights, "w")],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        (tmp_path / "probe.onnx").write_bytes(model.SerializeToString())
        np.save(tmp_path / "x.npy", x)
        run = textwrap.dedent("""
            import sys, numpy as np, onnxruntime as ort
            session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
            np.save(sys.argv[3], session.run(None, {"x": np.load(sys.argv[2])})[0])
        """)
        pi.run("python3", "-c", run, *(str(tmp_path / name) for name in ("probe.onnx", "x.npy", "y.npy")))
        logits = x @ weights
        expected = np.exp(logits - logits.max(1, keepdims=True))
        expected /= expected.sum(1, keepdims=True)
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-6)


class TestListen:
    """``kws listen`` on the emulated Pi gives the answers it gives on x86."""

    def test_posteriors_match_x86(self, pi: PiRoot, stream_model: Path, planted_wav: Path, tmp_path: Path):
        on_pi = _posteriors(stream_model, planted_wav, tmp_path / "pi.npz", pi)
        on_x86 = _posteriors(stream_model, planted_wav, tmp_path / "x86.npz")
        np.testing.assert_array_equal(on_pi["times"], on_x86["times"])
        assert on_x86["raw"].shape[0] > 100  # a few seconds of frames, not an empty trace
        np.testing.assert_allclose(on_pi["raw"], on_x86["raw"], atol=SCORE_TOLERANCE)

    def test_int8_posteriors_stay_close_to_float(
        self, pi: PiRoot, stream_model: Path, int8_stream_model: Path, planted_wav: Path, tmp_path: Path
    ) -> None:
        """The int8 model on the Pi's own int8 kernels: within quantisation error of the float model."""
        on_pi = _posteriors(int8_stream_model, planted_wav, tmp_path / "pi.npz", pi)["raw"]
        reference = _posteriors(stream_model, planted_wav, tmp_path / "x86.npz")["raw"]
        assert np.abs(on_pi - reference).max() <= INT8_TOLERANCE
        assert np.mean(on_pi.argmax(1) == reference.argmax(1)) >= INT8_ARGMAX_AGREEMENT

    def test_detections_match_x86(self, pi: PiRoot, stream_model: Path, planted_wav: Path) -> None:
        args = ["listen", "--model", str(stream_model), "--input", str(planted_wav), "--json"]
        on_x86 = run_checked([*kws_command(), *args], timeout=120)
        on_pi = pi.run("python3", "-m", "kws.cli", *args)
        expected, got = read_json_lines(on_x86.stdout), read_json_lines(on_pi.stdout)
        assert expected, f"the fixture model detects nothing on x86 either:\n{on_x86.stderr}"
        assert [(d["keyword"], d["frame"]) for d in got] == [(d["keyword"], d["frame"]) for d in expected]
        for a, b in zip(got, expected, strict=True):
            assert a["confidence"] == pytest.approx(b["confidence"], abs=CONFIDENCE_TOLERANCE)
        # The summary line is there too (same audio length, same detection count).
        assert on_pi.stderr.strip().splitlines()[-1].startswith("kws listen:"), on_pi.stderr
        assert f"{len(expected)} detections" in on_pi.stderr.strip().splitlines()[-1]


_DUMP_POSTERIORS = textwrap.dedent("""
    import sys, numpy as np
    from kws.runtime import stream_scores
    trace = stream_scores(sys.argv[1], sys.argv[2])
    np.savez(sys.argv[3], raw=trace.raw, times=trace.times)
""")


def _posteriors(model: Path, wav: Path, out: Path, pi: PiRoot | None = None) -> dict[str, np.ndarray]:
    """Per-frame posteriors of ``model`` over ``wav`` through the runtime (``stream_scores``), on the emulated
    Pi or (``pi=None``) natively: ``raw [frames, labels]`` and ``times [frames]``."""
    args = ["-c", _DUMP_POSTERIORS, str(model), str(wav), str(out)]
    if pi is None:
        run_checked([sys.executable, *args], timeout=120)
    else:
        pi.run("python3", *args)
    with np.load(out) as data:
        return dict(data)
