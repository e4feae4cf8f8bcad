"""Labelled splits loaded into memory as fixed-length int16 clips (torch-free).

With a cache folder (:mod:`kws.data.cache`), the clips come from each data folder's decoded-audio cache instead of the
audio files (bit-identical), and a split asked for ``lazy`` stays in the memory-mapped caches
(:class:`~kws.data.clip_rows.ClipRows`): the processes of a distributed run then share its pages instead of each holding
a copy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kws.config import DataConfig
from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.data.audio import AudioError, fit_length, float_to_int16, int16_to_float, load_audio
from kws.data.augment import Augmenter
from kws.data.cache import CLIPS, FILES, AudioCache, crop, open_cache
from kws.data.clip_rows import ClipRows
from kws.data.layout import Corpus, Example, build_split, load_corpus, negative_files, resolve_labels, split_summary

logger = logging.getLogger(__name__)

CONTEXT_TAIL_SECONDS = 1.0
"""How much of the end of each non-keyword utterance :func:`speech_context_clips` keeps (the context
augmentation prepends at most ``AugmentConfig.context_seconds``, 0.8 s by default)."""


@dataclass
class SplitData:
    """One split in memory.

    Attributes:
        audio: int16 ``[clips, clip_samples]`` (a :class:`~kws.data.clip_rows.ClipRows` for a split loaded
            ``lazy``: index it, or ``np.asarray`` it for an ordinary array).
        labels: int64 ``[clips]`` indices into the run's label list.
        silence: bool ``[clips]``, True for ``_silence_`` examples.
        speakers: the speaker of each clip.
        paths: the source of each clip (``noise:FILE@OFFSET`` for slices of background noise).
        skipped: files that could not be read.
        words: the spoken word of each clip ("" for noise slices and ``--negatives`` crops; empty for a split
            built without them).
    """

    audio: np.ndarray | ClipRows
    labels: np.ndarray
    silence: np.ndarray
    speakers: list[str]
    paths: list[str]
    skipped: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def fine_labels(self, labels: list[str], unknown_words: tuple[str, ...]) -> np.ndarray:
        """int64 ``[clips]`` targets of the fine outputs (``KWSModel.forward(..., fine=True)``): an ``_unknown_``
        clip of word ``unknown_words[j]`` gets ``len(labels) + j``; every other clip (keywords, ``_silence_``,
        ``--negatives`` crops, unknown words not in the list) keeps its label.

        Raises:
            ValueError: the split has no words (built without them) but ``unknown_words`` is not empty.
        """
        out = self.labels.copy()
        if not unknown_words:
            return out
        if len(self.words) != len(self.labels):
            raise ValueError(f"{len(self.words)} words for {len(self.labels)} clips: the split has no words")
        index = {word: len(labels) + j for j, word in enumerate(unknown_words)}
        unknown = labels.index(UNKNOWN_LABEL)
        for i in np.flatnonzero(self.labels == unknown):
            out[i] = index.get(self.words[i], unknown)
        return out

    def float_audio(self, index: np.ndarray | slice) -> np.ndarray:
        """float32 ``[n, clip_samples]`` of the selected clips."""
        return int16_to_float(self.audio[index])


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the runtime-only install has no tqdm
        return iterable
    disable = None if os.environ.get("RANK", "0") in ("", "0") else True  # torchrun: bars on rank 0 only
    return tqdm(iterable, total=total, desc=desc, unit="clip", leave=False, mininterval=1.0, disable=disable)


def load_noises(corpus: Corpus, sample_rate: int) -> list[np.ndarray]:
    """The background-noise recordings, float32 ``[samples]`` each (unreadable ones skipped with a warning)."""
    noises = []
    for path in corpus.noise_files:
        try:
            noises.append(load_audio(path, sample_rate))
        except AudioError as exc:
            logger.warning("skipping %s", exc)
    return noises


@dataclass
class DataCaches:
    """The decoded-audio caches of a run's folders (see :mod:`kws.data.cache`).

    Attributes:
        clips: ``clips`` caches, by data folder (as the corpus names it: ``Path(root).expanduser()``).
        files: ``files`` caches of the ``--negatives`` folders, likewise.
    """

    clips: dict[Path, AudioCache]
    files: dict[Path, AudioCache]
    sample_rate: int
    clip_samples: int

    @property
    def nbytes(self) -> int:
        """Bytes of decoded audio in every cache (their memory-mapped files)."""
        return sum(c.nbytes for c in (*self.clips.values(), *self.files.values()))

    def lookup(self, ex: Example) -> tuple[AudioCache, int] | np.ndarray | None:
        """Where the audio of a file example is cached: ``(clips cache, row)``, an int16 crop ``[clip_samples]`` (a
        ``--negatives`` crop), or None (not cached: read the file).

        Raises:
            AudioError: the file could not be read when the cache was built.
        """
        path = ex.path
        if path is None:
            return None
        if ex.crop_offset < 0:
            cache = self.clips.get(path.parent.parent)
            if cache is None:
                return None
            row = cache.row(f"{path.parent.name}/{path.name}")
            return None if row is None else (cache, row)
        samples = self.file_samples(path)
        return None if samples is None else crop(samples, self.sample_rate, self.clip_samples, ex.crop_offset)

    def file_samples(self, path: Path) -> np.ndarray | None:
        """The whole int16 audio ``[samples]`` of a ``--negatives`` file in the ``files`` caches, or None (not
        cached: read the file).

        Raises:
            AudioError: the file could not be read when the cache was built.
        """
        for root, cache in self.files.items():
            if path.is_relative_to(root):
                return cache.samples(path.relative_to(root).as_posix())
        return None


def open_caches(
    corpus: Corpus, config: DataConfig, cache_dir: str | Path, sample_rate: int, clip_samples: int
) -> DataCaches:
    """Open (building where needed) the cache of every data folder (``roots``, ``extra_train``: each clip's
    window) and of every ``negatives`` folder (whole files), under ``cache_dir``.

    Raises:
        kws.data.cache.CacheError: the cache folder cannot be created or written.
    """
    clips: dict[Path, AudioCache] = {}
    for root in dict.fromkeys(Path(r).expanduser() for r in (*config.roots, *config.extra_train)):
        names = [f"{c.path.parent.name}/{c.path.name}" for c in corpus.clips if c.path.parent.parent == root]
        clips[root] = open_cache(cache_dir, root, names, CLIPS, sample_rate, clip_samples, _progress)
    files: dict[Path, AudioCache] = {}
    for root in dict.fromkeys(Path(r).expanduser() for r in config.negatives):
        names = [p.relative_to(root).as_posix() for p in negative_files(root)]
        files[root] = open_cache(cache_dir, root, names, FILES, sample_rate, clip_samples, _progress)
    caches = DataCaches(clips=clips, files=files, sample_rate=sample_rate, clip_samples=clip_samples)
    logger.info("audio caches in %s: %.1f MiB of decoded audio", cache_dir, caches.nbytes / 2**20)
    return caches


def load_split(
    examples: list[Example],
    corpus: Corpus,
    noises: list[np.ndarray],
    sample_rate: int,
    clip_samples: int,
    desc: str,
    caches: DataCaches | None = None,
    lazy: bool = False,
) -> SplitData:
    """Read every example of a split; unreadable files are skipped with a warning and counted.

    Args:
        caches: read the clips from these caches instead of the files (the same int16 samples).
        lazy: with ``caches``, leave the cached clips in the memory-mapped caches (``audio`` is a
            :class:`~kws.data.clip_rows.ClipRows`) instead of copying them into one array.
    """
    labels, silence, speakers, paths, skipped, words = [], [], [], [], [], []
    sources: dict[int, tuple[int, np.ndarray]] = {}  # id(cache audio) -> (source number, array)
    where: list[tuple[int, int]] = []  # (source, row) of each clip; source -1: ``in_memory``
    in_memory: list[np.ndarray] = []
    clip_seconds = clip_samples / sample_rate
    for ex in _progress(examples, len(examples), desc):
        if ex.path is None:
            if not noises:
                continue
            noise = noises[ex.noise_index % len(noises)]
            start = int(ex.noise_offset * max(len(noise) - clip_samples, 0))
            clip = fit_length(noise[start : start + clip_samples], clip_samples) * np.float32(ex.noise_gain)
            source = f"noise:{corpus.noise_files[ex.noise_index % len(noises)].name}@{start}"
            in_memory.append(float_to_int16(clip))
            where.append((-1, len(in_memory) - 1))
        else:
            try:
                hit = caches.lookup(ex) if caches is not None else None
                if isinstance(hit, tuple):
                    cache, row = hit
                    number, _ = sources.setdefault(id(cache.audio), (len(sources), cache.audio))
                    where.append((number, row))
                else:
                    if hit is None:
                        # Only the clip's window is read: a long file in a word folder costs one clip of memory,
                        # and a crop of a long non-keyword file (crop_offset >= 0) seeks to its window.
                        position = ex.crop_offset if ex.crop_offset >= 0 else 0.0
                        samples = load_audio(ex.path, sample_rate, max_seconds=clip_seconds, position=position)
                        hit = float_to_int16(fit_length(samples, clip_samples))
                    in_memory.append(hit)
                    where.append((-1, len(in_memory) - 1))
            except AudioError as exc:
                logger.warning("skipping %s", exc)
                skipped.append(str(ex.path))
                continue
            source = str(ex.path) if ex.crop_offset < 0 else f"{ex.path}@{ex.crop_offset:.3f}"
        labels.append(ex.label)
        silence.append(ex.path is None or ex.speaker == "noise")
        speakers.append(ex.speaker)
        paths.append(source)
        words.append(ex.word)
    if skipped:
        logger.warning("%d unreadable file(s) skipped in %s", len(skipped), desc)
    arrays = [array for _, array in sorted(sources.values(), key=lambda item: item[0])]
    memory = np.stack(in_memory) if in_memory else np.zeros((0, clip_samples), np.int16)
    number = np.asarray([len(arrays) if s < 0 else s for s, _ in where], np.int64)
    rows = np.asarray([r for _, r in where], np.int64)
    audio: np.ndarray | ClipRows = ClipRows([*arrays, memory], number, rows, clip_samples)
    if not (lazy and arrays):
        audio = memory if not arrays else np.asarray(audio)
    return SplitData(
        audio=audio,
        labels=np.asarray(labels, np.int64),
        silence=np.asarray(silence, bool),
        speakers=speakers,
        paths=paths,
        skipped=skipped,
        words=words,
    )


AUGMENT_STREAM = 0x6B7773
"""Tags the seeds of :class:`AugmentedBatches` (they never coincide with the permutation's ``[seed, epoch]``)."""


class AugmentedBatches:
    """The augmented training batches of one epoch in one process, each drawn from its own seeded generator.

    Batch ``i`` is ``augmenter.batch`` of the clips ``batches[i]`` with ``np.random.default_rng([seed, epoch,
    AUGMENT_STREAM, rank, i])``: the same whichever process computes it, so DataLoader workers (any number of
    them) give the same batches as the training process itself. A map-style dataset for ``torch.utils.data``
    (no torch needed here).

    Args:
        data: the training split.
        batches: int ``[batch]`` clip indices into ``data`` of each batch of the epoch.
        rank: this process's rank (0 in a single-process run).
    """

    def __init__(
        self,
        data: SplitData,
        augmenter: Augmenter,
        batches: list[np.ndarray],
        seed: int,
        epoch: int,
        rank: int = 0,
    ) -> None:
        self.data = data
        self.augmenter = augmenter
        self.batches = batches
        self.seed = seed
        self.epoch = epoch
        self.rank = rank

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(index, audio)``: int ``[batch]`` clip indices and float32 ``[batch, context + samples]`` audio."""
        idx = self.batches[i]
        rng = np.random.default_rng([self.seed, self.epoch, AUGMENT_STREAM, self.rank, i])
        audio = self.augmenter.batch(list(self.data.float_audio(idx)), list(self.data.silence[idx]), rng)
        return idx, audio


@dataclass
class PreparedData:
    """A run's labels, corpus, noises and loaded splits (``caches``: the decoded-audio caches they were read
    through, None when the files were read)."""

    labels: list[str]
    corpus: Corpus
    noises: list[np.ndarray]
    splits: dict[str, SplitData]
    summary: dict[str, object]
    caches: DataCaches | None = None


def prepare(
    config: DataConfig,
    sample_rate: int,
    clip_samples: int,
    seed: int,
    splits: tuple[str, ...],
    labels: list[str] | None = None,
    split_mode: str = "auto",
    cache_dir: str | Path | None = None,
    lazy: tuple[str, ...] = (),
) -> PreparedData:
    """Scan ``config.roots``, resolve the labels (or use the given ones) and load the requested splits.

    Args:
        cache_dir: read the clips through the decoded-audio caches in this folder (built where missing or stale;
            the same samples as reading the files); None: read the files.
        lazy: with ``cache_dir``, the splits to leave in the memory-mapped caches (see :func:`load_split`).
    """
    corpus = load_corpus(config, split_mode)
    labels = labels or resolve_labels(config.labels, corpus.words)
    noises = load_noises(corpus, sample_rate)
    caches = open_caches(corpus, config, cache_dir, sample_rate, clip_samples) if cache_dir is not None else None
    loaded: dict[str, SplitData] = {}
    summary: dict[str, object] = {"roots": list(config.roots), "layouts": list(corpus.layouts)}
    for split in splits:
        examples = build_split(corpus, labels, split, config, seed)
        data = load_split(
            examples, corpus, noises, sample_rate, clip_samples, f"loading {split}", caches, split in lazy
        )
        summary[split] = {**split_summary(examples, labels), "skipped": len(data.skipped)}
        loaded[split] = data
    silence_index = labels.index(SILENCE_LABEL)
    for data in loaded.values():
        data.silence |= data.labels == silence_index
    return PreparedData(labels=labels, corpus=corpus, noises=noises, splits=loaded, summary=summary, caches=caches)


def negative_recordings(prepared: PreparedData, sample_rate: int) -> list[np.ndarray]:
    """The whole training-half ``--negatives`` recordings, int16 ``[samples]`` each, any length (views of the
    memory-mapped ``files`` caches when the run reads through them, else read from the files; unreadable ones
    skipped with a warning). The training streams (:mod:`kws.train.streams`) take pieces of them at random
    offsets, so that over a run every frame of them is used, not only the 1 s crops of ``_unknown_``."""
    out = []
    for path in prepared.corpus.negatives:
        try:
            samples = prepared.caches.file_samples(path) if prepared.caches is not None else None
            if samples is None:
                samples = float_to_int16(load_audio(path, sample_rate))
        except AudioError as exc:
            logger.warning("skipping %s", exc)
            continue
        if len(samples):
            out.append(samples)
    return out


def speech_context_clips(
    prepared: PreparedData, sample_rate: int, limit: int, seed: int, tail_seconds: float = CONTEXT_TAIL_SECONDS
) -> list[np.ndarray]:
    """The ends (last ``tail_seconds``) of up to ``limit`` non-keyword training utterances (float32), for
    context augmentation (:meth:`kws.data.augment.Augmenter.context` prepends at most ``context_seconds`` of the
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
