"""What a training run reads: its splits checked and summarised, the augmenter and the loss built from them, and
each epoch's augmented batches."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from kws.config import DataConfig, RunConfig, TrainConfig
from kws.constants import UNKNOWN_LABEL
from kws.data.augment import Augmenter, room_bank
from kws.data.layout import unknown_words as layout_unknown_words
from kws.data.splits import AugmentedBatches, PreparedData, SplitData, speech_context_clips
from kws.errors import KWSError
from kws.model.network import UNKNOWN_OUTPUT
from kws.train.distributed import ShardedSampler
from kws.train.objective import Objective

logger = logging.getLogger("kws.train.loop")  # its messages are those of `kws train`

CONTEXT_SPEECH_CLIPS = 2000
"""Non-keyword utterances whose ends the context augmentation may prepend."""
SPLITS = ("train", "validation", "test")
"""The splits a run loads (train: lazily, in the memory-mapped caches)."""


def check_split(prepared: PreparedData, split: str, data: DataConfig) -> None:
    """Refuse a training or validation split without speech: nothing to learn from, or no way to pick the best
    checkpoint (its accuracy would be 0 every epoch and best.pt would stay the first epoch)."""
    s = prepared.summary.get(split)
    clips = s.get("clips", 0) if isinstance(s, dict) else 0
    speakers = s.get("speakers", 0) if isinstance(s, dict) else 0
    if len(prepared.splits[split]) and clips and speakers:
        return
    if split == "validation":
        hint = (
            f"add data with more speakers or raise --validation-percent (now {data.validation_percent:g}; "
            "official validation lists, where a dataset has them, take precedence)"
        )
    else:
        hint = "add data with more speakers, or lower --validation-percent/--testing-percent"
    raise KWSError(
        f"the {split} split is empty ({clips} clips, {speakers} speakers of {len(prepared.corpus.clips)} clips "
        f"found): {hint}"
    )


def log_summary(prepared: PreparedData) -> None:
    """One line per split: clips, speakers and clips per class."""
    for split in SPLITS:
        s = prepared.summary.get(split)
        if isinstance(s, dict):
            logger.info(
                "%s: %d clips, %d speakers, per class %s",
                split,
                s["clips"],
                s["speakers"],
                ", ".join(f"{k} {v}" for k, v in s["per_class"].items()),
            )


def make_objective(config: RunConfig, prepared: PreparedData, device: torch.device) -> Objective:
    """The loss of the run: class weights from the training split, and the teacher's soft labels if it has one."""
    tc, labels, train_data = config.train, prepared.labels, prepared.splits["train"]
    teacher_logits = None
    if tc.teacher:
        from kws.teacher.cache import load_soft_labels

        teacher_logits = load_soft_labels(tc.teacher, labels, train_data.paths)
        logger.info(
            "distilling from the teacher in %s (weight %g, temperature %g)",
            tc.teacher,
            tc.distill_weight,
            tc.distill_temperature,
        )
    embeddings = None
    if tc.teacher and tc.embed_distill_weight:
        from kws.teacher.cache import load_embedding_targets

        embeddings = load_embedding_targets(tc.teacher, train_data.paths)
        logger.info(
            "regressing the teacher's %d-d mean embeddings (weight %g)", embeddings.shape[1], tc.embed_distill_weight
        )
    words = config.model.unknown_words
    fine = train_data.fine_labels(labels, words) if words else None
    return Objective(
        tc, train_data.labels, len(labels), teacher_logits, device, fine, embeddings, config.model.output_size
    )


def unknown_words(config: RunConfig, prepared: PreparedData) -> tuple[str, ...]:
    """The unknown words with their own model output (``ModelConfig.unknown_words``): the saved ones (a resumed
    run, or a config that names them), else with ``--fine-unknowns`` every non-keyword word of the training split
    (:func:`kws.data.layout.unknown_words`), else none."""
    words = config.model.unknown_words
    if not words and config.train.fine_unknowns:
        words = layout_unknown_words(prepared.corpus, prepared.labels)
        if not words:
            logger.warning("--fine-unknowns: the training split has no unknown words; training without them")
    if words and prepared.labels[UNKNOWN_OUTPUT] != UNKNOWN_LABEL:
        raise KWSError(f"--fine-unknowns needs {UNKNOWN_LABEL} as label {UNKNOWN_OUTPUT}, got {prepared.labels}")
    if words:
        train = prepared.splits["train"]
        counts = np.bincount(train.fine_labels(prepared.labels, words), minlength=len(prepared.labels) + len(words))
        logger.info(
            "fine-grained unknowns: %d words (training clips: %s)",
            len(words),
            ", ".join(f"{w} {c}" for w, c in zip(words, counts[len(prepared.labels) :], strict=True)),
        )
    return words


def make_augmenter(config: RunConfig, prepared: PreparedData) -> Augmenter:
    """The run's augmenter, with the noises and (if context augmentation is on) the speech it may prepend."""
    a, rate = config.augment, config.features.sample_rate
    context = (
        speech_context_clips(prepared, rate, CONTEXT_SPEECH_CLIPS, config.train.seed, max(1.0, a.context_seconds))
        if a.context_prob
        else []
    )
    rooms = room_bank(a, rate, config.train.seed)
    if rooms:
        from kws.data.reverb import method

        logger.info("reverberation: %d simulated rooms (%s), on %g of the clips", len(rooms), method(), a.reverb_prob)
    return Augmenter(a, rate, prepared.noises, context, rooms)


def _as_is(batch: Any) -> Any:
    """DataLoader ``collate_fn`` that keeps a dataset item (numpy arrays) as it is."""
    return batch


def epoch_batches(
    data: SplitData,
    augmenter: Augmenter,
    sampler: ShardedSampler,
    config: TrainConfig,
    epoch: int,
    in_process: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's ``(clip indices [batch], augmented float32 audio [batch, samples])`` of one epoch.

    ``in_process`` (a single process without workers): one generator, seeded ``[seed, epoch]``, draws the order
    and then every batch's augmentation, as ``kws train`` always has. Otherwise each batch is augmented from its
    own seed (:class:`~kws.data.splits.AugmentedBatches`), in ``config.num_workers`` DataLoader workers or here.
    """
    if in_process:
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(data))
        for b in range(sampler.steps_per_epoch):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            yield idx, augmenter.batch(list(data.float_audio(idx)), list(data.silence[idx]), rng)
        return
    batches = AugmentedBatches(data, augmenter, sampler.batches(epoch), config.seed, epoch, sampler.rank)
    if not config.num_workers:
        for i in range(len(batches)):
            yield batches[i]
        return
    from torch.utils.data import DataLoader

    yield from DataLoader(batches, batch_size=None, num_workers=config.num_workers, collate_fn=_as_is)
