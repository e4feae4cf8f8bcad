"""Helpers shared by the system-level tests (virtual microphone, emulated Raspberry Pi).

These tests need system tools that a developer machine may lack. Locally a missing tool skips the test with
the tool's name; in CI (``CI=true``) it fails, because ``.ci/install-system.sh`` installs every one of them
and a silent skip there would hide a broken pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kws.export.pipeline import ExportPaths

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
INSTALL_HINT = "see .ci/install-system.sh"


def in_ci() -> bool:
    """True on a CI machine (the ``CI`` variable that CI services set)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_tools(purpose: str, *tools: str, packages: str) -> None:
    """Skip (locally) or fail (in CI) unless every command in ``tools`` is on PATH.

    Args:
        purpose: what needs them, for the message ("the virtual microphone").
        tools: command names.
        packages: the Debian packages that provide them, for the message.
    """
    require(purpose, [tool for tool in tools if shutil.which(tool) is None], packages)


def require(purpose: str, missing: list[str], packages: str) -> None:
    """Skip (locally) or fail (in CI) when anything is ``missing`` (names of tools or libraries)."""
    if not missing:
        return
    message = f"{purpose} needs {', '.join(missing)} (apt-get install {packages}; {INSTALL_HINT})"
    if in_ci():
        pytest.fail(f"{message}: CI installs them, so this is a broken CI setup", pytrace=False)
    pytest.skip(message)


def kws_command() -> list[str]:
    """The ``kws`` command of the interpreter running the tests (no PATH lookup needed)."""
    return [sys.executable, "-m", "kws.cli"]


def read_json_lines(text: str) -> list[dict]:
    """The JSON objects of ``kws listen --json`` output, one per non-empty line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_checked(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``command``; on a non-zero exit fail the test with its output (not just the exit code)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited with {result.returncode}\n"
            f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return result


_exports: dict[Path, ExportPaths] = {}


def tiny_export_files(checkpoint: Path, out_dir: Path) -> ExportPaths:
    """The four ONNX files of ``checkpoint`` (``kws.export.pipeline.export_files``: clip and streaming, fp32
    and dynamic int8, as ``ExportPaths``), written to ``out_dir`` the first time; later calls in the session
    return the same files (and ignore ``out_dir``)."""
    if checkpoint not in _exports:
        from kws.export.pipeline import export_files

        _exports[checkpoint] = export_files(checkpoint, out_dir)
    return _exports[checkpoint]


def export_stream_model(checkpoint: Path, out_dir: Path, int8: bool = False) -> Path:
    """The streaming ONNX model of ``checkpoint`` (fp32, or dynamic int8 with ``int8``) of
    :func:`tiny_export_files`."""
    paths = tiny_export_files(checkpoint, out_dir)
    return paths.stream_int8 if int8 else paths.stream
