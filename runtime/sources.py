"""Audio sources: the contract every input follows, the shared chunk conversion, and the choice of source.

Every source yields mono chunks at the model rate, int16 PCM or float32 in [-1, 1], so one engine consumes
them all and a file goes through exactly the code path of the microphone. :class:`AudioSource` does the
conversion (down-mix, nan/inf -> silence, resampling); audio at another rate is converted with a streaming
band-limited resampler (``soxr.ResampleStream``), never by dropping samples.

The sources themselves: :class:`ArraySource` (in memory, here), :mod:`kws.runtime.files` (audio files, raw
PCM on stdin), :mod:`kws.runtime.microphone` (sounddevice, imported only when the microphone is used);
:func:`open_source` picks one for ``kws listen --input``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from kws.data.audio import int16_to_float
from kws.errors import KWSError

logger = logging.getLogger(__name__)

RESAMPLER_QUALITY = "HQ"
"""soxr quality preset: band-limited, linear phase, a few ms of delay."""

MAX_BLOCK_SAMPLES = 1 << 20
"""At most this many samples (all channels together) are read at once from a file or stdin, whatever the
chunk size, rate and channel count: memory stays bounded."""


class SourceError(KWSError, RuntimeError):
    """An audio source cannot be opened or read."""


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
        nonfinite: nan/inf samples seen (replaced by silence, reported once).
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

    def _tail(self) -> Iterator[np.ndarray]:
        """The resampler's last samples at the end of the input: one chunk, or none if not resampling."""
        if self._resampler is None:
            return
        tail = self._resampler.process(np.zeros(0, dtype=np.float32), last=True)
        if len(tail):
            yield tail


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
        yield from self._tail()


def block_frames(chunk_seconds: float, rate: int, channels: int) -> int:
    """Frames per read: a chunk's worth, at most :data:`MAX_BLOCK_SAMPLES` samples, at least one frame."""
    return max(1, min(round(chunk_seconds * rate), MAX_BLOCK_SAMPLES // max(1, channels)))


def open_source(
    spec: str | None, sample_rate: int, chunk_seconds: float, *, device: str | None = None,
    realtime: bool = False, raw_rate: int | None = None, raw_channels: int = 1,
) -> AudioSource:  # fmt: skip
    """The source for ``kws listen --input``: None -> microphone ``device``; ``"-"`` -> raw PCM on stdin;
    anything else -> an audio file."""
    # imported here, not at the top: both modules build on this one (AudioSource)
    from kws.runtime.files import FileSource, StdinSource
    from kws.runtime.microphone import MicrophoneSource

    if spec is None:
        return MicrophoneSource(device, sample_rate, chunk_seconds)
    if spec == "-":
        rate = sample_rate if raw_rate is None else raw_rate  # 0 is an error, not "unset"
        return StdinSource(sample_rate, rate, raw_channels, chunk_seconds)
    return FileSource(spec, sample_rate, chunk_seconds, realtime=realtime)
