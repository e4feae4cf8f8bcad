"""Live input from a microphone through PortAudio (``sounddevice``, imported only when it is used).

Devices are found by index, exact name or a unique part of a name (:func:`resolve_device`); the device is
opened at the model rate if it can be, otherwise at a native rate and resampled by
:class:`kws.runtime.sources.AudioSource`. A device that stops delivering audio is a :class:`DeviceLostError`
within :data:`MIC_TIMEOUT_S`, never a hang.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from kws.runtime.sources import AudioSource, SourceError

logger = logging.getLogger(__name__)

FALLBACK_RATES: tuple[int, ...] = (48_000, 44_100)
"""Native rates tried when a microphone cannot be opened at the model rate (after its default rate)."""

MIC_TIMEOUT_S = 2.0
"""A microphone that delivers nothing for this long is reported as lost (unplugged, driver failure)."""

MIC_START_TIMEOUT_S = 10.0
"""Longer wait for the first block: some audio servers take a while to start a stream on a busy machine."""

MIC_POLL_S = 0.1
"""How often the reader wakes up while waiting for microphone audio (to notice a stopped stream)."""

MIC_QUEUE_SECONDS = 2.0
"""Audio buffered between the PortAudio callback and the engine; beyond it blocks are dropped (overflow)."""

SUGGEST_INPUT = "use --input FILE for an audio file or --input - for raw 16-bit PCM on stdin"
"""What to do instead when there is no usable microphone."""


class DeviceError(SourceError):
    """No usable input device (missing, unknown, or cannot be opened)."""


class DeviceLostError(SourceError):
    """The microphone stopped delivering audio in the middle of the stream."""


def import_sounddevice() -> ModuleType:
    """``sounddevice``, or a one-line error saying what to install.

    Raises:
        DeviceError: the package or the PortAudio library is missing.
    """
    try:
        import sounddevice
    except ModuleNotFoundError:
        raise DeviceError("the microphone needs the sounddevice package: pip install 'kws[mic]' "
                          f"(or {SUGGEST_INPUT})") from None  # fmt: skip
    except OSError as exc:  # sounddevice raises OSError('PortAudio library not found')
        raise DeviceError(f"{exc}: install it (Debian/Raspberry Pi OS: sudo apt install libportaudio2), "
                          f"or {SUGGEST_INPUT}") from None  # fmt: skip
    return sounddevice


def list_input_devices(sd: ModuleType | None = None) -> list[dict[str, Any]]:
    """Input devices: ``index``, ``name``, ``hostapi``, ``channels``, ``default_samplerate``, ``default``."""
    sd = sd or import_sounddevice()
    try:
        devices = list(sd.query_devices())
        default_in = _default_input(sd)
        result = []
        for index, dev in enumerate(devices):
            if dev["max_input_channels"] > 0:
                result.append({
                    "index": index, "name": dev["name"], "hostapi": sd.query_hostapis(dev["hostapi"])["name"],
                    "channels": dev["max_input_channels"], "default_samplerate": dev["default_samplerate"],
                    "default": index == default_in,
                })  # fmt: skip
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}") from None
    return result


def format_devices(devices: list[dict[str, Any]]) -> str:
    """One line per input device (``*`` marks the default)."""
    if not devices:
        return "no audio input devices found"
    return "\n".join(
        f"{'*' if d['default'] else ' '} {d['index']:>3}  {d['name']}  ({d['hostapi']}, {d['channels']} ch, "
        f"{d['default_samplerate']:g} Hz)"
        for d in devices
    )  # fmt: skip


def _default_input(sd: ModuleType) -> int:
    try:
        index = sd.default.device[0]
    except Exception:  # no default configured
        return -1
    return int(index) if index is not None else -1


def resolve_device(spec: str | int | None, sd: ModuleType | None = None) -> dict[str, Any]:
    """The input device named by ``spec``: an index, an exact name, or a unique part of a name
    (case-insensitive); None: the default input device.

    Raises:
        DeviceError: no input device at all, or no (unique) match; the message lists the devices.
    """
    sd = sd or import_sounddevice()
    devices = list_input_devices(sd)
    if not devices:
        raise DeviceError(f"no audio input device found; {SUGGEST_INPUT}")
    listing = "available input devices:\n" + format_devices(devices)
    if spec is None:
        default = [d for d in devices if d["default"]]
        if not default:
            logger.info("no default input device, using %s", devices[0]["name"])
        return default[0] if default else devices[0]
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        match = [d for d in devices if d["index"] == int(text)]
        if not match:
            raise DeviceError(f"there is no input device with index {text}; {listing}")
        return match[0]
    lower = text.lower()
    match = [d for d in devices if d["name"].lower() == lower]
    if not match:
        match = [d for d in devices if lower in d["name"].lower()]
    if not match:
        raise DeviceError(f"no input device matches {text!r}; {listing}")
    if len(match) > 1:
        names = ", ".join(f"{d['index']}: {d['name']}" for d in match)
        raise DeviceError(f"{text!r} matches several input devices ({names}): give the index or full name")
    return match[0]


class MicrophoneSource(AudioSource):
    """Live input through PortAudio (sounddevice).

    The device is opened at the model rate if it supports it, otherwise at its native rate (its default,
    then 48 kHz, 44.1 kHz) and resampled. The PortAudio callback only copies blocks into a bounded queue;
    a full queue or a PortAudio overflow flag counts as an overflow and the stream goes on.

    Args:
        device: index, name or part of a name (None: the default input device).
        sample_rate: model rate (Hz).
        chunk_seconds: audio per callback block.

    Raises:
        DeviceError: no such device, no device at all, or it cannot be opened at any rate.
        DeviceLostError: (while iterating) the device stopped delivering audio.
    """

    live = True

    def __init__(self, device: str | int | None, sample_rate: int, chunk_seconds: float) -> None:
        sd = import_sounddevice()
        self._sd = sd
        info = resolve_device(device, sd)
        self.device = info
        rate, channels = self._choose_settings(sd, info, sample_rate)
        super().__init__(sample_rate, rate, f"{info['name']} (device {info['index']})")
        self.channels = channels
        self._dtype = "int16" if rate == sample_rate else "float32"
        block = max(1, round(chunk_seconds * rate))
        depth = max(2, round(MIC_QUEUE_SECONDS / chunk_seconds))
        self._queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=depth)
        self._finished = threading.Event()
        self._closing = False
        self._reported_overflows = 0
        try:
            self._stream = sd.InputStream(
                samplerate=rate, blocksize=block, device=info["index"], channels=channels, dtype=self._dtype,
                callback=self._callback, finished_callback=self._finished.set,
            )  # fmt: skip
        except Exception as exc:  # PortAudioError, ValueError
            raise DeviceError(f"cannot open input device {self.description} at {rate} Hz: {exc}") from None

    @staticmethod
    def _choose_settings(sd: ModuleType, info: dict[str, Any], sample_rate: int) -> tuple[int, int]:
        """(rate, channels) the device accepts: the model rate if possible, else a native rate."""
        rates = [sample_rate, int(info["default_samplerate"]), *FALLBACK_RATES]
        channel_options = sorted({1, int(info["channels"])})
        tried = []
        for rate in dict.fromkeys(rates):
            for channels in channel_options:
                try:
                    sd.check_input_settings(device=info["index"], channels=channels, samplerate=rate,
                                            dtype="float32")  # fmt: skip
                except Exception as exc:  # PortAudioError or ValueError (invalid sample rate / channels)
                    tried.append(f"{rate} Hz x{channels}: {exc}")
                    continue
                if rate != sample_rate:
                    logger.info("input device does not support %d Hz: recording at %d Hz and resampling",
                                sample_rate, rate)  # fmt: skip
                return rate, channels
        raise DeviceError(f"input device {info['index']} ({info['name']}) cannot be opened: " + "; ".join(tried))

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status and status.input_overflow:
            self.overflows += 1
        try:
            self._queue.put_nowait(indata.copy())
        except queue.Full:  # the engine fell behind: drop the block, count it
            self.overflows += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            self._stream.start()
        except Exception as exc:
            raise DeviceError(f"cannot start input device {self.description}: {exc}") from None
        timeout = MIC_START_TIMEOUT_S
        while True:
            waited = 0.0
            while True:
                try:
                    block = self._queue.get(timeout=MIC_POLL_S)
                    break
                except queue.Empty:
                    waited += MIC_POLL_S
                    if self._finished.is_set() or waited >= timeout:
                        ended = self._finished.is_set()
                        why = "its stream ended" if ended else f"nothing for {timeout:g} s"
                        raise DeviceLostError(
                            f"input device {self.description} stopped delivering audio ({why}): unplugged?"
                        ) from None
            timeout = MIC_TIMEOUT_S
            if self.overflows != self._reported_overflows:
                if self._reported_overflows == 0:
                    logger.warning("input overflow: audio was lost (is the CPU too busy?); counting them")
                self._reported_overflows = self.overflows
            yield self._convert(block)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            self._stream.abort()
            self._stream.close()
        except Exception as exc:  # the device may already be gone
            logger.debug("closing the input stream: %s", exc)
