"""Synthesise extra training clips with the espeak-ng speech synthesiser (Debian: apt install espeak-ng).

Writes a full-layout Speech Commands folder (OUT/WORD/VOICE_nohash_N.wav, 16 kHz 16-bit) with every word
spoken by many espeak-ng voices (English dialects x voice variants) at random speeds and pitches. Pass it to
`kws train --extra-train OUT`: its clips only ever go to the training split. Non-keywords are synthesised too,
so that "sounds synthetic" is not a cue for "keyword".
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from kws.constants import SAMPLE_RATE, V2_WORDS
from kws.data.audio import fit_length, load_audio
from kws.errors import KWSError

logger = logging.getLogger(__name__)

DIALECTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = (
    "",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
    "croak",
    "whisper",
    "Alex",
    "Andy",
    "Annie",
    "Denis",
    "Gene",
    "Jacky",
    "Lee",
    "Mike",
    "adam",
    "anika",
    "aunty",
    "boris",
    "caleb",
    "david",
    "ed",
    "edward",
    "grandma",
    "grandpa",
    "iven",
    "john",
    "linda",
    "max",
    "michel",
    "norbert",
    "paul",
    "pedro",
    "quincy",
    "rob",
    "robert",
    "steph",
    "travis",
    "victor",
    "zac",
)
SPEED_WPM = (110, 200)
PITCH = (25, 75)
WORD_PATTERN = re.compile(r"[^\W_][\w'-]*")
"""A word is a plain name (it becomes a folder under --out and an espeak-ng argument): letters, digits,
apostrophes, hyphens and underscores, starting with a letter or digit (no path separators, no ``..``, not
absolute, not an option, not a special folder such as ``_background_noise_``)."""


def synthesize(word: str, voice: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    """One utterance as float32 ``[SAMPLE_RATE]`` (1 s, zero-padded/cropped, word centred at random later)."""
    wav = workdir / "tts.wav"
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    audio = load_audio(wav, SAMPLE_RATE)
    voiced = np.flatnonzero(np.abs(audio) > 0.01 * max(np.abs(audio).max(), 1e-6))
    if len(voiced):
        audio = audio[voiced[0] : voiced[-1] + 1]
    return audio


def generate(out: Path, words: tuple[str, ...], per_word: int, seed: int) -> int:
    """Write ``per_word`` clips of every word; returns the number written.

    Raises:
        KWSError: a word is not a plain name, ``per_word`` < 1, espeak-ng is missing, or it produced nothing.
    """
    bad = [w for w in words if not WORD_PATTERN.fullmatch(w)]
    if bad or not words:
        raise KWSError(f"not plain words: {bad or words!r}")
    if per_word < 1:
        raise KWSError(f"--per-word must be at least 1, got {per_word}")
    if shutil.which("espeak-ng") is None:
        raise KWSError("espeak-ng is not installed (Debian/Ubuntu: sudo apt install espeak-ng)")
    rng = np.random.default_rng(seed)
    voices = [d + (f"+{v}" if v else "") for d in DIALECTS for v in VARIANTS]
    written = failed = 0
    from tqdm import tqdm

    with tempfile.TemporaryDirectory() as tmp:
        for word in tqdm(words, desc="synthesising", unit="word"):
            (out / word).mkdir(parents=True, exist_ok=True)
            for n in range(per_word):
                voice = voices[int(rng.integers(len(voices)))]
                speed, pitch = int(rng.integers(*SPEED_WPM)), int(rng.integers(*PITCH))
                try:
                    audio = synthesize(word, voice, speed, pitch, Path(tmp))
                except (subprocess.SubprocessError, KWSError) as exc:
                    logger.warning("espeak-ng failed for %r with %s: %s", word, voice, exc)
                    failed += 1
                    continue
                audio = audio[:SAMPLE_RATE]
                start = int(rng.integers(0, SAMPLE_RATE - len(audio) + 1))
                clip = fit_length(np.concatenate([np.zeros(start, np.float32), audio]), SAMPLE_RATE)
                clip *= np.float32(10 ** (rng.uniform(-20, -3) / 20) / max(np.abs(clip).max(), 1e-6))
                name = f"tts{voice.replace('+', 'x').replace('-', '')}{n:04d}_nohash_0.wav"
                sf.write(out / word / name, clip, SAMPLE_RATE, subtype="PCM_16")
                written += 1
    if not written:
        raise KWSError(f"espeak-ng produced no clip ({failed} attempts failed; see the warnings)")
    if failed:
        logger.warning("espeak-ng failed for %d of %d clips (skipped)", failed, failed + written)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write (full Speech Commands layout)")
    parser.add_argument(
        "--words",
        default="all",
        help="comma-separated words, or 'all' for the 35 words of v0.02 (default: %(default)s)",
    )
    parser.add_argument("--per-word", type=int, default=200, help="clips per word (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")


def parse_words(text: str) -> tuple[str, ...]:
    """``--words``: 'all' or comma-separated plain words; raises KWSError for anything else."""
    if text == "all":
        return V2_WORDS
    words = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
    if not words:
        raise KWSError(f"--words {text!r} names no word")
    bad = [w for w in words if not WORD_PATTERN.fullmatch(w)]
    if bad:
        raise KWSError(
            f"--words: {', '.join(map(repr, bad))} is not a plain word (letters, digits, ' - _; "
            f"no path separators or '..')"
        )
    return words


def run(args: argparse.Namespace) -> int:
    words = parse_words(args.words)
    if args.per_word < 1:
        raise KWSError(f"--per-word must be at least 1, got {args.per_word}")
    n = generate(args.out, words, args.per_word, args.seed)
    print(f"wrote {n} clips to {args.out}")
    return 0
