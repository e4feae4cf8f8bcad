"""Helpers of the ``kws listen`` reliability tests: the shipped model, the example recording, and the checks
that a user error is exactly one line on stderr.

Used by ``test_listen_reliability.py`` (options, stdout, signals), ``test_sources_reliability.py`` (stdin,
paths, damaged audio) and ``test_listen_damaged_models.py``.
"""

from __future__ import annotations

import subprocess

import pytest

from kws.cli import main as cli_main
from support.tools import REPO, kws_command

MODEL = REPO / "kws" / "pretrained" / "kws.stream.int8.onnx"
DEMO = REPO / "examples" / "demo.wav"
RATE = 16_000
TIMEOUT = 120
"""Seconds a ``kws listen`` subprocess may take (the demo takes about one)."""


def kws_listen(*args: str) -> list[str]:
    """The ``kws listen`` command line of the interpreter running the tests."""
    return [*kws_command(), "listen", *args]


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
    """``kws listen ARGS`` in this process: (exit status, stdout, stderr)."""
    rc = cli_main(["listen", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def run_process(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    """``args`` in a subprocess from the repository root, stderr captured (stdout too unless given)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(args, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=TIMEOUT, **kwargs)
