"""Audio sources: microphone (sounddevice), audio files, raw PCM on stdin, in-memory arrays.

Every source yields mono chunks at the model rate, int16 PCM or float32 in [-1, 1], so one engine consumes
them all and a file goes through exactly the code path of the microphone. Audio at another rate is
converted with a streaming band-limited resampler (``soxr.ResampleStream``), never by dropping samples.
``sounddevice`` is imported only when the microphone is used.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import os
import queue
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np

from kws.audio import AudioError, int16_to_float
from kws.errors import KWSError
from kws.runtime.config import MAX_INPUT_CHANNELS, MAX_INPUT_RATE, MIN_INPUT_RATE, regular_file

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

RESAMPLER_QUALITY = "HQ"
"""soxr quality preset: band-limited, linear phase, a few ms of delay."""

MAX_BLOCK_SAMPLES = 1 << 20
"""At most this many samples (all channels together) are read at once from a file or stdin, whatever the
chunk size, rate and channel count: memory stays bounded."""

WAV_UNKNOWN_LENGTH = 0x7FFF0000
"""A WAV data size at least this large is a placeholder of a stream written without seeking back (e.g.
``arecord > file.wav``), not a length: such a file is not reported as truncated."""

PCM16_BYTES = 2
SUGGEST_INPUT = "use --input FILE for an audio file or --input - for raw 16-bit PCM on stdin"


class SourceError(KWSError, RuntimeError):
    """An audio source cannot be opened or read."""


class DeviceError(SourceError):
    """No usable input device (missing, unknown, or cannot be opened)."""


class DeviceLostError(SourceError):
    """The microphone stopped delivering audio in the middle of the stream."""


class StreamResampler:
    """Streaming band-limited resampler of mono float32 audio (``soxr.ResampleStream``)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        import soxr

        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=RESAMPLER_QUALITY)

    def process(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        """``[n]`` float32 at ``in_rate`` -> float32 at ``out_rate``; ``last=True`` once, at the end."""
        return self._stream.resample_chunk(np.ascontiguousarray(audio, dtype=np.float32), last=last)


class AudioSource:
    """Base class: iterate to get mono chunks at ``sample_rate`` (int16 or float32 ``[n]``).

    Attributes:
        sample_rate: rate of the yielded chunks (the model rate).
        input_rate: rate the audio is read at (differs from ``sample_rate`` when resampling).
        live: audio arrives in real time (microphone, stdin): detections get a wall-clock time.
        overflows: input overflows seen (audio lost before it reached the engine).
        description: human-readable name of the source.
    """

    live = False

    def __init__(self, sample_rate: int, input_rate: int, description: str) -> None:
        self.sample_rate = sample_rate
        self.input_rate = input_rate
        self.description = description
        self.overflows = 0
        self.nonfinite = 0
        self._resampler = StreamResampler(input_rate, sample_rate) if input_rate != sample_rate else None

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file (idempotent)."""

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _convert(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """``[n, channels]`` int16/float32 at ``input_rate`` -> mono chunk at ``sample_rate``.

        Mono int16 without resampling passes through untouched (the engine converts it into its buffer).
        """
        if block.ndim == 2 and block.shape[1] == 1:
            block = block[:, 0]
        if block.ndim == 1 and block.dtype == np.int16 and self._resampler is None:
            return block
        audio = int16_to_float(block) if block.dtype == np.int16 else block.astype(np.float32, copy=False)
        if audio.dtype != np.int16 and not np.isfinite(audio).all():
            bad = ~np.isfinite(audio)
            if not self.nonfinite:
                logger.warning("%s holds nan/inf samples: they are replaced by silence", self.description)
            self.nonfinite += int(bad.sum())
            audio = np.where(bad, np.float32(0.0), audio)
        if audio.ndim == 2:
            audio = audio.mean(axis=1, dtype=np.float32)
        if self._resampler is not None:
            audio = self._resampler.process(audio, last=last)
        return audio

    def _tail(self) -> np.ndarray | None:
        """The resampler's last samples at the end of the input (None if not resampling)."""
        if self._resampler is None:
            return None
        return self._resampler.process(np.zeros(0, dtype=np.float32), last=True)


class ArraySource(AudioSource):
    """An in-memory signal, cut into chunks (for tests, benchmarks and :func:`detect_audio`).

    Args:
        audio: ``[n]`` or ``[n, channels]``, int16 PCM or float in [-1, 1], at ``rate``.
        rate: rate of ``audio`` (Hz).
        sample_rate: model rate (Hz).
        chunk_seconds: duration of each chunk.
    """

    def __init__(self, audio: np.ndarray, rate: int, sample_rate: int, chunk_seconds: float) -> None:
        super().__init__(sample_rate, rate, "array")
        audio = np.asarray(audio)
        self._audio = audio if audio.dtype == np.int16 else audio.astype(np.float32, copy=False)
        self._block = max(1, round(chunk_seconds * rate))

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self._audio), self._block):
            yield self._convert(self._audio[start : start + self._block])
        tail = self._tail()
        if tail is not None and len(tail):
            yield tail


class FileSource(AudioSource):
    """An audio file read block by block (WAV/FLAC/OGG, any rate, channel count and bit depth).

    Args:
        path: the file.
        sample_rate: model rate (Hz).
        chunk_seconds: audio per block.
        realtime: pace the blocks at real-time speed (as a microphone would deliver them).

    Raises:
        AudioError: the file is missing, not a regular file (a folder, a named pipe), unreadable, empty,
            truncated (a WAV shorter than its header says), or at a rate outside
            ``MIN_INPUT_RATE..MAX_INPUT_RATE``.
    """

    def __init__(self, path: str | Path, sample_rate: int, chunk_seconds: float, realtime: bool = False) -> None:
        import soundfile as sf

        self.path = regular_file(
            path, "audio file", AudioError, pipe_hint=f"; for raw 16-bit PCM from a pipe use --input - < {path}"
        )
        try:
            with _c_stderr_muted():  # libsndfile's mp3 decoder prints its own warnings on odd data
                self._file = sf.SoundFile(str(self.path))
        except Exception as exc:  # LibsndfileError, RuntimeError, TypeError for non-audio data
            detail = _first_line(exc)
            if "not a regular file" in detail:  # libsndfile's guess for data it cannot recognise
                detail = "not a recognised audio format, or corrupt"
            raise AudioError(f"cannot read audio file {self.path}: {detail}") from None
        try:
            self._check_file()
        except AudioError:
            self._file.close()
            raise
        super().__init__(sample_rate, self._file.samplerate, str(self.path))
        self.realtime = realtime
        self._block = _block_frames(chunk_seconds, self._file.samplerate, self._file.channels)
        self._dtype = "int16" if self._file.subtype == "PCM_16" else "float32"

    def _check_file(self) -> None:
        info = self._file
        if not MIN_INPUT_RATE <= info.samplerate <= MAX_INPUT_RATE:
            raise AudioError(f"audio file {self.path} has a sample rate of {info.samplerate} Hz; supported: "
                             f"{MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz")  # fmt: skip
        declared = _wav_declared_frames(self.path)
        if declared is not None and declared > info.frames:
            rate = info.samplerate
            raise AudioError(f"audio file {self.path} is truncated: its header declares {declared / rate:.2f} s "
                             f"of audio, the file holds {info.frames / rate:.2f} s")  # fmt: skip
        if info.frames == 0:
            raise AudioError(f"audio file {self.path} is empty")

    def __iter__(self) -> Iterator[np.ndarray]:
        start = time.monotonic()
        read = 0
        try:
            blocks = self._file.blocks(blocksize=self._block, dtype=self._dtype, always_2d=True)
            for block in blocks:
                read += len(block)
                if self.realtime:
                    time.sleep(max(0.0, start + read / self.input_rate - time.monotonic()))
                yield self._convert(block)
        except Exception as exc:  # a truncated or corrupt file fails in the middle
            raise AudioError(f"cannot read audio file {self.path} after {read} frames: {exc}") from None
        tail = self._tail()
        if tail is not None and len(tail):
            yield tail

    def close(self) -> None:
        self._file.close()


@contextlib.contextmanager
def _c_stderr_muted() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block (C libraries that print on their own)."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr at all: nothing to mute
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _block_frames(chunk_seconds: float, rate: int, channels: int) -> int:
    """Frames per read: a chunk's worth, at most :data:`MAX_BLOCK_SAMPLES` samples, at least one frame."""
    return max(1, min(round(chunk_seconds * rate), MAX_BLOCK_SAMPLES // max(1, channels)))


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the header of a RIFF/WAVE file declares (None: not a WAV, no data chunk, or a stream length
    placeholder). libsndfile silently reads a truncated WAV up to where it ends."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            for _ in range(64):  # chunks before "data": fmt, fact, LIST, ... (a bound against garbage)
                header = f.read(8)
                if len(header) < 8:
                    return None
                chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk_id == b"fmt ":
                    fmt = f.read(size + (size & 1))
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                elif chunk_id == b"data":
                    if size >= WAV_UNKNOWN_LENGTH or block_align == 0:
                        return None
                    return size // block_align
                else:
                    f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None
    return None


class StdinSource(AudioSource):
    """Raw signed 16-bit little-endian PCM from a pipe (e.g. ``arecord -f S16_LE -r 16000 -c 1``).

    Args:
        stream: binary input (default ``sys.stdin.buffer``).
        sample_rate: model rate (Hz).
        rate: rate of the incoming PCM (Hz).
        channels: interleaved channels of the incoming PCM (down-mixed).
        chunk_seconds: audio per read.

    Raises:
        SourceError: stdin is a terminal (nothing piped in) or the format is invalid.
    """

    live = True

    def __init__(
        self, sample_rate: int, rate: int, channels: int = 1, chunk_seconds: float = 0.1,
        stream: BinaryIO | None = None,
    ) -> None:  # fmt: skip
        if not (_whole(rate) and MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE):
            raise SourceError(f"raw PCM needs a rate of {MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz, got {rate!r}")
        if not (_whole(channels) and 1 <= channels <= MAX_INPUT_CHANNELS):
            raise SourceError(f"raw PCM needs 1..{MAX_INPUT_CHANNELS} channels, got {channels!r}")
        if stream is None:
            stream = _stdin()
        super().__init__(sample_rate, rate, f"stdin (raw S16_LE, {rate} Hz, {channels} ch)")
        self._stream = stream
        self.channels = channels
        self._frame_bytes = PCM16_BYTES * channels
        self._read_bytes = _block_frames(chunk_seconds, rate, channels) * self._frame_bytes

    def __iter__(self) -> Iterator[np.ndarray]:
        rest = b""
        received = 0
        while True:
            try:
                data = self._stream.read(self._read_bytes)
            except (OSError, ValueError) as exc:  # EIO, EBADF, a closed stream...
                raise SourceError(f"cannot read raw PCM from stdin: {getattr(exc, 'strerror', None) or exc}") \
                    from None  # fmt: skip
            if not data:
                break
            received += len(data)
            data = rest + data
            whole = len(data) - len(data) % self._frame_bytes
            rest = data[whole:]
            if whole:
                block = np.frombuffer(data[:whole], dtype="<i2").astype(np.int16, copy=False)
                yield self._convert(block.reshape(-1, self.channels))
        if received == 0:
            raise SourceError("stdin ended before any audio arrived (was anything piped in?)")
        if rest:
            logger.warning("stdin ended with %d bytes of an incomplete sample frame (ignored)", len(rest))
        tail = self._tail()
        if tail is not None and len(tail):
            yield tail


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _stdin() -> BinaryIO:
    """``sys.stdin.buffer`` if audio can be piped through it.

    Raises:
        SourceError: stdin is closed (``<&-``) or a terminal (nothing piped in).
    """
    example = "e.g. arecord -f S16_LE -r 16000 -c 1 | kws listen --input -"
    stdin = sys.stdin
    try:
        closed = stdin is None or bool(getattr(stdin, "closed", False))
        terminal = not closed and stdin.isatty()
    except (OSError, ValueError):  # a stdin whose descriptor went away
        closed, terminal = True, False
    if closed:
        raise SourceError(f"--input - reads raw 16-bit PCM from stdin, but stdin is closed; pipe audio in, {example}")
    if terminal:
        raise SourceError(
            f"--input - reads raw 16-bit PCM from stdin, but stdin is a terminal; pipe audio in, {example}"
        )
    return stdin.buffer


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


def open_source(
    spec: str | None, sample_rate: int, chunk_seconds: float, *, device: str | None = None,
    realtime: bool = False, raw_rate: int | None = None, raw_channels: int = 1,
) -> AudioSource:  # fmt: skip
    """The source for ``kws listen --input``: None -> microphone ``device``; ``"-"`` -> raw PCM on stdin;
    anything else -> an audio file."""
    if spec is None:
        return MicrophoneSource(device, sample_rate, chunk_seconds)
    if spec == "-":
        rate = sample_rate if raw_rate is None else raw_rate  # 0 is an error, not "unset"
        return StdinSource(sample_rate, rate, raw_channels, chunk_seconds)
    return FileSource(spec, sample_rate, chunk_seconds, realtime=realtime)
