"""Audio file reading, down-mixing and resampling (torch-free: shared by training and the runtime)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from kws.errors import KWSError

logger = logging.getLogger(__name__)


class AudioError(KWSError, RuntimeError):
    """An audio file cannot be read or decoded."""


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling of ``audio`` (float32 ``[samples]`` or ``[samples, channels]``) with soxr."""
    if orig_rate == new_rate:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, orig_rate, new_rate, quality="HQ").astype(np.float32, copy=False)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Down-mix ``[samples, channels]`` to ``[samples]`` by averaging the channels."""
    return audio.mean(axis=1) if audio.ndim == 2 else audio


MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
"""Sample rates outside these bounds (Hz) are refused: a corrupt header declaring 1 Hz would make resampling
to 16 kHz produce 16,000 output samples per input sample (gigabytes for a small file)."""
RESAMPLE_MARGIN_SECONDS = 0.05
"""Extra audio read on each side of a window, so the resampler's filter sees real neighbours at its edges."""


def load_audio(
    path: str | Path, sample_rate: int, max_seconds: float | None = None, position: float = 0.0
) -> np.ndarray:
    """Read any soundfile-supported file (WAV/FLAC/OGG, any bit depth, any channel count).

    Args:
        path: the file.
        sample_rate: the rate (Hz) to return.
        max_seconds: read (and decode) at most this much of the file; None: the whole file. Only the window is
            read, so memory is bounded by the window, not by the file.
        position: where the window lies in a file longer than ``max_seconds``, as a fraction of the rest:
            0.0 its beginning (default), 1.0 its end, 0.5 the middle.

    Returns:
        float32 mono samples in [-1, 1], shape ``[samples]``, resampled to ``sample_rate`` (Hz); at most
        ``round(max_seconds * sample_rate)`` samples when ``max_seconds`` is given.

    Raises:
        AudioError: the file is missing, unreadable, not audio, empty, or declares an absurd sample rate.
    """
    import soundfile as sf

    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    if Path(path).is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if not Path(path).exists():
        raise AudioError(f"audio file {path} does not exist")
    try:
        with sf.SoundFile(str(path)) as f:
            rate = int(f.samplerate)
            if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
                raise AudioError(
                    f"audio file {path} declares a sample rate of {rate} Hz "
                    f"(outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)"
                )
            if f.channels < 1:
                raise AudioError(f"audio file {path} declares {f.channels} channels")
            skip = 0
            if max_seconds is None:
                data = f.read(dtype="float32", always_2d=True)
            else:
                want = int(np.ceil(max_seconds * rate))
                margin = int(np.ceil(RESAMPLE_MARGIN_SECONDS * rate)) if rate != sample_rate else 0
                first = 0
                if f.seekable() and f.frames > want:
                    start = int(round(position * (f.frames - want)))
                    first = max(start - margin, 0)
                    skip = start - first
                    if first:
                        f.seek(first)
                data = f.read(skip + want + margin, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, OSError, ...)
        raise AudioError(f"cannot read audio file {path}: {exc}") from None
    if data.size == 0:
        raise AudioError(f"audio file {path} is empty")
    audio = resample(to_mono(data), rate, sample_rate)
    if max_seconds is not None:
        first_out = int(round(skip * sample_rate / rate))
        audio = audio[first_out : first_out + int(round(max_seconds * sample_rate))]
        if audio.size == 0:
            raise AudioError(f"audio file {path} is empty")
    return audio


def fit_length(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop the end of ``audio`` (``[samples]``) to exactly ``num_samples``."""
    if len(audio) >= num_samples:
        return audio[:num_samples]
    return np.pad(audio, (0, num_samples - len(audio)))


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16 PCM (clipped)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def int16_to_float(audio: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1)."""
    return audio.astype(np.float32) / 32768.0
