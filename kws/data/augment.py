"""Seeded on-the-fly waveform augmentation for training (numpy; SpecAugment lives in kws.model.features).

Every random draw comes from the ``numpy.random.Generator`` passed in, so a run is repeatable from its seed.
"""

from __future__ import annotations

import numpy as np

from kws.config import AugmentConfig
from kws.data.reverb import convolve, simulate_room

EPS = 1e-8


def random_slice(audio: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``length``-sample slice of ``audio`` (tiled if shorter)."""
    if len(audio) < length:
        audio = np.tile(audio, length // max(len(audio), 1) + 1)
    start = int(rng.integers(0, len(audio) - length + 1))
    return audio[start : start + length]


def noise_scale(signal_rms: float, noise: np.ndarray, snr_db: float) -> np.float32:
    """The factor that puts ``noise`` (float ``[samples]``) ``snr_db`` dB below a signal of RMS ``signal_rms``."""
    noise_rms = np.sqrt(np.mean(noise**2) + EPS)
    return np.float32(signal_rms / noise_rms / 10 ** (snr_db / 20))


def _speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Speed perturbation (tempo and pitch) by ``factor`` with linear interpolation."""
    n_out = max(int(round(len(audio) / factor)), 1)
    positions = np.arange(n_out, dtype=np.float64) * factor
    return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)


def _shift(audio: np.ndarray, shift: int) -> np.ndarray:
    """Shift right (``shift > 0``) or left with zero fill, keeping the length."""
    if shift == 0:
        return audio
    out = np.zeros_like(audio)
    if shift > 0:
        out[shift:] = audio[:-shift]
    else:
        out[:shift] = audio[-shift:]
    return out


def _fit_centered(audio: np.ndarray, length: int) -> np.ndarray:
    if len(audio) >= length:
        start = (len(audio) - length) // 2
        return audio[start : start + length]
    pad = length - len(audio)
    return np.pad(audio, (pad // 2, pad - pad // 2))


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``audio`` float32 ``[n]`` convolved with ``rir`` (FFT), cut to its first ``n`` samples (the tail that
    rings on past the clip is dropped, as a 1 s window of a stream would) and scaled back to its own RMS."""
    wet = convolve(audio, rir)[: len(audio)]
    scale = np.sqrt((np.mean(audio.astype(np.float64) ** 2) + EPS) / (np.mean(wet**2) + EPS))
    return (wet * scale).astype(np.float32)


def room_bank(config: AugmentConfig, sample_rate: int, seed: int) -> list[np.ndarray]:
    """``config.reverb_rooms`` simulated room responses (:func:`kws.data.reverb.simulate_room`), reverberation times
    uniform in ``[reverb_rt60_min, reverb_rt60_max]``, seeded; empty when ``reverb_prob`` is 0."""
    if not config.reverb_prob:
        return []
    rng = np.random.default_rng([seed, 7919])
    rt60s = rng.uniform(config.reverb_rt60_min, config.reverb_rt60_max, config.reverb_rooms)
    return [simulate_room(float(rt60), sample_rate, rng).rir for rt60 in rt60s]


class Augmenter:
    """Applies :class:`AugmentConfig` to batches of 1 s clips.

    Args:
        config: what to apply.
        sample_rate: Hz.
        noises: background-noise recordings (float32 ``[samples]`` each), for mixing and ``_silence_``.
        speech: non-keyword speech clips (float32 ``[samples]``), prepended as context.
        rooms: room impulse responses (float32 ``[samples]``, unit energy; :func:`room_bank`) that
            ``reverb_prob`` of the speech clips are convolved with; none: no reverberation.
    """

    def __init__(
        self,
        config: AugmentConfig,
        sample_rate: int,
        noises: list[np.ndarray],
        speech: list[np.ndarray],
        rooms: list[np.ndarray] | None = None,
    ) -> None:
        self.config = config
        self.sample_rate = sample_rate
        self.noises = noises
        self.speech = speech
        self.rooms = list(rooms or [])

    def clip(self, audio: np.ndarray, is_silence: bool, rng: np.random.Generator) -> np.ndarray:
        """Augment one clip ``[samples]`` -> ``[samples]`` (same length)."""
        cfg = self.config
        n = len(audio)
        if not is_silence:
            if cfg.speed_prob and rng.random() < cfg.speed_prob:
                audio = _fit_centered(_speed(audio, float(rng.uniform(cfg.speed_min, cfg.speed_max))), n)
            max_shift = int(cfg.time_shift_ms * self.sample_rate / 1000)
            if max_shift:
                audio = _shift(audio, int(rng.integers(-max_shift, max_shift + 1)))
            if self.rooms and cfg.reverb_prob and rng.random() < cfg.reverb_prob:
                audio = reverberate(audio, self.rooms[int(rng.integers(len(self.rooms)))])
        if cfg.gain_db:
            audio = audio * np.float32(10 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20))
        if self.noises and not is_silence and rng.random() < cfg.noise_prob:
            noise = random_slice(self.noises[int(rng.integers(len(self.noises)))], n, rng)
            snr_db = rng.uniform(cfg.snr_db_min, cfg.snr_db_max)
            audio = audio + noise * noise_scale(np.sqrt(np.mean(audio**2) + EPS), noise, snr_db)
        return np.clip(audio, -1.0, 1.0).astype(np.float32)

    def context(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """``length`` samples of preceding context: quiet noise or the end of a non-keyword utterance."""
        if self.speech and rng.random() < 0.5:
            speech = self.speech[int(rng.integers(len(self.speech)))]
            out = np.zeros(length, np.float32)
            tail = speech[-length:]
            out[length - len(tail) :] = tail
            return out
        if self.noises:
            noise = random_slice(self.noises[int(rng.integers(len(self.noises)))], length, rng)
            return noise * np.float32(rng.uniform(0.0, 0.5))
        return np.zeros(length, np.float32)

    def batch(self, clips: list[np.ndarray], silence: list[bool], rng: np.random.Generator) -> np.ndarray:
        """Augment a batch; with probability ``context_prob`` the whole batch gets context prepended.

        Returns:
            float32 ``[batch, context + samples]``.
        """
        out = [self.clip(c, s, rng) for c, s in zip(clips, silence, strict=True)]
        cfg = self.config
        if cfg.context_prob and rng.random() < cfg.context_prob:
            length = int(rng.uniform(0.1, cfg.context_seconds) * self.sample_rate)
            out = [np.concatenate([self.context(length, rng), c]) for c in out]
        return np.stack(out)
