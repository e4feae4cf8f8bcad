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


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read any soundfile-supported file (WAV/FLAC/OGG, any bit depth, any channel count).

    Returns:
        float32 mono samples in [-1, 1], shape ``[samples]``, resampled to ``sample_rate`` (Hz).

    Raises:
        AudioError: the file is missing, unreadable or not audio.
    """
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, OSError)
        raise AudioError(f"cannot read audio file {path}: {exc}") from None
    if data.size == 0:
        raise AudioError(f"audio file {path} is empty")
    return resample(to_mono(data), rate, sample_rate)


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
