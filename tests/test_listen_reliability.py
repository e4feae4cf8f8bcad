"""`kws listen` and the runtime under bad input (issue 12: nothing silently wrong, nothing lost).

Every mistake in what the user passes (options out of range, a folder or a named pipe for a file, a closed
stdin or stdout, a damaged model, damaged audio) is one line on stderr and exit status 2, never a traceback,
a hang or a huge allocation; Ctrl-C at any moment of start-up is a one-line "interrupted".

The model is the shipped one (kws/pretrained/kws.stream.int8.onnx) and the audio the example recording.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf

from kws.cli import main as cli_main
from kws.config import ConfigError
from kws.errors import KWSError
from kws.runtime import FileSource, KeywordSpotter, SourceError, SpotterConfig, StdinSource, StreamingModel
from kws.runtime import sources as runtime_sources

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "kws" / "pretrained" / "kws.stream.int8.onnx"
DEMO = REPO / "examples" / "demo.wav"
RATE = 16_000
TIMEOUT = 120


def kws_listen(*args: str) -> list[str]:
    return [sys.executable, "-m", "kws.cli", "listen", *args]


def one_line_error(err: str, *parts: str) -> str:
    """The single stderr line of a user error; it contains every one of ``parts``."""
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kws listen: error: "), err
    for part in parts:
        assert part in lines[0], err
    return lines[0]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli_main(["listen", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def run_process(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(args, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=TIMEOUT, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Options: ranges checked up front, named as on the command line


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--smoothing-ms", "1e12"], "--smoothing-ms"),  # was a 2 TiB allocation
        (["--smoothing-ms", "inf"], "--smoothing-ms"),  # was an OverflowError
        (["--smoothing-ms", "-1"], "--smoothing-ms"),
        (["--refractory-ms", "1e15"], "--refractory-ms"),
        (["--refractory-ms", "nan"], "--refractory-ms"),
        (["--chunk-ms", "0"], "--chunk-ms"),
        (["--chunk-ms", "1e9"], "--chunk-ms"),
        (["--chunk-ms", "inf"], "--chunk-ms"),
        (["--reset-period-ms", "1e12"], "--reset-period-ms"),
        (["--reset-period-ms", "-5"], "--reset-period-ms"),
        (["--lanes", "0"], "--lanes"),
        (["--lanes", "100000"], "--lanes"),
        (["--threshold", "0"], "--threshold"),
        (["--threshold", "1.5"], "--threshold"),
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "inf"], "--threshold"),
        (["--threshold", "yes=2"], "--threshold yes"),
        (["--threads", "0"], "--threads"),  # said the healthy model "is not a loadable ONNX model"
        (["--threads", "-1"], "--threads"),
        (["--threads", "100000"], "--threads"),  # hung creating threads
    ],
)
def test_out_of_range_options_are_one_line_errors(capsys, args, option):
    rc, _, err = run_cli(capsys, "--model", str(MODEL), "--input", str(DEMO), *args)
    assert rc == 2
    line = one_line_error(err, option, "must be in")
    assert "ONNX" not in line


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--raw-rate", "0"], "--raw-rate"),  # was silently the model rate
        (["--raw-rate", "-5"], "--raw-rate"),
        (["--raw-rate", "1"], "--raw-rate"),  # hung: 16000x upsampling
        (["--raw-rate", "7"], "--raw-rate"),
        (["--raw-rate", "100000000"], "--raw-rate"),
        (["--raw-channels", "0"], "--raw-channels"),
        (["--raw-channels", "100000"], "--raw-channels"),
    ],
)
def test_raw_pcm_options_out_of_range(capsys, args, option):
    rc, _, err = run_cli(capsys, "--model", str(MODEL), "--input", "-", *args)
    assert rc == 2
    one_line_error(err, option, "must be in")


def test_the_largest_accepted_values_run(capsys):
    rc, _, err = run_cli(
        capsys, "--model", str(MODEL), "--input", str(DEMO), "--smoothing-ms", "10000",
        "--refractory-ms", "3600000", "--chunk-ms", "2000", "--lanes", "16", "--reset-period-ms", "3600000",
        "--threshold", "1",
    )  # fmt: skip
    assert rc == 0, err
    assert "19.5 s of audio" in err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"smoothing_ms": 1e12},
        {"smoothing_ms": float("nan")},
        {"refractory_ms": float("inf")},
        {"chunk_ms": 1e9},
        {"reset_period_ms": 1e12},
        {"lanes": 1000},
        {"lanes": 2.5},
        {"threshold": float("nan")},
        {"thresholds": {"yes": float("inf")}},
        {"thresholds": {"yes": "high"}},
    ],
)
def test_library_settings_out_of_range_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        SpotterConfig(**kwargs)


@pytest.mark.parametrize("threads", [0, -3, 10**6, 2.0, True])
def test_library_threads_out_of_range_are_config_errors_not_model_errors(threads):
    with pytest.raises(ConfigError, match="threads"):
        KeywordSpotter(MODEL, threads=threads)


# ---------------------------------------------------------------------------------------------------------
# stdout: closed, read-only, full or a pipe whose reader went away


def test_closed_stdout_is_one_line_error():
    proc = run_process(kws_listen("--model", str(MODEL), "--input", str(DEMO)), stdout=None,
                       preexec_fn=lambda: os.close(1))  # fmt: skip
    assert proc.returncode == 2
    one_line_error(proc.stderr, "stdout is closed")


def test_closed_stdout_with_list_devices_is_one_line_error():
    proc = run_process(kws_listen("--list-devices"), stdout=None, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 2
    one_line_error(proc.stderr, "stdout is closed")


def test_read_only_stdout_is_one_line_error():
    with open(os.devnull, "rb") as read_only:
        proc = run_process(kws_listen("--model", str(MODEL), "--input", str(DEMO)), stdout=read_only)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "stdout", "reading only")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_stdout_ends_with_one_error_line():
    with open("/dev/full", "w") as full:
        proc = run_process(kws_listen("--model", str(MODEL), "--input", str(DEMO)), stdout=full)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "kws listen: error: cannot write to stdout: No space left on device"
    assert "s of audio" in lines[-2]  # the summary still says what was done


def test_a_reader_that_goes_away_stops_listening_quietly():
    """`kws listen ... | head -1`: the first write gets EPIPE; exit 0, the summary says why it stopped."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first detection
    try:
        proc = run_process(kws_listen("--model", str(MODEL), "--input", str(DEMO)), stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[-1].endswith("(stopped: the reader of stdout went away)"), proc.stderr


# ---------------------------------------------------------------------------------------------------------
# stdin and paths: the right reason


def test_closed_stdin_is_not_called_a_terminal():
    proc = run_process(kws_listen("--model", str(MODEL), "--input", "-"), preexec_fn=lambda: os.close(0))
    assert proc.returncode == 2
    line = one_line_error(proc.stderr, "stdin is closed")
    assert "terminal" not in line


def test_empty_stdin_is_an_error_not_a_silent_success():
    proc = run_process(kws_listen("--model", str(MODEL), "--input", "-"), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "kws listen: error: stdin ended before any audio arrived (was anything piped in?)"
    )


def test_an_unreadable_stdin_is_a_source_error():
    class Failing(io.RawIOBase):
        def read(self, n=-1):
            raise OSError(5, "Input/output error")

    with pytest.raises(SourceError, match="Input/output error"):
        list(StdinSource(RATE, RATE, stream=Failing()))


def test_raw_pcm_reads_are_bounded_whatever_the_format():
    asked = []

    class Recording(io.RawIOBase):
        def read(self, n=-1):
            asked.append(n)
            return b""

    with pytest.raises(SourceError):  # nothing arrives
        list(StdinSource(RATE, 384_000, channels=1024, chunk_seconds=2.0, stream=Recording()))
    assert asked and max(asked) <= 2 * runtime_sources.MAX_BLOCK_SAMPLES


@pytest.mark.parametrize("option", ["--input", "--model"])
def test_a_folder_is_called_a_folder(capsys, tmp_path, option):
    args = {"--input": str(DEMO), "--model": str(MODEL), option: str(tmp_path)}
    rc, _, err = run_cli(capsys, *(x for kv in args.items() for x in kv))
    assert rc == 2
    line = one_line_error(err, str(tmp_path), "is a folder")
    assert "does not exist" not in line


@pytest.mark.parametrize("option", ["--input", "--model"])
def test_a_named_pipe_is_refused_without_opening_it(tmp_path, option):
    """Opening a FIFO blocks until a writer comes: it is refused, with a hint for --input (use --input -)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = {"--input": str(DEMO), "--model": str(MODEL), option: str(fifo)}
    proc = run_process(kws_listen(*(x for kv in args.items() for x in kv)), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    line = one_line_error(proc.stderr, "is a named pipe")
    assert "does not exist" not in line
    if option == "--input":
        assert f"--input - < {fifo}" in line


def test_a_device_file_is_not_a_regular_file(capsys):
    rc, _, err = run_cli(capsys, "--model", str(MODEL), "--input", "/dev/zero")
    assert rc == 2
    one_line_error(err, "not a regular file")


# ---------------------------------------------------------------------------------------------------------
# Damaged models: random bytes, truncated copies, tampered metadata -> ModelError (one line from the CLI)


def _truncations(size: int) -> list[int]:
    return [0, 1, 2, 10, 100, 1000, 10_000, size // 3, size // 2, size - 5000, size - 500, size - 50, size - 1]


def _tampered(**changes: str | None) -> bytes:
    model = onnx.load(str(MODEL))
    meta = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        key = "kws." + key
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


LABELS = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
STATE = [{"input": "h_in", "output": "h_out", "shape": [2, "lanes", 192]},
         {"input": "c_in", "output": "c_out", "shape": [2, "lanes", 192]}]  # fmt: skip


def _state(**first: object) -> str:
    return json.dumps([{**STATE[0], **first}, STATE[1]])


TAMPERED = {
    "labels not JSON": {"labels": "[yes, no"},
    "labels an object": {"labels": '{"yes": 1}'},
    "labels a string": {"labels": '"abcdefghijkl"'},
    "labels numbers": {"labels": json.dumps(list(range(12)))},
    "labels too few for the output": {"labels": json.dumps(LABELS[:5])},
    "labels too many for the output": {"labels": json.dumps([*LABELS, "x", "y"])},
    "labels repeated": {"labels": json.dumps([*LABELS[:11], "yes"])},
    "labels with a newline": {"labels": json.dumps([*LABELS[:11], "go\nstop"])},
    "labels nested 100000 deep": {"labels": "[" * 100_000 + "]" * 100_000},
    "labels 200000 of them": {"labels": json.dumps([f"w{i}" for i in range(200_000)])},
    "labels missing": {"labels": None},
    "hop negative": {"hop_samples": "-320"},
    "hop zero": {"hop_samples": "0"},
    "hop not a whole number": {"hop_samples": "320.5"},
    "hop above the window": {"hop_samples": "100000"},
    "hop of another model": {"hop_samples": "160"},
    "window of 10^12 samples": {"window_samples": str(10**12)},
    "window of another model": {"window_samples": "400"},
    "sample rate zero": {"sample_rate": "0"},
    "sample rate 10^15": {"sample_rate": str(10**15)},
    "sample rate text": {"sample_rate": "sixteen k"},
    "sample rate contradicting the features": {"sample_rate": "8000"},
    "clip negative": {"clip_samples": "-1"},
    "clip of 10^12 samples": {"clip_samples": str(10**12)},
    "pool frames 10^9": {"pool_frames": str(10**9)},
    "pool frames zero": {"pool_frames": "0"},
    "pooling unknown": {"pooling": "median"},
    "pooling missing": {"pooling": None},
    "state not JSON": {"state": "nope"},
    "state an object": {"state": '{"a": 1}'},
    "state names only": {"state": '["h_in"]'},
    "state of 10^9 values per lane": {"state": _state(shape=[2, "lanes", 10**9])},
    "state of the wrong size": {"state": _state(shape=[2, "lanes", 100])},
    "state without a lanes axis": {"state": _state(shape=[2, 2, 192])},
    "state with a boolean size": {"state": _state(shape=[True, "lanes", 192])},
    "state name a number": {"state": _state(input=5)},
    "state one of two": {"state": json.dumps(STATE[:1])},
    "state empty": {"state": "[]"},
    "kind clip": {"kind": "clip"},
    "kind garbage": {"kind": "\x00\n"},
    "format 2": {"format": "2"},
    "format missing": {"format": None},
}


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return MODEL.read_bytes()


@pytest.mark.parametrize("size", [0, 1, 16, 1000, 100_000])
def test_random_bytes_are_a_model_error(tmp_path, size):
    path = tmp_path / "m.onnx"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    with pytest.raises(KWSError, match="not a loadable ONNX model"):
        StreamingModel(path)


def test_every_truncated_copy_is_a_model_error(tmp_path, model_bytes):
    for length in _truncations(len(model_bytes)):
        path = tmp_path / f"cut{length}.onnx"
        path.write_bytes(model_bytes[:length])
        with pytest.raises(KWSError) as caught:
            KeywordSpotter(path)
        assert "\n" not in str(caught.value), length


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_metadata_is_a_model_error(tmp_path, case):
    path = tmp_path / "m.onnx"
    path.write_bytes(_tampered(**TAMPERED[case]))
    with pytest.raises(KWSError) as caught:
        KeywordSpotter(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message


def test_metadata_shown_to_the_user_is_one_line(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_tampered(quantization="dyn\namic", version="0.1\r\n0"))
    info = StreamingModel(path).info
    assert info.quantization.isprintable() and info.version.isprintable()


def test_damaged_models_through_the_cli_are_one_line(capsys, tmp_path, model_bytes):
    damaged = {
        "random.onnx": np.random.default_rng(0).bytes(4096),
        "cut.onnx": model_bytes[: len(model_bytes) // 2],
        "labels.onnx": _tampered(labels="[[[[" * 50_000),
        "state.onnx": _tampered(state=_state(shape=[2, "lanes", 10**9])),
    }
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        rc, _, err = run_cli(capsys, "--model", str(tmp_path / name), "--input", str(DEMO))
        assert rc == 2, name
        one_line_error(err, name)


# ---------------------------------------------------------------------------------------------------------
# Damaged audio files: one line, exit 2, nothing big allocated


def _wav(path: Path, rate: int, channels: int, data: bytes, declared: int | None = None, bits: int = 16) -> Path:
    """A PCM WAV written by hand, so that its header can say anything."""
    align = max(channels, 1) * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * align) & 0xFFFFFFFF, align, bits)
    size = len(data) if declared is None else declared
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _pcm(seconds: float) -> bytes:
    return (np.random.default_rng(0).standard_normal(round(seconds * RATE)) * 3000).astype("<i2").tobytes()


AUDIO_CASES = {
    "random bytes": (lambda p: p.write_bytes(np.random.default_rng(1).bytes(5000)), "cannot read audio file"),
    "empty file": (lambda p: p.write_bytes(b""), "cannot read audio file"),
    "truncated WAV": (lambda p: _wav(p, RATE, 1, _pcm(0.3), declared=len(_pcm(2.0))), "is truncated"),
    "header only": (lambda p: _wav(p, RATE, 1, b"", declared=len(_pcm(2.0))), "is truncated"),
    "1 Hz": (lambda p: _wav(p, 1, 1, _pcm(2.0)), "sample rate of 1 Hz"),
    "1 MHz": (lambda p: _wav(p, 1_000_000, 1, _pcm(2.0)), "sample rate of 1000000 Hz"),
    "0 channels": (lambda p: _wav(p, RATE, 0, _pcm(2.0)), "cannot read audio file"),
    "empty WAV": (lambda p: _wav(p, RATE, 1, b""), "is empty"),
}


@pytest.mark.parametrize("case", list(AUDIO_CASES))
def test_damaged_audio_files_are_audio_errors(tmp_path, case):
    make, message = AUDIO_CASES[case]
    path = tmp_path / "a.wav"
    make(path)
    with pytest.raises(KWSError, match=message):
        FileSource(path, RATE, 0.1)


@pytest.mark.parametrize("case", list(AUDIO_CASES))
def test_damaged_audio_files_through_the_cli_are_one_line(capsys, tmp_path, case):
    make, message = AUDIO_CASES[case]
    path = tmp_path / "a.wav"
    make(path)
    rc, _, err = run_cli(capsys, "--model", str(MODEL), "--input", str(path))
    assert rc == 2
    one_line_error(err, message)


def test_random_bytes_print_nothing_but_the_error():
    """libsndfile's mp3 decoder prints its own warnings on some random data: they must not reach stderr."""
    path = REPO / ".pytest_cache" / "random.wav"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    try:
        proc = run_process(kws_listen("--model", str(MODEL), "--input", str(path)))
    finally:
        path.unlink()
    assert proc.returncode == 2
    one_line_error(proc.stderr, "not a recognised audio format")


def test_a_stream_wav_without_a_length_is_not_called_truncated(tmp_path):
    """`arecord > file.wav` leaves a placeholder data size: the file is read, not refused."""
    path = _wav(tmp_path / "a.wav", RATE, 1, _pcm(0.5), declared=0x7FFFFFFF)
    assert sum(len(c) for c in FileSource(path, RATE, 0.1)) == round(0.5 * RATE)


def test_nan_samples_are_replaced_by_silence_and_reported(tmp_path, caplog):
    audio, rate = sf.read(DEMO, dtype="float32")
    reference, _ = _detections(tmp_path / "clean.wav", audio, rate)
    damaged = audio.copy()
    damaged[800:2400] = np.nan  # 0.1 s of nan at the start: it would poison the LSTM state of both lanes
    damaged[3000] = np.inf
    found, warnings = _detections(tmp_path / "nan.wav", damaged, rate, caplog)
    assert [d.keyword for d in found] == [d.keyword for d in reference] and len(reference) >= 3
    assert any("nan/inf" in w for w in warnings)


def _detections(path: Path, audio: np.ndarray, rate: int, caplog=None):
    from kws.runtime import detect_file

    sf.write(path, audio, rate, subtype="FLOAT")
    found, _ = detect_file(MODEL, path)
    return found, [r.getMessage() for r in caplog.records] if caplog is not None else []


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C during start-up: "interrupted", never a traceback


INTERRUPT_DURING_IMPORT = """
import os, signal, sys

class SignalOnImport:  # sends the signal while onnxruntime (a C extension) is being imported
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1]:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        return None

sys.meta_path.insert(0, SignalOnImport())
from kws.cli import main
sys.exit(main(["listen", "--model", sys.argv[3], "--input", sys.argv[4]]))
"""


@pytest.mark.parametrize(
    ("module", "signame"), [("onnxruntime", "SIGINT"), ("numpy", "SIGINT"), ("onnxruntime", "SIGTERM")]
)
def test_a_signal_while_the_runtime_is_imported_is_one_line(module, signame):
    proc = run_process([sys.executable, "-c", INTERRUPT_DURING_IMPORT, module, signame, str(MODEL), str(DEMO)])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == ["kws listen: interrupted"]


READY_THEN_LISTEN = """
import sys
from kws.cli import main
print("READY", file=sys.stderr, flush=True)
sys.exit(main(["listen", "--model", sys.argv[1], "--input", "-"]))
"""


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.1, 0.2, 0.25, 0.3])
def test_ctrl_c_at_any_moment_of_start_up_never_prints_a_traceback(delay):
    """From the moment `kws.cli.main` runs (importing kws.cli itself is before any code of ours)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", READY_THEN_LISTEN, str(MODEL)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stderr.readline().strip() == "READY"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert "Traceback" not in err, err
    if proc.returncode == 130:  # before listening started ("kws:" while kws.cli itself parses the command)
        assert err.strip().splitlines() in (["kws listen: interrupted"], ["kws: interrupted"]), err
    else:  # while listening: the summary
        assert proc.returncode == 0, err
        assert err.strip().splitlines()[-1].endswith("(interrupted)"), err
