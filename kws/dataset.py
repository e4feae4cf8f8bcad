"""Labelled splits loaded into memory as fixed-length int16 clips (torch-free)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kws.audio import AudioError, fit_length, float_to_int16, int16_to_float, load_audio
from kws.config import DataConfig
from kws.constants import SILENCE_LABEL
from kws.data import Corpus, Example, build_split, load_corpus, resolve_labels, split_summary

logger = logging.getLogger(__name__)

CONTEXT_TAIL_SECONDS = 1.0
"""How much of the end of each non-keyword utterance :func:`speech_context_clips` keeps (the context
augmentation prepends at most ``AugmentConfig.context_seconds``, 0.8 s by default)."""


@dataclass
class SplitData:
    """One split in memory.

    Attributes:
        audio: int16 ``[clips, clip_samples]``.
        labels: int64 ``[clips]`` indices into the run's label list.
        silence: bool ``[clips]``, True for ``_silence_`` examples.
        speakers: the speaker of each clip.
        paths: the source of each clip (``noise:FILE@OFFSET`` for slices of background noise).
        skipped: files that could not be read.
    """

    audio: np.ndarray
    labels: np.ndarray
    silence: np.ndarray
    speakers: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def float_audio(self, index: np.ndarray | slice) -> np.ndarray:
        """float32 ``[n, clip_samples]`` of the selected clips."""
        return int16_to_float(self.audio[index])


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime-only install has no tqdm
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="clip", leave=False, mininterval=1.0, disable=None)


def load_noises(corpus: Corpus, sample_rate: int) -> list[np.ndarray]:
    """The background-noise recordings, float32 ``[samples]`` each (unreadable ones skipped with a warning)."""
    noises = []
    for path in corpus.noise_files:
        try:
            noises.append(load_audio(path, sample_rate))
        except AudioError as exc:
            logger.warning("skipping %s", exc)
    return noises


def load_split(
    examples: list[Example],
    corpus: Corpus,
    noises: list[np.ndarray],
    sample_rate: int,
    clip_samples: int,
    desc: str,
) -> SplitData:
    """Read every example of a split; unreadable files are skipped with a warning and counted."""
    audio, labels, silence, speakers, paths, skipped = [], [], [], [], [], []
    clip_seconds = clip_samples / sample_rate
    for ex in _progress(examples, len(examples), desc):
        if ex.path is None:
            if not noises:
                continue
            noise = noises[ex.noise_index % len(noises)]
            start = int(ex.noise_offset * max(len(noise) - clip_samples, 0))
            clip = fit_length(noise[start : start + clip_samples], clip_samples) * np.float32(ex.noise_gain)
            source = f"noise:{corpus.noise_files[ex.noise_index % len(noises)].name}@{start}"
        else:
            try:
                # Only the clip's window is read: a long file in a word folder costs one clip of memory, and a
                # crop of a long non-keyword file (crop_offset >= 0) seeks to its window.
                position = ex.crop_offset if ex.crop_offset >= 0 else 0.0
                samples = load_audio(ex.path, sample_rate, max_seconds=clip_seconds, position=position)
                clip = fit_length(samples, clip_samples)
            except AudioError as exc:
                logger.warning("skipping %s", exc)
                skipped.append(str(ex.path))
                continue
            source = str(ex.path) if ex.crop_offset < 0 else f"{ex.path}@{ex.crop_offset:.3f}"
        audio.append(float_to_int16(clip))
        labels.append(ex.label)
        silence.append(ex.path is None or ex.speaker == "noise")
        speakers.append(ex.speaker)
        paths.append(source)
    if skipped:
        logger.warning("%d unreadable file(s) skipped in %s", len(skipped), desc)
    return SplitData(
        audio=np.stack(audio) if audio else np.zeros((0, clip_samples), np.int16),
        labels=np.asarray(labels, np.int64),
        silence=np.asarray(silence, bool),
        speakers=speakers,
        paths=paths,
        skipped=skipped,
    )


@dataclass
class PreparedData:
    """A run's labels, corpus, noises and loaded splits."""

    labels: list[str]
    corpus: Corpus
    noises: list[np.ndarray]
    splits: dict[str, SplitData]
    summary: dict[str, object]


def prepare(
    config: DataConfig,
    sample_rate: int,
    clip_samples: int,
    seed: int,
    splits: tuple[str, ...],
    labels: list[str] | None = None,
    split_mode: str = "auto",
) -> PreparedData:
    """Scan ``config.roots``, resolve the labels (or use the given ones) and load the requested splits."""
    corpus = load_corpus(config, split_mode)
    labels = labels or resolve_labels(config.labels, corpus.words)
    noises = load_noises(corpus, sample_rate)
    loaded: dict[str, SplitData] = {}
    summary: dict[str, object] = {"roots": list(config.roots), "layouts": list(corpus.layouts)}
    for split in splits:
        examples = build_split(corpus, labels, split, config, seed)
        data = load_split(examples, corpus, noises, sample_rate, clip_samples, desc=f"loading {split}")
        summary[split] = {**split_summary(examples, labels), "skipped": len(data.skipped)}
        loaded[split] = data
    silence_index = labels.index(SILENCE_LABEL)
    for data in loaded.values():
        data.silence |= data.labels == silence_index
    return PreparedData(labels=labels, corpus=corpus, noises=noises, splits=loaded, summary=summary)


def speech_context_clips(
    prepared: PreparedData, sample_rate: int, limit: int, seed: int, tail_seconds: float = CONTEXT_TAIL_SECONDS
) -> list[np.ndarray]:
    """The ends (last ``tail_seconds``) of up to ``limit`` non-keyword training utterances (float32), for
    context augmentation (:meth:`kws.augment.Augmenter.context` prepends at most ``context_seconds`` of the
    end of one; only that much of each file is read)."""
    keywords = set(prepared.labels)
    paths = [c.path for c in prepared.corpus.clips if c.split == "train" and c.word not in keywords]
    paths += list(prepared.corpus.negatives)
    rng = np.random.default_rng(seed)
    if len(paths) > limit:
        paths = [paths[i] for i in sorted(rng.choice(len(paths), limit, replace=False))]
    clips = []
    for path in paths:
        try:
            clips.append(load_audio(Path(path), sample_rate, max_seconds=tail_seconds, position=1.0))
        except AudioError as exc:
            logger.warning("skipping %s", exc)
    return clips
