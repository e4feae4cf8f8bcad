"""The microphone path end to end, through a virtual microphone (a PulseAudio null sink, see
scripts/virtual_mic.sh).

Audio is played into the sink with ``paplay`` and comes out of the default input device, the way a person
speaking into a microphone would reach ``kws listen``. Needs PulseAudio (``.ci/install-system.sh``): skipped
with the missing tool's name locally, a failure in CI.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from support.pulse import RECORD_RATE, LineCollector, VirtualMic, virtual_mic
from support.tools import export_stream_model, kws_command, read_json_lines, run_checked

TONE_HZ = 1000.0
TONE_SECONDS = 1.0
TONE_AMPLITUDE = 0.5
PLANTED_WORDS = ["yes", "no", "up", "down"]
LISTEN_START_TIMEOUT_S = 60  # loading onnxruntime and opening the device on a busy 2-core CI machine
STREAM_SETTLE_S = 1.0  # the announcement comes just before the input stream starts
TAIL_SECONDS = 1.5  # kept listening after the last word: the detector's smoothing and refractory delay
EXIT_TIMEOUT_S = 15
FIXTURE_THRESHOLD = "0.4"
"""The tiny fixture model, trained for seconds, ranks the planted words first but gives some of them ("no",
"down") posteriors of only about 0.5: the default threshold would miss them. These tests are about the audio
path, not the fixture's confidence (same choice as test_runtime's end-to-end test)."""


@pytest.fixture(scope="module")
def mic() -> Iterator[VirtualMic]:
    with virtual_mic() as running:
        yield running


def _tone_wav(path: Path) -> Path:
    t = np.arange(int(TONE_SECONDS * RECORD_RATE)) / RECORD_RATE
    sf.write(path, (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32), RECORD_RATE,
             subtype="PCM_16")  # fmt: skip
    return path


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


class TestVirtualMicrophone:
    """What is played into the sink reaches a PortAudio input stream on the default device, unchanged."""

    def test_played_tone_is_captured(self, mic: VirtualMic, tmp_path: Path) -> None:
        record_seconds = TONE_SECONDS + 2.0
        recorder = mic.record(record_seconds, tmp_path / "captured.npy")
        out = LineCollector(recorder.stdout)
        err = LineCollector(recorder.stderr)
        out.wait_for("recording", timeout=30)
        time.sleep(0.5)  # some silence before the tone
        mic.play(_tone_wav(tmp_path / "tone.wav"))
        assert recorder.wait(timeout=record_seconds + 30) == 0, err.text(timeout=5)
        audio = np.load(tmp_path / "captured.npy")

        assert len(audio) == int(record_seconds * RECORD_RATE)
        block = RECORD_RATE // 20  # 50 ms
        levels = np.array([_rms(audio[i : i + block]) for i in range(0, len(audio) - block + 1, block)])
        loud = np.flatnonzero(levels > TONE_AMPLITUDE / np.sqrt(2) / 2)
        # The microphone is quiet while nothing plays ...
        assert levels[0] < 1e-3, levels.round(4)
        # ... then the tone arrives whole, in one piece, at its level (a sine of amplitude A has RMS A/√2) ...
        assert len(loud) * block / RECORD_RATE == pytest.approx(TONE_SECONDS, abs=0.1), levels.round(3)
        assert loud[-1] - loud[0] + 1 == len(loud), levels.round(3)
        assert np.median(levels[loud]) == pytest.approx(TONE_AMPLITUDE / np.sqrt(2), rel=0.05)
        # ... and at its frequency.
        tone = audio[loud[0] * block : (loud[-1] + 1) * block]
        spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))
        assert np.argmax(spectrum) * RECORD_RATE / len(tone) == pytest.approx(TONE_HZ, abs=5)

    def test_listed_as_input_device(self, mic: VirtualMic) -> None:
        result = run_checked([*kws_command(), "listen", "--list-devices"], timeout=60, env=mic.env)
        default = [line for line in result.stdout.splitlines() if line.startswith("*")]
        assert len(default) == 1, result.stdout
        assert "pulse" in result.stdout.lower() or "default" in default[0].lower(), result.stdout


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, float]]]:
    """A WAV with :data:`PLANTED_WORDS` spoken in turn, and the (word, end time) of each."""
    from support.synthetic import SAMPLE_RATE, plant_keywords

    audio, truth = plant_keywords(PLANTED_WORDS, gap_seconds=1.0, lead_seconds=0.5)
    path = tmp_path_factory.mktemp("mic") / "planted.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    return path, truth


@pytest.fixture(scope="module")
def stream_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_stream_model(tiny_checkpoint, tmp_path_factory.mktemp("model"))


@pytest.mark.slow
class TestListenFromMicrophone:
    """``kws listen`` on the (virtual) microphone, the default one or one chosen by name, reports the words
    spoken into it, and stops cleanly with its summary on SIGINT (Ctrl-C) and SIGTERM."""

    @pytest.mark.parametrize(("device", "stop_signal"), [(None, signal.SIGINT), ("pulse", signal.SIGTERM)],
                             ids=["default-device-SIGINT", "pulse-device-SIGTERM"])  # fmt: skip
    def test_reports_planted_keywords(
        self, mic: VirtualMic, stream_model: Path, planted: tuple[Path, list[tuple[str, float]]],
        device: str | None, stop_signal: signal.Signals,
    ) -> None:  # fmt: skip
        wav, truth = planted
        words = [word for word, _ in truth]
        # The same audio as a file first: if the model misses the words there, the microphone is not to blame.
        command = [*kws_command(), "listen", "--model", str(stream_model), "--threshold", FIXTURE_THRESHOLD,
                   "--json"]  # fmt: skip
        from_file = run_checked([*command, "--input", str(wav)], timeout=120)
        assert [d["keyword"] for d in read_json_lines(from_file.stdout)] == words, (
            f"the fixture model does not find the planted words even in the file:\n{from_file.stdout}"
        )

        if device is not None:
            command += ["--device", device]
        pipe = subprocess.PIPE
        listen = subprocess.Popen(command, env=mic.env, text=True, stdout=pipe, stderr=pipe)
        out, err = LineCollector(listen.stdout), LineCollector(listen.stderr)
        try:
            err.wait_for("Ctrl-C to stop", timeout=LISTEN_START_TIMEOUT_S)
            time.sleep(STREAM_SETTLE_S)
            mic.play(wav)
            time.sleep(TAIL_SECONDS)
            assert listen.poll() is None, f"kws listen stopped early:\n{err.text()}"
            listen.send_signal(stop_signal)
            code = listen.wait(timeout=EXIT_TIMEOUT_S)
        finally:
            if listen.poll() is None:
                listen.kill()
                listen.wait()
        stdout, stderr = out.text(timeout=5), err.text(timeout=5)

        assert code == 0, stderr
        announced = next(line for line in stderr.splitlines() if "Ctrl-C to stop" in line)
        assert f"{device or 'default'} (device" in announced, announced
        detections = read_json_lines(stdout)
        assert [d["keyword"] for d in detections] == words, stdout + stderr
        assert all("wall_time" in d for d in detections), stdout  # live input: wall-clock times
        # Stream times follow the audio: consecutive words as far apart as they were planted (± 0.3 s).
        planted_gaps = np.diff([end for _, end in truth])
        heard_gaps = np.diff([d["time"] for d in detections])
        assert np.allclose(heard_gaps, planted_gaps, atol=0.3), (heard_gaps, planted_gaps)
        summary = stderr.strip().splitlines()[-1]
        assert summary.startswith("kws listen:") and f"{len(words)} detections" in summary, stderr
        assert "Traceback" not in stderr and "0 input overflows" in summary, stderr
