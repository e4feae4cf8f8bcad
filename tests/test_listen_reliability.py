"""`kws listen` under bad input (issue 12: nothing silently wrong, nothing lost): the command line.

Every mistake in the options (out of range, meant for another input) and every unusable stdout (closed, read-only,
full) is one line on stderr and exit status 2, never a traceback, a hang or a huge allocation; a reader of stdout
that goes away stops listening quietly; Ctrl-C at any moment of start-up is a one-line "interrupted". The
sources' share (stdin, paths, damaged audio) is in test_sources_reliability.py, damaged models in
test_listen_damaged_models.py.

The model is the shipped one (kws/pretrained/kws.stream.int8.onnx) and the audio the example recording.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kws.errors import ConfigError
from kws.runtime import KeywordSpotter, SpotterConfig
from support.listen import DEMO, MODEL, TIMEOUT, kws_listen, one_line_error, run_cli, run_process
from support.tools import REPO

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
