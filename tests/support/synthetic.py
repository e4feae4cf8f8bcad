"""Tiny synthetic Speech Commands datasets in the official layouts (for tests; no real data needed).

Each "word" is a distinctive tone pattern (a rising chirp followed by a steady tone, with frequencies set by
the word), slightly detuned per speaker, placed at a random position in a 1 s, 16 kHz, 16-bit clip with
a little noise. A small LSTM learns them in seconds, which makes end-to-end tests of training, export and
detection meaningful.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
KEYWORDS = ("yes", "no", "up", "down")
OTHER_WORDS = ("bed", "cat")
WORD_SECONDS = 0.45


def _word_index(word: str) -> int:
    return zlib.crc32(word.encode()) % 997


def synth_word(word: str, rng: np.random.Generator, detune: float = 1.0) -> np.ndarray:
    """One utterance of ``word``: float32 ``[WORD_SECONDS * SAMPLE_RATE]``."""
    k = _word_index(word)
    f1 = (300 + (k % 17) * 110) * detune
    f2 = (500 + (k % 13) * 140) * detune
    n = int(WORD_SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    half = n // 2
    freq = np.concatenate([np.linspace(f1, f2, half), np.full(n - half, f2)])
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    envelope = np.sin(np.pi * t / WORD_SECONDS) ** 0.5
    return (0.3 * envelope * np.sin(phase) * rng.uniform(0.6, 1.0)).astype(np.float32)


def synth_clip(word: str | None, rng: np.random.Generator, detune: float = 1.0) -> np.ndarray:
    """A 1 s clip with ``word`` (None: noise only) at a random position."""
    clip = (rng.standard_normal(SAMPLE_RATE) * 0.003).astype(np.float32)
    if word is not None:
        w = synth_word(word, rng, detune)
        start = int(rng.integers(0, SAMPLE_RATE - len(w)))
        clip[start : start + len(w)] += w
    return clip


def _speaker(i: int) -> str:
    return f"{zlib.crc32(f'speaker{i}'.encode()):08x}"


def make_noise_files(folder: Path, seconds: float = 5.0, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.05
    brown = np.cumsum(rng.standard_normal(int(seconds * SAMPLE_RATE)))
    brown = brown / np.abs(brown).max() * 0.05
    sf.write(folder / "white_noise.wav", white.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    sf.write(folder / "brown_noise.wav", brown.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def make_full_dataset(
    root: Path,
    words: tuple[str, ...] = KEYWORDS + OTHER_WORDS,
    speakers: int = 20,
    clips_per_speaker: int = 2,
    seed: int = 0,
    noise: bool = True,
) -> Path:
    """A full-layout dataset: ``root/WORD/SPEAKER_nohash_N.wav`` and ``root/_background_noise_/``."""
    rng = np.random.default_rng(seed)
    for word in words:
        (root / word).mkdir(parents=True, exist_ok=True)
        for s in range(speakers):
            detune = 1.0 + 0.03 * np.sin(s)
            for n in range(clips_per_speaker):
                clip = synth_clip(word, rng, detune)
                sf.write(root / word / f"{_speaker(s)}_nohash_{n}.wav", clip, SAMPLE_RATE, subtype="PCM_16")
    if noise:
        make_noise_files(root / "_background_noise_", seed=seed)
    return root


def make_test_archive(
    root: Path,
    keywords: tuple[str, ...] = KEYWORDS,
    others: tuple[str, ...] = OTHER_WORDS,
    speakers: int = 6,
    seed: int = 1,
) -> Path:
    """A 12-class-test-archive layout: keyword folders, ``_unknown_/WORD_SPEAKER_nohash_N.wav``, ``_silence_``."""
    rng = np.random.default_rng(seed)
    for s in range(speakers):
        speaker = _speaker(100 + s)
        for word in keywords:
            (root / word).mkdir(parents=True, exist_ok=True)
            sf.write(root / word / f"{speaker}_nohash_0.wav", synth_clip(word, rng), SAMPLE_RATE, subtype="PCM_16")
        (root / "_unknown_").mkdir(parents=True, exist_ok=True)
        for word in others:
            sf.write(
                root / "_unknown_" / f"{word}_{speaker}_nohash_0.wav",
                synth_clip(word, rng),
                SAMPLE_RATE,
                subtype="PCM_16",
            )
        (root / "_silence_").mkdir(parents=True, exist_ok=True)
        sf.write(root / "_silence_" / f"{1000 + s}.wav", synth_clip(None, rng), SAMPLE_RATE, subtype="PCM_16")
    return root


def plant_keywords(
    words: list[str], gap_seconds: float = 1.5, seed: int = 0, lead_seconds: float = 1.0
) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """A stream with ``words`` planted ``gap_seconds`` apart after ``lead_seconds`` of noise.

    Returns:
        float32 audio and the (word, end time in seconds) of each planted word.
    """
    rng = np.random.default_rng(seed)
    segments, truth, t = [], [], 0.0
    lead = int(lead_seconds * SAMPLE_RATE)
    segments.append((rng.standard_normal(lead) * 0.003).astype(np.float32))
    t = lead / SAMPLE_RATE
    gap = int(gap_seconds * SAMPLE_RATE)
    for word in words:
        w = synth_word(word, rng)
        seg = (rng.standard_normal(len(w) + gap) * 0.003).astype(np.float32)
        seg[: len(w)] += w
        segments.append(seg)
        truth.append((word, t + len(w) / SAMPLE_RATE))
        t += len(seg) / SAMPLE_RATE
    return np.concatenate(segments), truth
