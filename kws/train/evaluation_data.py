"""The clips to score a checkpoint on, read with the checkpoint's own rules: the one loader of ``kws evaluate``,
``kws export --data`` and ``kws bench``.

A split is read with the split rule the checkpoint's own training used (the official lists and hash, or the
salted speaker hash when a test archive was among its folders), whatever folders are given, so a clip the
training learnt from is never scored as ``test``. The checkpoint's labels and data rules (ratios, split sizes)
apply; its train-only folders (``extra_train``, ``negatives``) are dropped (:func:`evaluation_data_config`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kws.config import DataConfig, RunConfig
from kws.constants import SPLITS
from kws.data.layout import SPLIT_MODES, Corpus, DataError, auto_split_mode, detect_layout, load_corpus
from kws.data.splits import PreparedData, SplitData, prepare
from kws.errors import KWSError
from kws.model.checkpoint import run_config

logger = logging.getLogger(__name__)


class EvaluationError(KWSError):
    """The evaluation cannot run as asked (unwritable output, a split rule that contradicts the checkpoint)."""


def evaluation_split_mode(payload: dict[str, Any]) -> tuple[str | None, str]:
    """The split mode the checkpoint's training used, and where that comes from.

    Read from the data layouts the training recorded in the checkpoint (``data_summary["layouts"]``); for a
    checkpoint without them, from the layouts of its training folders if they are on this machine. ``None``
    when neither is available. The mode of the layouts is :func:`kws.data.layout.auto_split_mode`.
    """
    layouts = (payload.get("data_summary") or {}).get("layouts")
    if layouts:
        return auto_split_mode(layouts), "as in training, read from the checkpoint's data summary"
    try:
        roots = run_config(payload).data.roots
        if roots:
            layouts = [detect_layout(Path(r).expanduser()) for r in roots]
            return auto_split_mode(layouts), "as in training, from the layouts of the checkpoint's training folders"
    except KWSError:
        pass
    return None, "the checkpoint does not record how its training split the data"


def resolve_split_mode(payload: dict[str, Any], requested: str = "auto", split: str = "test") -> tuple[str, str]:
    """The split mode to read ``split`` with, and why (for reports).

    ``auto`` is the checkpoint's own rule (:func:`evaluation_split_mode`). An explicit mode that contradicts it
    is refused: it would put some of the clips the model was trained on into the scored split. With
    ``split="all"`` every clip is scored whatever its split, so any mode is accepted. A checkpoint that does not
    say falls back to kws.data.layout's ``auto`` rule on the given folders, with a warning (the mode returned is then
    ``"auto"``; the loaded ``Corpus.split_mode`` says which it became).

    Raises:
        EvaluationError: an unknown mode, or one that contradicts the checkpoint's training.
    """
    if requested not in ("auto", *SPLIT_MODES):
        raise EvaluationError(f"unknown split mode {requested!r} (use auto, {', '.join(SPLIT_MODES)})")
    trained, source = evaluation_split_mode(payload)
    if requested == "auto":
        if trained is not None:
            return trained, source
        logger.warning("%s: splitting with kws.data.layout's auto rule on the given folders", source)
        return "auto", f"kws.data.layout's auto rule on these folders: {source}"
    if trained is not None and requested != trained and split != "all":
        raise EvaluationError(
            f"--split-mode {requested} contradicts the checkpoint: its training split the speakers with "
            f"{trained} ({source}), so the {split} split read with {requested} would include clips it was "
            f"trained on; leave out --split-mode, or score every clip with --split all"
        )
    return requested, "given with --split-mode" + (", as in training" if requested == trained else "")


def evaluation_data_config(config: RunConfig, roots: Sequence[str | Path]) -> DataConfig:
    """The checkpoint's data rules (labels, ratios, split sizes) applied to ``roots`` alone.

    The training's train-only folders (``extra_train``) and non-keyword speech (``negatives``) are dropped: they
    never hold evaluation clips, and they need not exist on this machine.
    """
    return dataclasses.replace(config.data, roots=tuple(str(r) for r in roots), extra_train=(), negatives=())


@dataclass(frozen=True)
class EvaluationCorpus:
    """The folders to score, scanned with the checkpoint's rules (:func:`evaluation_corpus`).

    Attributes:
        config: the checkpoint's data rules on the given folders (:func:`evaluation_data_config`).
        corpus: every clip of the folders, split with ``split_mode``.
        split_mode: ``official`` or ``speaker-hash`` (``auto`` resolved).
        split_mode_how: where the split mode comes from (for reports).
    """

    config: DataConfig
    corpus: Corpus
    split_mode: str
    split_mode_how: str


def evaluation_corpus(
    payload: dict[str, Any], roots: Sequence[str | Path], split: str = "test", split_mode: str = "auto"
) -> EvaluationCorpus:
    """Scan ``roots`` as the checkpoint's training would have split them, without reading any audio (for callers
    that pick their own examples of the corpus, e.g. a class-balanced subset with ``kws.data.layout.build_split``).

    Raises:
        DataError: missing or unusable folders.
        EvaluationError: see :func:`resolve_split_mode`.
    """
    config = evaluation_data_config(run_config(payload), roots)
    mode, how = resolve_split_mode(payload, split_mode, split)
    corpus = load_corpus(config, mode)
    return EvaluationCorpus(config=config, corpus=corpus, split_mode=corpus.split_mode, split_mode_how=how)


@dataclass
class EvaluationData:
    """The clips to score and how they were chosen.

    Attributes:
        prepared: the loaded corpus, noises and each split of ``splits``.
        data: the requested split (every split, concatenated, for ``all``).
        split: ``train``, ``validation``, ``test`` or ``all``.
        split_mode: ``official`` or ``speaker-hash``.
        split_mode_how: where the split mode comes from (for reports).
    """

    prepared: PreparedData
    data: SplitData
    split: str
    split_mode: str
    split_mode_how: str


def load_evaluation_data(
    payload: dict[str, Any], roots: Sequence[str | Path], split: str = "test", split_mode: str = "auto"
) -> EvaluationData:
    """Load ``split`` of ``roots`` (int16 audio) as the checkpoint's training would have split them, with the
    checkpoint's labels, data rules and training seed.

    Raises:
        DataError: missing or unusable folders, or an empty split.
        EvaluationError: an unknown split; see also :func:`resolve_split_mode`.
    """
    if split not in (*SPLITS, "all"):
        raise EvaluationError(f"unknown split {split!r} (use {', '.join(SPLITS)} or all)")
    config = run_config(payload)
    mode, how = resolve_split_mode(payload, split_mode, split)
    splits = SPLITS if split == "all" else (split,)
    prepared = prepare(
        evaluation_data_config(config, roots),
        config.features.sample_rate,
        config.features.clip_samples,
        config.train.seed,
        splits,
        labels=list(payload["labels"]),
        split_mode=mode,
    )
    mode = prepared.corpus.split_mode
    data = concat_splits([prepared.splits[s] for s in splits])
    if len(data) == 0:
        raise DataError(f"no clips in the {split} split of {', '.join(map(str, roots))} (split mode {mode})")
    return EvaluationData(prepared=prepared, data=data, split=split, split_mode=mode, split_mode_how=how)


def concat_splits(parts: Sequence[SplitData]) -> SplitData:
    """One :class:`~kws.data.splits.SplitData` of several, in order (audio ``[clips, samples]`` concatenated)."""
    return SplitData(
        audio=np.concatenate([p.audio for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        silence=np.concatenate([p.silence for p in parts]),
        speakers=[s for p in parts for s in p.speakers],
        paths=[s for p in parts for s in p.paths],
        skipped=[s for p in parts for s in p.skipped],
        words=[w for p in parts for w in p.words],
    )
