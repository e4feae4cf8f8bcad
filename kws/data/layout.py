"""Speech Commands discovery, labelling and speaker-disjoint splits (torch-free).

Two official layouts are read, alone or several roots combined:

* **full dataset** (v0.01: 30 words, v0.02: 35 words): ``ROOT/WORD/SPEAKER_nohash_N.wav``, optional
  ``ROOT/_background_noise_/*.wav`` and the official ``validation_list.txt`` / ``testing_list.txt``;
* **12-class test archive**: ``ROOT/KEYWORD/SPEAKER_nohash_N.wav``, ``ROOT/_unknown_/WORD_SPEAKER_nohash_N.wav``
  and ``ROOT/_silence_/*.wav`` (1 s noise clips).

Splits follow the dataset's own rule (``which_set`` in TensorFlow's ``speech_commands/input_data.py``): the
SHA-1 of the speaker part of the file name decides, so one speaker's clips always share a split. The test
archive holds only official *test* speakers, so when it is used the rule is applied with a salt
(``split="speaker-hash"``) to every root alike, which keeps the splits speaker-disjoint across roots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kws.config import DataConfig
from kws.constants import (
    AUDIO_EXTENSIONS,
    BACKGROUND_NOISE_DIR,
    MAX_CLIPS_PER_SPEAKER_BITS,
    SILENCE_LABEL,
    STANDARD_KEYWORDS,
    TESTING_LIST,
    UNKNOWN_LABEL,
    VALIDATION_LIST,
)
from kws.errors import KWSError

logger = logging.getLogger(__name__)

SPLIT_SALT = "kws-speaker-split"
"""Salt of the re-split used when a 12-class test archive is among the roots."""
SPLIT_MODES: tuple[str, ...] = ("official", "speaker-hash")
"""How clips are assigned to splits: the official lists/hash, or the salted speaker hash (see :func:`scan_root`)."""
NEGATIVES_SALT = "kws-negatives"
NEGATIVES_HELD_OUT_PERCENT = 50.0
"""Share of the non-keyword speech files (``--negatives``) never used in training (see :func:`negative_split`)."""
NEGATIVES_CALIBRATION_SALT = "kws-negatives-calibration"
NEGATIVES_CALIBRATION_PERCENT = 100.0 / 3.0
"""Share of the never-trained files that `kws calibrate` streams (the rest is what `kws bench` streams)."""
NEGATIVE_TRAIN, NEGATIVE_CALIBRATION, NEGATIVE_HELD_OUT = "train", "calibration", "held-out"
"""The parts of the non-keyword speech files (:func:`negative_split`)."""


class DataError(KWSError, ValueError):
    """The data folders cannot be used (reported to the user as a one-line error)."""


@dataclass(frozen=True)
class Clip:
    """One utterance file.

    Attributes:
        path: the audio file.
        word: the spoken word (``_silence_`` for the archive's noise clips).
        speaker: the speaker id (the file name for clips without one).
        split: ``train``, ``validation`` or ``test``.
    """

    path: Path
    word: str
    speaker: str
    split: str


@dataclass(frozen=True)
class Corpus:
    """Every clip and background-noise file found under one or more roots.

    Attributes:
        clips: every utterance, with its split.
        noise_files: the background-noise files.
        layouts: ``"full"`` or ``"archive"`` per root (:func:`detect_layout`).
        negatives: the training half of the non-keyword speech files (``--negatives``).
        split_mode: the rule that assigned ``Clip.split`` (one of :data:`SPLIT_MODES`; ``auto`` resolved).
    """

    clips: tuple[Clip, ...]
    noise_files: tuple[Path, ...]
    layouts: tuple[str, ...]
    negatives: tuple[Path, ...] = ()
    split_mode: str = "official"

    @property
    def words(self) -> list[str]:
        return sorted({c.word for c in self.clips})


def which_set(filename: str, validation_percent: float, testing_percent: float, salt: str = "") -> str:
    """The official Speech Commands split rule.

    The part of the name before ``_nohash_`` (the speaker) is hashed with SHA-1, so every clip of a speaker
    lands in the same split.

    Args:
        filename: a clip's file name (a path is fine: only the base name is used).
        validation_percent, testing_percent: split sizes in percent.
        salt: prefix of the hashed text; empty for the official rule.
    """
    base = Path(filename).name
    hash_name = re.sub(r"_nohash_.*$", "", base)
    digest = hashlib.sha1((salt + hash_name).encode("utf-8")).hexdigest()
    percentage = (int(digest, 16) % (MAX_CLIPS_PER_SPEAKER_BITS + 1)) * (100.0 / MAX_CLIPS_PER_SPEAKER_BITS)
    if percentage < validation_percent:
        return "validation"
    if percentage < testing_percent + validation_percent:
        return "test"
    return "train"


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _speaker_of(name: str) -> str:
    """``SPEAKER_nohash_N.wav`` -> SPEAKER (the file stem when there is no ``_nohash_``)."""
    stem = Path(name).stem
    return stem.split("_nohash_")[0] if "_nohash_" in stem else stem


def detect_layout(root: Path) -> str:
    """``"archive"`` (12-class test archive) or ``"full"`` (full dataset); raises DataError otherwise."""
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder")
    subdirs = [d for d in root.iterdir() if d.is_dir()]
    if (root / UNKNOWN_LABEL).is_dir() or (root / SILENCE_LABEL).is_dir():
        return "archive"
    has_clips = any("_nohash_" in p.name for d in subdirs if d.name != BACKGROUND_NOISE_DIR for p in _audio_files(d))
    if has_clips:
        return "full"
    if not subdirs and not any(root.iterdir()):
        raise DataError(f"data folder {root} is empty")
    raise DataError(
        f"{root} is not a Speech Commands folder (expected WORD/SPEAKER_nohash_N.wav files, "
        f"or the test archive's {UNKNOWN_LABEL}/ and {SILENCE_LABEL}/ folders)"
    )


def _list_key(entry: str) -> str:
    """``WORD/NAME.wav`` -> ``WORD/NAME``: list entries match clips by stem, whatever the audio format.

    The official lists name ``.wav`` files; a copy stored losslessly as FLAC (or OGG) keeps its split.
    """
    entry = entry.strip().replace("\\", "/")
    stem, dot, ext = entry.rpartition(".")
    return stem if dot and f".{ext.lower()}" in AUDIO_EXTENSIONS else entry


def _read_list(path: Path) -> set[str]:
    """The entries of an official split list, as :func:`_list_key` keys (empty if the file is absent)."""
    if not path.is_file():
        return set()
    return {_list_key(line) for line in path.read_text().splitlines() if line.strip()}


def scan_root(root: Path, config: DataConfig, split_mode: str) -> tuple[list[Clip], list[Path], str]:
    """Find the clips and noise files of one root and assign each clip its split.

    Args:
        split_mode: ``"official"`` (the split lists where present, else the unsalted hash) or
            ``"speaker-hash"`` (the salted hash everywhere).
    """
    layout = detect_layout(root)
    salt = SPLIT_SALT if split_mode == "speaker-hash" else ""
    use_lists = split_mode == "official"
    validation = _read_list(root / VALIDATION_LIST) if use_lists else set()
    testing = _read_list(root / TESTING_LIST) if use_lists else set()
    has_lists = bool(validation or testing)
    clips: list[Clip] = []
    noise: list[Path] = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir()):
        files = _audio_files(folder)
        if folder.name == BACKGROUND_NOISE_DIR:
            noise.extend(files)
            continue
        for path in files:
            if folder.name == UNKNOWN_LABEL:  # archive: WORD_SPEAKER_nohash_N.wav
                word, _, rest = path.name.partition("_")
                speaker, split_name = _speaker_of(rest), rest
            else:
                word, speaker, split_name = folder.name, _speaker_of(path.name), path.name
            if has_lists:
                rel = _list_key(f"{folder.name}/{path.name}")
                split = "validation" if rel in validation else "test" if rel in testing else "train"
            else:
                split = which_set(split_name, config.validation_percent, config.testing_percent, salt)
            clips.append(Clip(path=path, word=word, speaker=speaker, split=split))
    if not clips:
        raise DataError(f"no audio clips found in {root}")
    return clips, noise, layout


def auto_split_mode(layouts: Sequence[str]) -> str:
    """The ``auto`` split mode of roots of these layouts: ``speaker-hash`` when a 12-class test archive is among
    them (it holds only official test speakers), else ``official``. The one home of this rule."""
    return "speaker-hash" if "archive" in layouts else "official"


def load_corpus(config: DataConfig, split: str = "auto") -> Corpus:
    """Scan every root of ``config``.

    Args:
        split: ``"auto"`` (:func:`auto_split_mode` of the roots' layouts), ``"official"`` or ``"speaker-hash"``;
            the resolved mode is ``Corpus.split_mode``.
    """
    if not config.roots:
        raise DataError("no data folder given (use --data PATH; `kws download` fetches Speech Commands)")
    roots = [Path(r).expanduser() for r in config.roots]
    layouts = [detect_layout(r) for r in roots]
    if split == "auto":
        split = auto_split_mode(layouts)
    if split not in SPLIT_MODES:
        raise DataError(f"unknown split mode {split!r} (use auto, official or speaker-hash)")
    clips: list[Clip] = []
    noise: list[Path] = []
    for root in roots:
        root_clips, root_noise, _ = scan_root(root, config, split)
        clips.extend(root_clips)
        noise.extend(root_noise)
    for extra in config.extra_train:
        root_clips, root_noise, _ = scan_root(Path(extra).expanduser(), config, split)
        clips.extend(dataclasses.replace(c, split="train") for c in root_clips)
        noise.extend(root_noise)
    negatives = [p for root in config.negatives for p in negative_files(root) if negative_split(p) == "train"]
    return Corpus(
        clips=tuple(clips),
        noise_files=tuple(noise),
        layouts=tuple(layouts),
        negatives=tuple(negatives),
        split_mode=split,
    )


def negative_split(path: Path) -> str:
    """The part of a non-keyword speech file: :data:`NEGATIVE_TRAIN`, :data:`NEGATIVE_CALIBRATION` or
    :data:`NEGATIVE_HELD_OUT`.

    Two salted hashes of the file name (:func:`which_set`'s rule: the base name up to ``_nohash_``, so the
    recordings of one speaker stay together): the first puts ``NEGATIVES_HELD_OUT_PERCENT`` of the files out of
    training (``kws train --negatives`` uses the rest: ``"train"``, unchanged by the second hash); the second
    splits those never-trained files into ``"calibration"`` (``NEGATIVES_CALIBRATION_PERCENT``, streamed by
    ``kws calibrate`` to choose thresholds) and ``"held-out"`` (the rest, streamed by ``kws bench``), so the
    thresholds are never measured on the audio they were chosen on.
    """
    name = f"{path.parent.name}/{path.name}"
    if which_set(name, 0.0, NEGATIVES_HELD_OUT_PERCENT, salt=NEGATIVES_SALT) != "test":
        return NEGATIVE_TRAIN
    calibration = which_set(name, 0.0, NEGATIVES_CALIBRATION_PERCENT, salt=NEGATIVES_CALIBRATION_SALT) == "test"
    return NEGATIVE_CALIBRATION if calibration else NEGATIVE_HELD_OUT


def negative_files(root: str | Path) -> list[Path]:
    """Every audio file under ``root`` (any layout), sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"negatives folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise DataError(f"no audio files under {root}")
    return files


def resolve_labels(spec: str, words: list[str]) -> list[str]:
    """Label list of a run: ``_silence_``, ``_unknown_``, then the keywords.

    Args:
        spec: ``"standard"`` (the 10 standard keywords), ``"all"`` (every word found) or a comma-separated
            keyword list.
        words: the words present in the data.
    """
    present = set(words) - {SILENCE_LABEL, UNKNOWN_LABEL}
    if spec == "standard":
        keywords = list(STANDARD_KEYWORDS)
    elif spec == "all":
        keywords = sorted(present)
    else:
        keywords = [w.strip() for w in spec.split(",") if w.strip()]
        if not keywords:
            raise DataError("empty keyword list")
        if len(set(keywords)) != len(keywords):
            raise DataError(f"duplicate keywords in {spec!r}")
    missing = [k for k in keywords if k not in present]
    if missing:
        raise DataError(
            f"unknown label(s) {', '.join(missing)}: not found in the data (words found: "
            f"{', '.join(sorted(present)) or 'none'})"
        )
    return [SILENCE_LABEL, UNKNOWN_LABEL, *keywords]


@dataclass(frozen=True)
class Example:
    """One labelled example of a split: a clip file, or (``path`` is None) a 1 s slice of background noise."""

    label: int
    path: Path | None
    speaker: str
    noise_index: int = -1
    noise_offset: float = 0.0  # fraction of the noise file at which the slice starts
    noise_gain: float = 1.0
    crop_offset: float = -1.0  # >= 0: a 1 s crop of a longer file, starting at this fraction of it
    word: str = ""  # the spoken word of a clip file ("" for noise slices and --negatives crops)


def build_split(corpus: Corpus, labels: list[str], split: str, config: DataConfig, seed: int) -> list[Example]:
    """The labelled examples of one split, with ``_unknown_`` and ``_silence_`` brought to their ratios.

    ``_unknown_`` clips are sampled down to ``unknown_ratio`` times the mean keyword class size; ``_silence_``
    is topped up to ``silence_ratio`` times that size with slices of the background-noise files.
    """
    index = {label: i for i, label in enumerate(labels)}
    rng = random.Random(f"{seed}:{split}")
    keyword_examples: list[Example] = []
    unknown: list[Example] = []
    silence: list[Example] = []
    for clip in corpus.clips:
        if clip.split != split:
            continue
        if clip.word == SILENCE_LABEL:
            silence.append(Example(index[SILENCE_LABEL], clip.path, clip.speaker, word=clip.word))
        elif clip.word in index:
            keyword_examples.append(Example(index[clip.word], clip.path, clip.speaker, word=clip.word))
        else:
            unknown.append(Example(index[UNKNOWN_LABEL], clip.path, clip.speaker, word=clip.word))
    n_keywords = len(labels) - 2
    mean_size = len(keyword_examples) / max(n_keywords, 1)
    n_unknown = round(config.unknown_ratio * mean_size)
    if len(unknown) > n_unknown:
        unknown = rng.sample(unknown, n_unknown)
    if split == "train" and corpus.negatives:
        for _ in range(round(config.negative_ratio * mean_size)):
            path = corpus.negatives[rng.randrange(len(corpus.negatives))]
            unknown.append(Example(index[UNKNOWN_LABEL], path, "negative", crop_offset=rng.random()))
    n_silence = round(config.silence_ratio * mean_size)
    if len(silence) > n_silence:
        silence = rng.sample(silence, n_silence)
    elif corpus.noise_files:
        for _ in range(n_silence - len(silence)):
            silence.append(
                Example(
                    index[SILENCE_LABEL],
                    None,
                    "noise",
                    noise_index=rng.randrange(len(corpus.noise_files)),
                    noise_offset=rng.random(),
                    noise_gain=rng.uniform(0.0, 1.0),
                )
            )
    examples = keyword_examples + unknown + silence
    examples.sort(key=lambda e: (e.label, str(e.path), e.noise_index, e.noise_offset))
    return examples


def unknown_words(corpus: Corpus, labels: Sequence[str]) -> tuple[str, ...]:
    """The words of the training split that are not labels, sorted: one model output each with ``kws train
    --fine-unknowns`` (``ModelConfig.unknown_words``). A 12-class test archive names them in its ``_unknown_``
    file names (``WORD_SPEAKER_nohash_N.wav``)."""
    skip = {*labels, SILENCE_LABEL, UNKNOWN_LABEL}
    return tuple(sorted({c.word for c in corpus.clips if c.split == "train" and c.word not in skip}))


def split_summary(examples: list[Example], labels: list[str]) -> dict[str, object]:
    """Clips per class and speaker count of a split (for reports)."""
    counts = Counter(labels[e.label] for e in examples)
    return {
        "clips": len(examples),
        "speakers": len({e.speaker for e in examples if labels[e.label] != SILENCE_LABEL}),
        "per_class": {label: counts.get(label, 0) for label in labels},
    }
