"""The virtual microphone of ``scripts/virtual_mic.sh`` for tests: a private PulseAudio server whose default
source is the monitor of a null sink, so audio played into the sink comes out of the default microphone.

Clients reach the server through ``PULSE_SERVER``; :attr:`VirtualMic.env` is the environment to give every
subprocess that records or plays (this process's own environment is left unchanged, so PortAudio in the test
process never sees a server that later goes away).
"""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from support.tools import SCRIPTS, require, require_tools

SCRIPT = SCRIPTS / "virtual_mic.sh"
START_TIMEOUT_S = 60
PULSE_PACKAGES = "pulseaudio pulseaudio-utils libasound2-plugins libportaudio2"


class VirtualMic:
    """A running virtual microphone: :attr:`env` for clients, :meth:`play` to speak into it."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.env = {**os.environ, "PULSE_SERVER": server}
        self.startup_seconds = 0.0

    def play(self, wav: Path, timeout: float = 60.0) -> None:
        """Play ``wav`` into the microphone; returns when it has been played."""
        subprocess.run(["paplay", str(wav)], env=self.env, check=True, timeout=timeout)

    def record(self, seconds: float, out: Path) -> subprocess.Popen:
        """Start recording ``seconds`` of the default microphone through PortAudio (sounddevice, as ``kws
        listen`` does) into ``out`` (.npy, float32 mono at :data:`RECORD_RATE`), in a subprocess. The
        process prints ``recording`` once audio flows; :func:`wait_for_line` waits for it."""
        return subprocess.Popen(
            [sys.executable, "-c", _RECORDER, str(seconds), str(out)], env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip


RECORD_RATE = 16_000
_RECORDER = f"""
import sys, threading, numpy as np, sounddevice as sd
seconds, out = float(sys.argv[1]), sys.argv[2]
blocks, first, done = [], threading.Event(), threading.Event()
def callback(indata, frames, time_info, status):
    if not first.is_set():
        first.set()
    blocks.append(indata[:, 0].copy())
    if sum(len(b) for b in blocks) >= seconds * {RECORD_RATE}:
        done.set()
with sd.InputStream(samplerate={RECORD_RATE}, channels=1, dtype="float32", blocksize=800, callback=callback):
    if not first.wait(20):
        sys.exit("no audio from the default input device")
    print("recording", flush=True)
    done.wait(seconds + 20)
np.save(out, np.concatenate(blocks)[: int(seconds * {RECORD_RATE})])
"""


class LineCollector:
    """Reads a subprocess pipe to its end in a thread (so the process never blocks on a full pipe), keeping
    the lines; :meth:`wait_for` waits for a line containing a marker."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, marker: str, timeout: float) -> str:
        """The first line containing ``marker``.

        Raises:
            TimeoutError: no such line within ``timeout`` seconds, or the stream ended without one.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if marker in line:
                        return line
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    raise TimeoutError(f"no line with {marker!r} within {timeout:g} s; got: {self.text()!r}")
                self._changed.wait(left)

    def text(self, timeout: float | None = None) -> str:
        """Everything read so far; with a ``timeout``, first wait (that long at most) for the end."""
        if timeout is not None:
            self._thread.join(timeout)
        return "".join(self.lines)


def _missing_libraries() -> list[str]:
    """PortAudio (what sounddevice loads) and ALSA's PulseAudio plugin (how PortAudio's ALSA devices reach
    the server), if absent."""
    missing = []
    if ctypes.util.find_library("portaudio") is None:
        missing.append("libportaudio2")
    plugin = "alsa-lib/libasound_module_pcm_pulse.so"  # /usr/lib/<multiarch>/ on Debian, /usr/lib*/ elsewhere
    places = [*Path("/usr/lib").glob(f"*/{plugin}"), Path("/usr/lib", plugin), Path("/usr/lib64", plugin)]
    if not any(place.exists() for place in places):
        missing.append("the ALSA PulseAudio plugin")
    return missing


def _script(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=START_TIMEOUT_S)


@contextmanager
def virtual_mic() -> Iterator[VirtualMic]:
    """Start the virtual microphone (skipped locally / failed in CI without PulseAudio), stop it afterwards
    unless it was already running before (e.g. started by hand for a debugging session)."""
    require_tools("the virtual microphone", "pulseaudio", "pactl", "paplay", "parec", packages=PULSE_PACKAGES)
    require("the virtual microphone", _missing_libraries(), packages=PULSE_PACKAGES)
    was_running = _script("status").returncode == 0
    started = time.monotonic()
    result = _script("start")
    if result.returncode != 0:
        raise RuntimeError(f"scripts/virtual_mic.sh start failed:\n{result.stderr}")
    exports = [line for line in result.stdout.splitlines() if line.startswith("export PULSE_SERVER=")]
    if not exports:
        raise RuntimeError(f"scripts/virtual_mic.sh start printed no PULSE_SERVER:\n{result.stdout}")
    mic = VirtualMic(exports[-1].split("=", 1)[1])
    mic.startup_seconds = time.monotonic() - started
    try:
        yield mic
    finally:
        if not was_running:
            _script("stop")
