"""The stream loss of a run (``StreamTrainConfig.weight`` > 0): what it needs (:func:`make_streams`), each step's
loss on a batch of training streams (:mod:`kws.train.streams`, :class:`~kws.train.objective.StreamObjective`), the
same figures on fixed validation streams, and the metrics ``metrics.jsonl`` records of them."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from kws.config import RunConfig
from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.data.splits import PreparedData, negative_recordings
from kws.model.network import KWSModel
from kws.train.hard_negatives import epoch_fraction, mine
from kws.train.objective import STREAM_FIGURES, StreamObjective
from kws.train.streams import STREAM_SEED_TAG, StreamBuilder

logger = logging.getLogger("kws.train.loop")  # its messages are those of `kws train`

VALIDATION_STREAMS = 16
"""Fixed streams built from the validation split (without negatives: those are all in training or held out for
the bench) on which every epoch measures the stream figures of the validated weights."""
STREAM_SUMS = 2 + len(STREAM_FIGURES)
"""Length of the stream sums: ``[loss, steps, *STREAM_FIGURES]``."""


@dataclass(frozen=True)
class StreamTraining:
    """What the stream loss needs: the builder of each step's training streams, the loss, and the fixed
    validation streams (float32 audio ``[VALIDATION_STREAMS, samples]``, int64 targets ``[.., frames]``)."""

    builder: StreamBuilder
    objective: StreamObjective
    validation_audio: np.ndarray
    validation_targets: np.ndarray


def make_streams(config: RunConfig, prepared: PreparedData) -> StreamTraining | None:
    """The stream loss's inputs, or None when it is off (``config.stream.weight`` 0: nothing is built or drawn)."""
    sc = config.stream
    if not sc.weight:
        return None
    labels, features, pooling = prepared.labels, config.features, config.model.pooling
    negatives = negative_recordings(prepared, features.sample_rate)
    train = prepared.splits["train"]
    builder = StreamBuilder(sc, features, pooling, train, labels, negatives, prepared.noises)
    validation = StreamBuilder(
        sc, features, pooling, prepared.splits["validation"], labels, [], prepared.noises
    ).batch_of(VALIDATION_STREAMS, np.random.default_rng([config.train.seed, STREAM_SEED_TAG]))
    logger.info(
        "training streams: %d x %g s per step (weight %g) from %d keyword and %d unknown clips and %d negative "
        "recordings (%.1f min)",
        sc.batch,
        sc.seconds,
        sc.weight,
        len(builder.keyword_rows),
        len(builder.unknown_rows),
        len(negatives),
        sum(len(n) for n in negatives) / features.sample_rate / 60,
    )
    objective = StreamObjective(builder.grid.pool_frames, labels.index(SILENCE_LABEL), labels.index(UNKNOWN_LABEL))
    return StreamTraining(builder, objective, *validation)


def stream_loss(
    model: KWSModel, streams: StreamTraining, rng: np.random.Generator, autocast: contextlib.AbstractContextManager
) -> tuple[torch.Tensor, np.ndarray]:
    """The stream loss of one optimiser step: a batch of streams drawn from ``rng`` (seeded by the step), each run
    from the zero state over its whole length; and its sums (``[loss, 1, *STREAM_FIGURES]``).

    The model itself runs it, not a DDP wrapper: DDP allows one forward per backward, and the gradients of both
    losses reach each parameter in the same backward, so they are reduced together.

    Args:
        autocast: entered around the LSTM (the front end and the loss stay float32).
    """
    audio, targets = streams.builder.batch(rng)
    device = next(model.parameters()).device
    feats = model.frontend(torch.from_numpy(audio).to(device))
    with autocast:
        frames = model(feats)[0]
    loss, figures = streams.objective(frames.float(), torch.from_numpy(targets).to(device))
    return loss, np.array([loss.item(), 1, *(figures[k] for k in STREAM_FIGURES)], np.float64)


@torch.no_grad()
def validate_streams(model: KWSModel, streams: StreamTraining, device: torch.device) -> np.ndarray:
    """The stream sums of ``model`` (put in eval mode) on the fixed validation streams."""
    model.eval()
    frames = model(model.frontend(torch.from_numpy(streams.validation_audio).to(device)))[0]
    loss, figures = streams.objective(frames, torch.from_numpy(streams.validation_targets).to(device))
    return np.array([loss.item(), 1, *(figures[k] for k in STREAM_FIGURES)], np.float64)


def mine_hard_negatives(model: KWSModel, streams: StreamTraining, config: RunConfig, epoch: int) -> dict[str, float]:
    """Mine this epoch's hard negatives with ``model`` (the validated weights; put in eval mode) over the builder's
    negative recordings and hand them to the builder (:mod:`kws.train.hard_negatives`); the figures
    ``metrics.jsonl`` records of it (``hard_negatives``: spots, ``hard_per_hour``: spots per hour of the
    recordings, ``hard_fraction``: this epoch's share). Off (``hard_fraction`` 0 or no recordings): nothing is
    mined and nothing recorded."""
    sc, builder = config.stream, streams.builder
    fraction = epoch_fraction(sc.hard_fraction, epoch, config.train.epochs)
    if not fraction or not builder.negatives:
        return {}
    keyword = np.ones(builder.n_labels, bool)
    keyword[[builder.silence_index, builder.unknown_index]] = False
    rate = config.features.sample_rate
    spots = mine(model, builder.negatives, builder.grid, keyword, rate, sc.hard_threshold)
    builder.use_hard(spots.source, spots.position, fraction)
    hours = sum(len(n) for n in builder.negatives) / rate / 3600
    logger.info(
        "hard negatives: %d spots over %.2f (%.1f per hour of the %.2f h of negatives); %.0f%% of negative pieces",
        len(spots),
        sc.hard_threshold,
        len(spots) / hours,
        hours,
        100 * builder.hard_fraction,
    )
    return {"hard_negatives": len(spots), "hard_per_hour": len(spots) / hours, "hard_fraction": builder.hard_fraction}


def stream_record(prefix: str, sums: np.ndarray) -> dict[str, float]:
    """The metrics of stream sums ``[loss, steps, *STREAM_FIGURES]``: ``PREFIX_loss`` (mean per step),
    ``PREFIX_false_frames`` (share of the NEGATIVE frames with a keyword posterior over
    :data:`~kws.train.objective.FALSE_POSTERIOR`) and ``PREFIX_keyword_accuracy`` (of the keyword frames)."""
    figures = dict(zip(STREAM_FIGURES, sums[2:], strict=True))
    return {
        f"{prefix}_loss": float(sums[0] / max(sums[1], 1)),
        f"{prefix}_false_frames": float(figures["false_frames"] / max(figures["negative_frames"], 1)),
        f"{prefix}_keyword_accuracy": float(figures["keyword_correct"] / max(figures["keyword_frames"], 1)),
    }


def log_streams(record: dict[str, float]) -> None:
    """One line of an epoch's stream metrics (:func:`stream_record` of ``stream`` and ``val_stream``)."""
    logger.info(
        "  streams: loss %.3f, false frames %.2f%%, keyword frames %.1f%% (validation: %.3f, %.2f%%, %.1f%%)",
        record["stream_loss"],
        100 * record["stream_false_frames"],
        100 * record["stream_keyword_accuracy"],
        record["val_stream_loss"],
        100 * record["val_stream_false_frames"],
        100 * record["val_stream_keyword_accuracy"],
    )
