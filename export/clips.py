"""The clips an export runs its models on: real labelled clips (``--data``, ``--calibration``) or synthetic ones.

Real clips are read with the split rule of the checkpoint's own training (:mod:`kws.train.evaluation_data`, shared
with ``kws evaluate`` and ``kws bench``), so the accuracy columns never score a clip the model was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kws.constants import SPLITS
from kws.data.audio import int16_to_float
from kws.data.layout import DataError, build_split, detect_layout
from kws.export.options import ExportOptions, Source
from kws.export.synthetic import speech_like_clips
from kws.model.checkpoint import run_config
from kws.train.evaluation_data import evaluation_corpus

logger = logging.getLogger("kws.export.pipeline")  # the name kws export's log lines have always had

PARITY_CLIPS = 24
"""Clips in the float parity and streaming checks (real clips when a data folder is given)."""

SYNTHETIC_SEED = 1234

CALIBRATION_SPLIT = "train"
"""The split of ``--calibration`` folders whose clips calibrate static quantization."""


@dataclass(frozen=True)
class EvalSet:
    """Labelled (or unlabelled) float32 clips ``[n, clip_samples]``."""

    audio: np.ndarray
    labels: np.ndarray | None
    source: str


def check_roots(roots: Sequence[Path]) -> None:
    """Each folder exists and is a Speech Commands folder (DataError naming the problem otherwise)."""
    for root in roots:
        detect_layout(root)


def _names(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def load_clips(
    payload: dict[str, Any],
    roots: Sequence[Path],
    split: str,
    limit: int,
    seed: int,
    split_mode: str = "auto",
    fallback: bool = False,
) -> EvalSet:
    """Labelled clips of ``split`` (``train``/``validation``/``test``/``all``) of Speech Commands folders.

    The folders are scanned by the shared evaluation loader (:func:`kws.train.evaluation_data.evaluation_corpus`: the
    checkpoint's data rules and labels, words outside them ``_unknown_``, and the split rule of the checkpoint's
    own training); with ``limit=0`` the clips are those of :func:`kws.train.evaluation_data.load_evaluation_data`.
    With ``limit > 0`` at most ``limit`` clips are kept, spread evenly over the classes (seeded), and only
    those are read (calibration: 200 clips of a training split of tens of thousands).

    Args:
        fallback: if ``split`` is empty, use every split (calibration clips need not be held out) and say so.

    Raises:
        DataError: no clips (of ``split``, unless ``fallback``).
    """
    from kws.data.splits import load_noises, load_split

    config = run_config(payload)
    labels = list(payload["labels"])
    scanned = evaluation_corpus(payload, roots, split, split_mode)
    corpus, data_config, mode = scanned.corpus, scanned.config, scanned.split_mode
    splits = SPLITS if split == "all" else (split,)
    examples = [e for s in splits for e in build_split(corpus, labels, s, data_config, seed)]
    used = split
    if not examples and fallback and split != "all":
        logger.warning("%s hold no %s clips of these labels; using every split", _names(roots), split)
        examples = [e for s in SPLITS for e in build_split(corpus, labels, s, data_config, seed)]
        used = "every split"
    if not examples:
        hint = "" if split == "all" else " (--split all scores every clip)"
        raise DataError(f"{_names(roots)} hold no {split} clips of the labels {', '.join(labels)}{hint}")
    if 0 < limit < len(examples):
        rng = np.random.default_rng(seed)
        by_label: dict[int, list[int]] = {}
        for i in rng.permutation(len(examples)):
            by_label.setdefault(examples[i].label, []).append(int(i))
        order = [i for group in zip(*_padded(list(by_label.values())), strict=True) for i in group if i >= 0]
        examples = [examples[i] for i in sorted(order[:limit])]
    noises = load_noises(corpus, config.features.sample_rate) if any(e.path is None for e in examples) else []
    data = load_split(
        examples,
        corpus,
        noises,
        config.features.sample_rate,
        config.features.clip_samples,
        desc=f"reading {split} clips",
    )
    if len(data) == 0:
        raise DataError(f"no readable clips in {_names(roots)}")
    rule = "" if split == "all" else f", split mode {mode}"
    return EvalSet(int16_to_float(data.audio), data.labels, f"{_names(roots)} ({used}, {len(data)} clips{rule})")


def _padded(groups: list[list[int]]) -> list[list[int]]:
    longest = max(len(g) for g in groups)
    return [g + [-1] * (longest - len(g)) for g in groups]


def synthetic_clips(clip_samples: int, sample_rate: int, count: int, seed: int = SYNTHETIC_SEED) -> np.ndarray:
    """float32 ``[count, clip_samples]``: speech-like words over a recording noise floor, background noise and
    zero-padded short recordings (:mod:`kws.export.synthetic`), the parity clips when no real clips are given."""
    return speech_like_clips(clip_samples, sample_rate, count, seed)


def load_calibration(source: Source, options: ExportOptions) -> EvalSet:
    """The ``--calibration`` clips: at most ``calibration_clips`` of their training split (else of every split)."""
    return load_clips(
        source.payload,
        options.calibration,
        CALIBRATION_SPLIT,
        options.calibration_clips,
        source.seed,
        options.split_mode,
        fallback=True,
    )


@dataclass(frozen=True)
class ExportClips:
    """The clips of one checked export.

    Attributes:
        parity: float32 ``[<= PARITY_CLIPS, clip_samples]``: the clips of the parity and streaming checks (spread
            over the ``--data`` clips, else the ``--calibration`` clips, else synthetic).
        parity_source: where they come from (for the log).
        eval_set: the ``--data`` clips that measure accuracy, or None.
        calibration: the ``--calibration`` clips, or None.
    """

    parity: np.ndarray
    parity_source: str
    eval_set: EvalSet | None
    calibration: EvalSet | None


def load_export_clips(source: Source, options: ExportOptions) -> ExportClips:
    """Read the ``--data`` and ``--calibration`` clips and pick the parity clips among them (or make them)."""
    eval_set = (
        load_clips(source.payload, options.data, options.split, options.eval_clips, source.seed, options.split_mode)
        if options.data
        else None
    )
    calib_set = load_calibration(source, options) if options.calibration else None
    real = eval_set if eval_set is not None else calib_set
    features = source.config.features
    if real is not None:
        parity = real.audio[np.unique(np.linspace(0, len(real.audio) - 1, PARITY_CLIPS).round().astype(int))]
        parity_source = real.source
    else:
        parity = synthetic_clips(features.clip_samples, features.sample_rate, PARITY_CLIPS)
        parity_source = "synthetic speech-like clips"
    logger.info("parity clips: %s", parity_source)
    return ExportClips(parity, parity_source, eval_set, calib_set)
