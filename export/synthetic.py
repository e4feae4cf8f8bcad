"""Speech-like synthetic clips: the parity checks' inputs when ``kws export`` is given no real clips.

A parity check compares two float32 implementations of the same model (PyTorch and onnxruntime, onnxruntime
and onnx's ReferenceEvaluator). Its inputs must be inputs a keyword model meets, or it measures float32
rounding instead of the export: a pure tone or a chirp leaves most mel bands at the level of the FFT's
rounding residue, where ``log(mel + 1e-6)`` differs between two correct FFTs, and a good model then "fails"
by 1e-4 on inputs no microphone delivers (on real speech the same model agrees to ~1e-6).

So the clips here are made like recordings of short words:

* **voiced syllables**: a harmonic source (fundamental 90-250 Hz with a slow contour and jitter, -6 dB/octave
  tilt) shaped by three formants gliding between two vowels, with a syllable envelope;
* **fricatives and bursts**: 40-120 ms of high-passed noise before some syllables;
* **word levels** of -40 to -14 dBFS (active speech) over a **recording noise floor** of -70 to -45 dBFS,
  at least 15 dB below the word (coloured noise: every band has energy, as with a real microphone);
* clips of **background noise only** (-55 to -25 dBFS), like the ``_silence_`` class;
* **short recordings zero-padded** to the clip length, as ``kws.data.audio.fit_length`` pads short files;
* **16-bit quantisation**, as every Speech Commands file has.

Seeded: the same arguments give the same clips.
"""

from __future__ import annotations

import numpy as np

VOWEL_FORMANTS: tuple[tuple[float, float, float], ...] = (
    (730.0, 1090.0, 2440.0),  # a
    (270.0, 2290.0, 3010.0),  # i
    (300.0, 870.0, 2240.0),  # u
    (530.0, 1840.0, 2480.0),  # e
    (570.0, 840.0, 2410.0),  # o
    (440.0, 1020.0, 2240.0),
    (660.0, 1720.0, 2410.0),
    (490.0, 1350.0, 1690.0),
)
"""F1-F3 (Hz) of typical adult vowels (Peterson & Barney)."""
FORMANT_BANDWIDTHS = (80.0, 100.0, 150.0)
F0_RANGE = (90.0, 250.0)
SYLLABLES = (1, 3)
SYLLABLE_SECONDS = (0.12, 0.3)
FRICATIVE_SECONDS = (0.04, 0.12)
FRICATIVE_DB = (-18.0, -8.0)
"""Fricative level relative to the vowels (dB)."""
WORD_DBFS = (-40.0, -14.0)
"""Active speech level of a word (RMS of its loud part, dBFS)."""
FLOOR_DBFS = (-70.0, -45.0)
"""Recording noise floor under every clip (RMS, dBFS)."""
MIN_SNR_DB = 15.0
"""A word is at least this much above the floor."""
NOISE_ONLY_DBFS = (-55.0, -25.0)
PADDED_FRACTION = (0.6, 0.9)
"""Length of a short recording, as a fraction of the clip (the rest is zeros)."""
PEAK = 0.95
PCM_SCALE = 32768.0
KINDS = 4
"""Clip ``i`` is of kind ``i % KINDS``: 0, 1 a word over the floor; 2 the same, zero-padded; 3 noise only."""


def _db(value: float) -> float:
    return float(10.0 ** (value / 20.0))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def shaped_noise(
    rng: np.random.Generator, n: int, sample_rate: int, low: float, high: float, tilt_db_per_octave: float = 0.0
) -> np.ndarray:
    """Unit-RMS noise ``[n]`` band-limited to ``[low, high]`` Hz with a spectral tilt (dB per octave)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    gain = ((freqs >= low) & (freqs <= high)).astype(np.float64)
    if tilt_db_per_octave:
        gain *= (np.maximum(freqs, 50.0) / 1000.0) ** (tilt_db_per_octave / 6.02)
    out = np.fft.irfft(spectrum * gain, n)
    return out / max(_rms(out), 1e-12)


def voiced(
    rng: np.random.Generator,
    n: int,
    sample_rate: int,
    f0: float,
    start: tuple[float, ...],
    end: tuple[float, ...],
) -> np.ndarray:
    """A unit-RMS voiced sound ``[n]``: harmonics of a gliding ``f0`` under formants moving ``start`` -> ``end``."""
    x = np.linspace(0.0, 1.0, n)
    contour = 1.0 + 0.15 * rng.choice([-1.0, 1.0]) * np.sin(np.pi * x * rng.uniform(0.5, 1.5))
    jitter = 1.0 + 0.005 * np.cumsum(rng.standard_normal(n)) / np.sqrt(n)
    f0_t = f0 * contour * jitter
    phase = 2.0 * np.pi * np.cumsum(f0_t) / sample_rate
    top = 0.45 * sample_rate
    formants = np.asarray(start)[:, None] + (np.asarray(end) - np.asarray(start))[:, None] * x[None]
    formants = np.minimum(formants, 0.9 * top)
    out = np.zeros(n)
    for k in range(1, int(0.85 * top / f0) + 1):
        fk = k * f0_t
        envelope = sum(1.0 / (1.0 + ((fk - f) / bw) ** 2) for f, bw in zip(formants, FORMANT_BANDWIDTHS, strict=True))
        out += envelope * (fk / 100.0) ** -1.0 * (fk < top) * np.sin(k * phase + rng.uniform(0.0, 2.0 * np.pi))
    return out / max(_rms(out), 1e-12)


def word(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """One spoken-word-like utterance (0.1-1 s), at unit active level."""
    parts = []
    for _ in range(int(rng.integers(SYLLABLES[0], SYLLABLES[1] + 1))):
        if rng.random() < 0.5:
            m = int(rng.uniform(*FRICATIVE_SECONDS) * sample_rate)
            low = rng.uniform(1500.0, 4000.0)
            burst = shaped_noise(rng, m, sample_rate, low, 0.49 * sample_rate, 3.0) * _db(rng.uniform(*FRICATIVE_DB))
            parts.append(burst * np.hanning(m))
        m = int(rng.uniform(*SYLLABLE_SECONDS) * sample_rate)
        a, b = (VOWEL_FORMANTS[i] for i in rng.integers(len(VOWEL_FORMANTS), size=2))
        sound = voiced(rng, m, sample_rate, rng.uniform(*F0_RANGE), a, b)
        parts.append(sound * np.sin(np.pi * np.linspace(0.0, 1.0, m)) ** rng.uniform(0.3, 1.0))
    utterance = np.concatenate(parts)
    loud = utterance[np.abs(utterance) > 0.1 * np.abs(utterance).max()]
    return utterance / max(_rms(loud), 1e-12)


def floor_noise(rng: np.random.Generator, n: int, sample_rate: int, dbfs: float) -> np.ndarray:
    """Coloured noise over the whole band at ``dbfs`` RMS: a microphone's noise floor, or background noise."""
    return shaped_noise(rng, n, sample_rate, 20.0, 0.5 * sample_rate, rng.uniform(-4.0, 0.0)) * _db(dbfs)


def speech_like_clips(clip_samples: int, sample_rate: int, count: int, seed: int = 0) -> np.ndarray:
    """float32 ``[count, clip_samples]`` of speech-like clips (see the module docstring), 16-bit values."""
    rng = np.random.default_rng(seed)
    clips = np.zeros((count, clip_samples), np.float32)
    for i in range(count):
        kind = i % KINDS
        if kind == KINDS - 1:
            clip = floor_noise(rng, clip_samples, sample_rate, rng.uniform(*NOISE_ONLY_DBFS))
        else:
            floor = rng.uniform(*FLOOR_DBFS)
            clip = floor_noise(rng, clip_samples, sample_rate, floor)
            level = rng.uniform(max(WORD_DBFS[0], floor + MIN_SNR_DB), WORD_DBFS[1])
            utterance = word(rng, sample_rate)[:clip_samples] * _db(level)
            start = int(rng.integers(0, max(1, clip_samples - len(utterance))))
            clip[start : start + len(utterance)] += utterance[: clip_samples - start]
            if kind == 2:
                clip[int(rng.uniform(*PADDED_FRACTION) * clip_samples) :] = 0.0
        peak = float(np.abs(clip).max())
        if peak > PEAK:
            clip *= PEAK / peak
        clips[i] = np.round(clip * PCM_SCALE) / PCM_SCALE
    return clips
