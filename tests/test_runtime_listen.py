"""The `kws listen` command (kws.runtime.listen): output, summary, errors as one line, clean shutdown, and a
runtime that needs neither torch nor onnx.

In-process runs use level posteriors (``support.level``) and the fake sounddevice; the subprocess runs use
the tiny model's real streaming export on the synthetic words of the training fixture.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.cli import main as cli_main
from kws.runtime import detect_audio, detect_file
from kws.runtime import microphone as runtime_microphone
from kws.runtime import model as runtime_model
from support.level import STANDARD_EVENTS, expected_keywords
from support.synthetic import SAMPLE_RATE, plant_keywords
from support.tiny import TINY_THRESHOLD
from support.tools import REPO

FIXTURE_THRESHOLD = str(TINY_THRESHOLD)
LINE_TIMEOUT_S = 60


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


@pytest.mark.usefixtures("level_engine")
class TestListenCommand:
    @pytest.fixture
    def model(self, tiny_exports) -> Path:
        return tiny_exports.stream

    def test_one_line_per_detection_and_a_summary(self, model, planted_wav, capsys):
        assert cli_main(["listen", "--model", str(model), "--input", str(planted_wav)]) == 0
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert [line.split()[2] for line in lines] == expected_keywords(STANDARD_EVENTS)
        assert all(float(line.split()[0]) > 0 and 0 < float(line.split()[3]) <= 1 for line in lines)
        summary = err.strip().splitlines()[-1]
        for part in (
            "6.5 s of audio",
            "real-time factor",
            "ms CPU per audio second",
            "0 input overflows",
            "3 detections",
        ):
            assert part in summary

    def test_json_lines(self, model, planted_wav, capsys):
        args = [
            "listen",
            "-m",
            str(model),
            "-i",
            str(planted_wav),
            "--json",
            "-t",
            "0.6",
            "-t",
            "no=0.9",
        ]
        assert cli_main(args) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["keyword"] for r in records] == expected_keywords(STANDARD_EVENTS)
        assert {"time", "keyword", "confidence", "frame"} <= set(records[0])
        assert "wall_time" not in records[0]  # a file has no wall-clock time

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--model", "/nonexistent/m.onnx"], "does not exist"),
            (["--input", "/nonexistent/a.wav"], "does not exist"),
            (["--threshold", "maybe=0.5"], "not a keyword"),
            (["--threshold", "yes=high"], "KEYWORD=VALUE"),
            (["--lanes", "2", "--reset-period-ms", "0"], "reset period"),
            (["--threads", "0"], "threads"),
            (["--device", "USB"], "--device"),
            (["--raw-rate", "44100"], "--input -"),
        ],
    )
    def test_user_mistakes_are_one_line_errors(self, model, planted_wav, capsys, args, message):
        base = ["listen", "--model", str(model), "--input", str(planted_wav)]
        assert cli_main(base + args) == 2
        err = capsys.readouterr().err
        _no_traceback(err)
        assert message in err.strip().splitlines()[-1] and err.strip().splitlines()[-1].startswith("kws listen: error")

    def test_non_onnx_model_and_non_audio_input(self, planted_wav, model, tmp_path, capsys):
        (tmp_path / "m.onnx").write_bytes(os.urandom(256))
        (tmp_path / "a.wav").write_bytes(os.urandom(256))
        assert cli_main(["listen", "--model", str(tmp_path / "m.onnx"), "--input", str(planted_wav)]) == 2
        assert cli_main(["listen", "--model", str(model), "--input", str(tmp_path / "a.wav")]) == 2
        err = capsys.readouterr().err
        _no_traceback(err)
        assert "not a loadable ONNX model" in err and "cannot read audio file" in err

    def test_missing_shipped_model(self, planted_wav, tmp_path, monkeypatch, capsys):
        monkeypatch.setattr(runtime_model, "default_model_path", lambda: tmp_path / "kws.stream.int8.onnx")
        assert cli_main(["listen", "--input", str(planted_wav)]) == 2
        assert "--model" in capsys.readouterr().err

    def test_list_devices(self, fake_sd, capsys):
        assert cli_main(["listen", "--list-devices"]) == 0
        out = capsys.readouterr().out
        assert "USB PnP" in out and "* " in out and "HDMI" not in out

    def test_unknown_device_lists_the_available_ones(self, fake_sd, model, capsys):
        assert cli_main(["listen", "--model", str(model), "--device", "bluetooth"]) == 2
        err = capsys.readouterr().err
        _no_traceback(err)
        assert "bluetooth" in err and "USB PnP" in err

    def test_microphone_lost_mid_stream(self, fake_sd, model, monkeypatch, capsys):
        monkeypatch.setattr(runtime_microphone, "MIC_TIMEOUT_S", 0.3)
        monkeypatch.setattr(runtime_microphone, "MIC_START_TIMEOUT_S", 0.3)
        fake_sd.vanish_after = 30  # after 3 s: the first keyword was heard
        assert cli_main(["listen", "--model", str(model), "--device", "USB"]) == 2
        out, err = capsys.readouterr()
        _no_traceback(err)
        assert out.split()[3] == "yes"  # live lines start with the wall-clock time
        assert "s of audio" in err and "stopped delivering audio" in err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Synthetic words of the training fixture in a noisy stream: a 16-bit WAV and its int16 samples."""
    audio, _ = plant_keywords(["yes", "no", "up", "down", "no", "yes"], gap_seconds=1.0, lead_seconds=0.5)
    pcm = np.round(audio * 32767).astype(np.int16)
    path = tmp_path_factory.mktemp("spoken") / "spoken.wav"
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    return path, pcm


def _run_listen(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kws.cli", "listen", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        **kwargs,
    )


def _readline(proc: subprocess.Popen, timeout: float = LINE_TIMEOUT_S) -> str:
    """The next line of ``proc``'s stdout; fails the test (killing ``proc``) if none comes in time."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            proc.kill()
            pytest.fail(f"no output line within {timeout} s; stderr: {proc.communicate()[1].decode()[-2000:]}")
    return proc.stdout.readline().decode()


class TestListenProcess:
    def test_raw_pcm_on_stdin(self, tiny_exports, spoken):
        """Raw PCM on stdin gives the detections of the same samples through the API, with wall-clock times."""
        _, pcm = spoken
        model = tiny_exports.stream
        args = ["--model", str(model), "--input", "-", "--json", "-t", FIXTURE_THRESHOLD]
        proc = _run_listen(args, stdin=subprocess.PIPE)
        out, err = proc.communicate(pcm.astype("<i2").tobytes(), timeout=60)
        assert proc.returncode == 0, err.decode()
        records = [json.loads(line) for line in out.decode().splitlines()]
        api, _ = detect_audio(model, pcm, threshold=float(FIXTURE_THRESHOLD))
        assert api and [(r["keyword"], r["frame"]) for r in records] == [(d.keyword, d.frame) for d in api]
        assert "wall_time" in records[0]

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_signals_stop_cleanly_with_a_summary(self, tiny_exports, signum):
        """A live pipe that never ends: a detection, then SIGTERM/SIGINT -> summary, exit 0, no traceback."""
        audio, _ = plant_keywords(["yes"], gap_seconds=1.0, lead_seconds=0.5)  # 1.95 s
        args = ["--model", str(tiny_exports.stream), "--input", "-", "-t", FIXTURE_THRESHOLD]
        proc = _run_listen(args, stdin=subprocess.PIPE)
        proc.stdin.write(np.round(audio * 32767).astype("<i2").tobytes())
        proc.stdin.flush()
        line = _readline(proc)  # waits for the detection
        assert line.split()[3] == "yes"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
        _no_traceback(err.decode())
        summary = err.decode().strip().splitlines()[-1]
        audio_seconds = float(summary.split("kws listen: ")[1].split(" s of audio")[0])
        assert float(line.split()[1]) <= audio_seconds <= len(audio) / SAMPLE_RATE
        assert "1 detection (" in summary and summary.endswith("(interrupted)")
        proc.stdin.close()


TORCH_FREE_SCRIPT = """
import json, sys
blocked = []
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchaudio", "onnx", "onnxscript"):
            blocked.append(name)
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocker())
sys.modules["torch"] = None
from kws.cli import main
model, wav, threshold = sys.argv[1:4]
rc = main(["listen", "--model", model, "--input", wav, "--json", "--threshold", threshold])
from kws.runtime import detect_file
found, _ = detect_file(model, wav, threshold=float(threshold))
loaded = sorted(m for m in ("torch", "onnx", "sounddevice") if sys.modules.get(m))
check = {"blocked": blocked, "api": [d.keyword for d in found], "loaded": loaded}
print("CHECK", json.dumps(check), file=sys.stderr)
sys.exit(rc)
"""


class TestTorchFree:
    def test_runtime_imports_and_detects_without_torch(self, tiny_exports, spoken):
        """The CLI and the API without torch, torchaudio or onnx give the detections of a normal process."""
        model, (wav, _) = tiny_exports.stream, spoken
        proc = subprocess.run(
            [sys.executable, "-c", TORCH_FREE_SCRIPT, str(model), str(wav), FIXTURE_THRESHOLD],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        _no_traceback(proc.stderr)
        found, _ = detect_file(model, wav, threshold=float(FIXTURE_THRESHOLD))
        keywords = [d.keyword for d in found]
        assert keywords and [json.loads(line)["keyword"] for line in proc.stdout.splitlines()] == keywords
        check = json.loads(next(x for x in proc.stderr.splitlines() if x.startswith("CHECK"))[len("CHECK") :])
        assert check == {"blocked": [], "api": keywords, "loaded": []}

    def test_runtime_sources_import_only_device_runtime_packages(self):
        allowed = {"numpy", "onnxruntime", "soundfile", "soxr", "sounddevice", "kws", "__future__"}
        for path in sorted((REPO / "runtime").glob("*.py")):
            tree = __import__("ast").parse(path.read_text())
            for node in __import__("ast").walk(tree):
                names = (
                    [a.name for a in node.names]
                    if node.__class__.__name__ == "Import"
                    else [node.module]
                    if node.__class__.__name__ == "ImportFrom" and node.level == 0
                    else []
                )
                for name in names:
                    top = name.split(".")[0]
                    assert top in allowed or top in sys.stdlib_module_names, f"{path.name} imports {name}"
