"""Recorded audio: files (WAV/FLAC/OGG, any rate, channels, bit depth) and raw 16-bit PCM on stdin.

Both read bounded blocks (:func:`kws.runtime.sources.block_frames`) and convert them with
:class:`kws.runtime.sources.AudioSource`, the path the microphone takes. A damaged file (truncated, empty, at an
absurd rate, not audio) is an :class:`kws.data.audio.AudioError` with one line saying why, found before any
audio is processed where the header allows.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from kws.data.audio import AudioError
from kws.runtime.config import MAX_INPUT_CHANNELS, MAX_INPUT_RATE, MIN_INPUT_RATE, is_whole, regular_file
from kws.runtime.console import muted_c_stderr
from kws.runtime.sources import AudioSource, SourceError, block_frames

logger = logging.getLogger(__name__)

WAV_UNKNOWN_LENGTH = 0x7FFF0000
"""A WAV data size at least this large is a placeholder of a stream written without seeking back (e.g.
``arecord > file.wav``), not a length: such a file is not reported as truncated."""

PCM16_BYTES = 2
"""Bytes per sample of raw PCM on stdin (signed 16-bit little-endian)."""

FILE_BLOCK_SECONDS = 1.0
"""Audio per read of a file processed as fast as possible (not ``realtime``): at least this much, so the
per-read cost of libsndfile and of the loop stays small next to the model's (the spotter's results do not
depend on block sizes). A ``realtime`` file is read a chunk at a time, as a microphone delivers it."""


class FileSource(AudioSource):
    """An audio file read block by block (WAV/FLAC/OGG, any rate, channel count and bit depth).

    Args:
        path: the file.
        sample_rate: model rate (Hz).
        chunk_seconds: audio per block when ``realtime``; otherwise blocks hold at least
            :data:`FILE_BLOCK_SECONDS`.
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
            with muted_c_stderr():  # libsndfile's mp3 decoder prints its own warnings on odd data
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
        seconds = chunk_seconds if realtime else max(chunk_seconds, FILE_BLOCK_SECONDS)
        self._block = block_frames(seconds, self._file.samplerate, self._file.channels)
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
        yield from self._tail()

    def close(self) -> None:
        self._file.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        if not (is_whole(rate) and MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE):
            raise SourceError(f"raw PCM needs a rate of {MIN_INPUT_RATE}..{MAX_INPUT_RATE} Hz, got {rate!r}")
        if not (is_whole(channels) and 1 <= channels <= MAX_INPUT_CHANNELS):
            raise SourceError(f"raw PCM needs 1..{MAX_INPUT_CHANNELS} channels, got {channels!r}")
        if stream is None:
            stream = _stdin()
        super().__init__(sample_rate, rate, f"stdin (raw S16_LE, {rate} Hz, {channels} ch)")
        self._stream = stream
        self.channels = channels
        self._frame_bytes = PCM16_BYTES * channels
        self._read_bytes = block_frames(chunk_seconds, rate, channels) * self._frame_bytes

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
        yield from self._tail()


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
