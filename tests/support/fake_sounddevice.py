"""A fake ``sounddevice`` module for the microphone tests (the real PortAudio path is tested by the virtual
microphone of ``support.pulse``): devices with given rates and channel counts, and an input stream that plays
a signal from a thread a little faster than real time, can flag overflows and can stop delivering (an
unplugged device).

Install it with ``monkeypatch.setattr(kws.runtime.sources, "import_sounddevice", lambda: fake)``.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np

from support.synthetic import SAMPLE_RATE


class FakePortAudioError(Exception):
    pass


class FakeStream:
    """Calls ``callback`` from a thread with blocks of the fake device's signal, a little faster than real
    time; can flag overflows and can stop delivering (an unplugged device)."""

    SPEEDUP = 20.0

    def __init__(self, sd, samplerate, blocksize, device, channels, dtype, callback, finished_callback):
        self.sd, self.rate, self.block, self.channels, self.dtype = sd, samplerate, blocksize, channels, dtype
        self.callback, self.finished = callback, finished_callback
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()

    def _run(self):
        signal_ = self.sd.signal_at(self.rate)
        for n, start in enumerate(range(0, len(signal_), self.block)):
            if self._stop.is_set():
                return
            if self.sd.vanish_after is not None and n >= self.sd.vanish_after:
                if self.sd.vanish_with_finish:
                    self.finished()
                return
            block = signal_[start : start + self.block]
            block = np.pad(block, (0, self.block - len(block)))
            data = np.repeat(block[:, None], self.channels, axis=1)
            if self.dtype == "int16":
                data = np.round(data * 32767).astype(np.int16)
            status = SimpleNamespace(input_overflow=n in self.sd.overflow_blocks)
            self.callback(data.astype(self.dtype), self.block, None, status)
            time.sleep(self.block / self.rate / self.SPEEDUP)
        while not self._stop.is_set():  # the input ended: the test stops the stream with Ctrl-C
            time.sleep(0.01)

    def abort(self):
        self._stop.set()

    def close(self):
        self.sd.closed = True


class FakeSoundDevice:
    """The parts of ``sounddevice`` the runtime uses, over ``devices`` (dicts as in :data:`DEVICES`).

    Attributes:
        signal16k: what every device hears, float32 at 16 kHz (resampled for other device rates).
        vanish_after: stop delivering after this many blocks (None: never); ``vanish_with_finish``: and call
            the stream's ``finished_callback`` (a stream that ends, not one that just goes silent).
        overflow_blocks: indices of the blocks flagged as input overflows.
        opened: the keyword arguments of the last ``InputStream``; ``closed``: whether it was closed.
    """

    PortAudioError = FakePortAudioError

    def __init__(self, devices, default=0, signal16k=None):
        self.devices = devices
        self.default = SimpleNamespace(device=[default, default])
        self.signal16k = signal16k if signal16k is not None else np.zeros(SAMPLE_RATE, np.float32)
        self.vanish_after = None
        self.vanish_with_finish = False
        self.overflow_blocks = ()
        self.closed = False
        self.opened = None

    def signal_at(self, rate):
        import soxr

        if rate == SAMPLE_RATE:
            return self.signal16k
        return soxr.resample(self.signal16k, SAMPLE_RATE, rate).astype(np.float32)

    def query_devices(self):
        return [
            {
                "name": d["name"],
                "hostapi": 0,
                "max_input_channels": d["channels"],
                "default_samplerate": d["default_rate"],
            }
            for d in self.devices
        ]

    def query_hostapis(self, index):
        return {"name": "FakeALSA"}

    def check_input_settings(self, device, channels, samplerate, dtype):
        dev = self.devices[device]
        if samplerate not in dev["rates"] or channels > dev["channels"] or dev["channels"] == 0:
            raise FakePortAudioError("Invalid sample rate")

    def InputStream(self, **kwargs):  # noqa: N802 (sounddevice's name)
        self.opened = kwargs
        self.stream = FakeStream(self, **kwargs)
        return self.stream


DEVICES = [
    {"name": "HDMI output", "channels": 0, "default_rate": 48000, "rates": (48000,)},
    {
        "name": "USB PnP Sound Device: Audio (hw:1,0)",
        "channels": 1,
        "default_rate": 48000,
        "rates": (44100, 48000),
    },
    {"name": "pulse", "channels": 32, "default_rate": 44100, "rates": (8000, 16000, 44100, 48000)},
    {"name": "default", "channels": 32, "default_rate": 44100, "rates": (8000, 16000, 44100, 48000)},
]
"""An output-only device, a USB microphone that only runs at 44.1/48 kHz, and two ALSA plugin devices."""
