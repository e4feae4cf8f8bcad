"""The README's first set-up command: `make demo` runs the shipped model over the example recording."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_WAV = ROOT / "examples" / "demo.wav"
PLANTED = json.loads((ROOT / "examples" / "demo.json").read_text())["planted"]
PRETRAINED = ROOT / "kws" / "pretrained" / "kws.stream.int8.onnx"
WINDOW_SECONDS = 2.0  # a detection belongs to a planted word if it comes within this long after its start
MIN_KEYWORDS_FOUND = 3  # of the 6 planted keywords (the shipped model finds 5 of them)


def test_make_demo_runs_listen_on_the_example() -> None:
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and "kws listen --input examples/demo.wav" in recipe.group(1)


@pytest.mark.skipif(not PRETRAINED.exists(), reason="no shipped model in kws/pretrained/")
def test_demo_detects_the_planted_keywords_and_nothing_else() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kws.cli", "listen", "--input", str(DEMO_WAV), "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    detections = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert "s of audio" in proc.stderr, "the summary is printed at the end"
    found = set()
    for d in detections:
        owner = [p for p in PLANTED if p["start_s"] <= d["time"] <= p["start_s"] + WINDOW_SECONDS]
        assert owner, f"detection {d} is not near any planted word"
        assert owner[0]["keyword"], f"detection {d} on the non-keyword {owner[0]['word']!r}"
        if d["keyword"] == owner[0]["word"]:
            found.add(d["keyword"])
    assert len(found) >= MIN_KEYWORDS_FOUND, f"found only {sorted(found)}"
