"""Audio sources under bad input (issue 12: nothing silently wrong, nothing lost): stdin, paths, damaged files.

A closed, empty or failing stdin, a folder, a named pipe or a device for a file, and damaged audio (random
bytes, truncated, empty, an absurd rate, nan samples) each get the right one-line reason, with bounded reads
and nothing big allocated (runtime/files.py, runtime/sources.py, kws.runtime.config.regular_file).

The model is the shipped one (kws/pretrained/kws.stream.int8.onnx) and the audio the example recording.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.errors import KWSError
from kws.runtime import FileSource, SourceError, StdinSource
from kws.runtime import sources as runtime_sources
from support.listen import DEMO, MODEL, RATE, kws_listen, one_line_error, run_cli, run_process
from support.tools import REPO

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
