"""The training loop of ``kws train`` (its command line: :mod:`kws.train.cli`): :func:`train` trains or resumes a run.

Each epoch draws seeded, augmented batches (:mod:`kws.train.batches`), takes one AdamW step per batch under a
warm-up + cosine schedule (gradient clipping, optional fp16/bf16 autocast on CUDA, an exponential moving
average of the weights), validates the EMA weights on the whole validation split and has rank 0 write the
epoch's checkpoints and metrics (:mod:`kws.train.run_folder`). After the last epoch the best checkpoint is evaluated
on the test split. With ``StreamTrainConfig.weight`` > 0 every step adds the loss of a batch of long training
streams scored frame by frame on the runtime's pooled posteriors (:mod:`kws.train.stream_loss`); ``--init-from``
starts a new run from a trained checkpoint's weights. Under torchrun the same loop runs in every process with
DistributedDataParallel (:mod:`kws.train.distributed`); an exact ``--resume`` restores weights, optimizer, schedule
and step counter.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kws.config import RunConfig, TrainConfig, to_dict
from kws.data.splits import SplitData, prepare
from kws.errors import ConfigError, KWSError
from kws.model.checkpoint import WEIGHTS_KEY, CheckpointError, checkpoint_weights, load_weights
from kws.model.features import spec_augment
from kws.model.network import KWSModel
from kws.train import batches as train_data
from kws.train import distributed, run_folder
from kws.train.evaluate import predict
from kws.train.objective import Objective
from kws.train.run_folder import BEST, LAST
from kws.train.stream_loss import (
    STREAM_SUMS,
    StreamTraining,
    log_streams,
    make_streams,
    mine_hard_negatives,
    stream_loss,
    stream_record,
    validate_streams,
)
from kws.train.streams import step_rng

logger = logging.getLogger(__name__)

NORMALIZATION_CLIPS = 2000
"""Training clips (a seeded sample) whose MFCC statistics set the model's input normalisation."""
AUX_KEY = "objective_weights"
"""Checkpoint entry of the objective's own trained weights (the embedding regressor), for ``--resume``."""
PRECISIONS = ("fp32", "bf16", "fp16")
"""--precision: float32, or autocast to bfloat16 / float16 (with loss scaling) for the LSTM on CUDA."""


def train(
    config: RunConfig,
    out_dir: Path,
    resume: bool = False,
    device_name: str = "auto",
    threads: int = 0,
    cache_dir: str | Path | None = None,
    precision: str = "fp32",
    require_distributed: bool = False,
) -> Path:
    """Train (or resume) a run in ``out_dir``; returns the path of the best checkpoint.

    The run folder is locked for the whole run (a second ``train`` into it fails at once), and temporaries
    that an earlier killed run left behind are removed first. Under torchrun every process calls this
    (:mod:`kws.train.distributed`): rank 0 checks and locks the folder, reads ``last.pt`` and alone writes files.

    Args:
        config: the run's configuration (ignored with ``resume``: the saved one is used; ``kws train
            --resume`` refuses flags that contradict it).
        threads: CPU threads for torch (0: every core, shared by the processes of a distributed run).
        cache_dir: read the clips through the decoded-audio caches in this folder (:mod:`kws.data.cache`; the same
            samples as the files); None: read the files.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast of the model on CUDA (validation stays float32).
        require_distributed: refuse to run without torchrun's environment.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0: every core), got {threads}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    out_dir = Path(out_dir)
    with distributed.session(device_name, required=require_distributed) as context, contextlib.ExitStack() as held:
        if precision != "fp32" and context.device.type != "cuda":
            raise ConfigError(f"--precision {precision} is for CUDA; on {context.device} use --precision fp32")
        state, config = context.lead(lambda: run_folder.open_run(config, out_dir, resume, context.world_size, held))
        return _train_locked(config, state, out_dir, context, threads, cache_dir, precision)


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
    """The learning-rate factor of each step: linear warm-up over ``warmup_epochs``, then a cosine to 0."""
    total = config.epochs * steps_per_epoch
    warmup = max(int(config.warmup_epochs * steps_per_epoch), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _accuracy(
    model: KWSModel, audio: np.ndarray, labels: np.ndarray, context: distributed.Context | None = None
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of whole-clip predictions of int16 clips ``[clips, samples]``.

    In a distributed run each rank predicts its share (``rank::world_size``) and the probabilities are gathered,
    so every rank gets the figures of the whole split.
    """
    if context is not None and context.distributed:
        mine = predict(model, audio[context.rank :: context.world_size])
        probs = context.gather_shards(mine, len(labels))
    else:
        probs = predict(model, audio)
    picked = probs[np.arange(len(labels)), labels]
    return float((probs.argmax(1) == labels).mean()), float(-np.log(np.maximum(picked, 1e-12)).mean())


@torch.no_grad()
def _update_ema(ema: KWSModel, model: KWSModel, decay: float, step: int) -> None:
    """``ema <- d * ema + (1 - d) * model`` with ``d`` warming up from 0.1 to ``decay`` over the first steps."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - d)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _new_model(config: RunConfig, device: torch.device) -> KWSModel:
    """The freshly initialised model on ``device`` (seeded), or a one-line error if it does not fit in memory."""
    torch.manual_seed(config.train.seed)
    try:
        return KWSModel(config.features, config.model).to(device)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        raise KWSError(
            f"not enough memory for an LSTM of {config.model.num_layers} x {config.model.hidden_size} units "
            f"on {device}; use a smaller --hidden-size or --layers"
        ) from None


@dataclass
class _Training:
    """What the loop updates: the model (``net``: the same, wrapped for DDP), its EMA copy, the optimiser, and the
    objective's own weights (``aux``: the embedding regressor of ``--embed-distill-weight``; never exported)."""

    model: KWSModel
    ema: KWSModel | None
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    aux: nn.Module | None = None

    @property
    def scored(self) -> KWSModel:
        """The weights that are validated, kept as the checkpoint's ``model`` and exported."""
        return self.ema if self.ema is not None else self.model

    def checkpoint(
        self,
        config: RunConfig,
        labels: list[str],
        epoch: int,
        step: int,
        best: float,
        history: list[dict[str, Any]],
        summary: dict[str, Any],
        context: distributed.Context,
    ) -> dict[str, Any]:
        """The checkpoint payload after ``epoch`` (1-based): ``eval_model`` holds the weights that are validated and
        exported (:attr:`scored`), ``train_model`` the trained ones, and the optimizer, scheduler (and fp16 loss
        scaler) states let ``--resume`` continue exactly."""
        payload = {
            "config": to_dict(config),
            "labels": labels,
            WEIGHTS_KEY: self.scored.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_accuracy": best,
            "history": history,
            "data_summary": summary,
            "train_model": self.model.state_dict(),
            "world_size": context.world_size,  # a resume must have as many processes
        }
        if self.scaler.is_enabled():
            payload["scaler"] = self.scaler.state_dict()
        if self.aux is not None:
            payload[AUX_KEY] = self.aux.state_dict()
        return payload

    def restore(self, state: dict[str, Any], last_path: Path) -> None:
        """Load the weights and optimiser state of a resumed run's ``last.pt`` payload."""
        load_weights(self.model, state.get("train_model", checkpoint_weights(state)), str(last_path))
        if self.ema is not None:
            load_weights(self.ema, checkpoint_weights(state), str(last_path))
        try:
            if self.aux is not None:
                self.aux.load_state_dict(state[AUX_KEY])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler.is_enabled() and isinstance(state.get("scaler"), dict):
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            raise CheckpointError(
                f"{last_path}: the optimizer state cannot be restored ({type(exc).__name__})"
            ) from None


def _train_locked(
    config: RunConfig,
    state: dict[str, Any] | None,
    out_dir: Path,
    context: distributed.Context,
    threads: int,
    cache_dir: str | Path | None,
    precision: str,
) -> Path:
    device = context.device
    if device.type == "cpu":
        torch.set_num_threads(threads or context.default_threads())
    fc, tc = config.features, config.train
    prepared = prepare(
        config.data, fc.sample_rate, fc.clip_samples, tc.seed, train_data.SPLITS, cache_dir=cache_dir, lazy=("train",)
    )
    labels = prepared.labels
    if state is not None and list(state["labels"]) != labels:
        raise KWSError("the data's labels differ from the checkpoint's; resume with the same --data")
    train_split, val_split = prepared.splits["train"], prepared.splits["validation"]
    train_data.check_split(prepared, "train", config.data)
    train_data.check_split(prepared, "validation", config.data)
    train_data.log_summary(prepared)
    words = train_data.unknown_words(config, prepared)  # --fine-unknowns: one output per unknown word
    config = replace(config, model=replace(config.model, n_labels=len(labels), n_inputs=fc.n_mfcc, unknown_words=words))

    model = _new_model(config, device)
    if state is None and tc.init_from:
        run_folder.init_weights(model, config, labels)  # its input normalisation too
    elif state is None:
        rng = np.random.default_rng(tc.seed)
        idx = rng.choice(len(train_split), min(len(train_split), NORMALIZATION_CLIPS), replace=False)
        model.frontend.fit_normalization(torch.from_numpy(train_split.float_audio(np.sort(idx))).to(device))
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay else None
    objective = train_data.make_objective(config, prepared, device)
    if objective.regressor is not None and context.distributed:
        raise ConfigError("--embed-distill-weight is for a single process; drop it under torchrun")
    params = list(model.parameters()) + objective.parameters()
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    sampler = distributed.ShardedSampler(len(train_split), tc.batch_size, tc.seed, context.rank, context.world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc, sampler.steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    run = _Training(model, ema, model, optimizer, scheduler, scaler, objective.regressor)
    history: list[dict[str, Any]] = []
    start_epoch, step, best = 0, 0, -1.0
    if state is not None:
        run.restore(state, out_dir / LAST)
        start_epoch, step, best, history = state["epoch"], state["step"], state["best_accuracy"], state["history"]

    augmenter = train_data.make_augmenter(config, prepared)
    streams = make_streams(config, prepared)  # None unless the stream loss is on
    run.net = context.wrap(model)  # what the batches go through; checkpoints keep `model`'s own state dict
    in_process = not context.distributed and not tc.num_workers
    logger.info(
        "model: %d parameters, %d labels; %d steps/epoch on %s%s",
        sum(p.numel() for p in model.parameters()),
        len(labels),
        sampler.steps_per_epoch,
        device,
        f" x {context.world_size} processes ({context.backend})" if context.distributed else "",
    )
    started = time.monotonic()
    for epoch in range(start_epoch, tc.epochs):
        hard = mine_hard_negatives(run.scored, streams, config, epoch) if streams is not None else {}
        batches = train_data.epoch_batches(train_split, augmenter, sampler, tc, epoch, in_process)
        epoch_started = time.monotonic()
        step, loss_sum, correct, seen, stream_sums = _train_epoch(
            run, config, train_split, batches, (objective, streams), epoch, step, context, precision, sampler
        )
        train_seconds = time.monotonic() - epoch_started
        val_acc, val_loss = _accuracy(run.scored, val_split.audio, val_split.labels, context)  # not empty: checked
        out_of_time = bool(tc.max_minutes and (time.monotonic() - started) / 60 >= tc.max_minutes)
        sums = context.all_sum(np.array([loss_sum, correct, seen, train_seconds, out_of_time], np.float64))
        if context.distributed:  # the whole run's figures; a single process keeps its own numbers exactly
            loss_sum, correct, seen = float(sums[0]), int(sums[1]), int(sums[2])
        record = {
            "epoch": epoch + 1,
            "step": step,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "minutes": (time.monotonic() - started) / 60,
            "clips_per_second": seen / max(float(sums[3]) / context.world_size, 1e-9),
        }
        record |= hard
        if streams is not None:
            record |= stream_record("stream", context.all_sum(stream_sums) if context.distributed else stream_sums)
            record |= stream_record("val_stream", validate_streams(run.scored, streams, device))
        history.append(record)
        logger.info(
            "epoch %d/%d: loss %.3f, train acc %.1f%%, val acc %.2f%% (%.1f min, %.0f clips/s)",
            epoch + 1,
            tc.epochs,
            record["train_loss"],
            100 * record["train_accuracy"],
            100 * val_acc,
            record["minutes"],
            record["clips_per_second"],
        )
        if streams is not None:
            log_streams(record)
        context.check_replicas(f"after epoch {epoch + 1}", model, *([ema] if ema is not None else []))
        improved = val_acc > best
        best = max(best, val_acc)
        if context.is_main:
            payload = run.checkpoint(config, labels, epoch + 1, step, best, history, prepared.summary, context)
            run_folder.save_epoch(out_dir, payload, improved)
        if (tc.max_steps and step >= tc.max_steps) or sums[4]:
            logger.info("stopping early: %s limit reached", "step" if tc.max_steps and step >= tc.max_steps else "time")
            break
    if context.is_main:
        run_folder.finish(out_dir, history, prepared, device)
    return out_dir / BEST


def _train_epoch(
    run: _Training,
    config: RunConfig,
    data: SplitData,
    batches: Generator[tuple[np.ndarray, np.ndarray]],
    objectives: tuple[Objective, StreamTraining | None],
    epoch: int,
    step: int,
    context: distributed.Context,
    precision: str,
    sampler: distributed.ShardedSampler,
) -> tuple[int, float, int, int, np.ndarray]:
    """One epoch of optimiser steps over ``batches`` (stopping early at ``max_steps``), with the clip loss and
    (when not None) the stream loss.

    Returns:
        the step count after the epoch, and this process's summed (clip) loss, correct predictions and clips
        seen, and its stream sums (:func:`~kws.train.stream_loss.stream_record`; zeros without the stream loss).
    """
    from tqdm import tqdm

    tc, a, device, model = config.train, config.augment, context.device, run.model
    objective, streams = objectives
    clip_frames = config.features.num_frames(config.features.clip_samples)
    model.train()
    torch.manual_seed(distributed.rank_seed(tc.seed * 100_003 + epoch, context.rank))
    gen = torch.Generator().manual_seed(distributed.rank_seed(tc.seed * 100_019 + epoch, context.rank))
    loss_sum, correct, seen = 0.0, 0, 0
    stream_sums = np.zeros(STREAM_SUMS, np.float64)
    captured: list[torch.Tensor] = []  # the last LSTM layer's outputs, for the embedding term
    hook = (
        model.lstm.register_forward_hook(lambda _module, _inputs, outputs: captured.append(outputs[0]))
        if objective.regressor is not None
        else None
    )
    bar = tqdm(
        batches,
        total=sampler.steps_per_epoch,
        desc=f"epoch {epoch + 1}/{tc.epochs}",
        leave=False,
        mininterval=1.0,
        disable=context.progress_disable,
    )
    for idx, audio in bar:
        y = torch.from_numpy(data.labels[idx]).to(device)
        feats = model.frontend(torch.from_numpy(audio).to(device))  # float32 features, also under autocast
        if a.time_masks or a.freq_masks:
            mask = spec_augment(
                torch.ones(feats.shape), a.time_masks, a.time_mask_frames, a.freq_masks, a.freq_mask_bins, gen
            )
            feats = feats * mask.to(device)
        captured.clear()
        with _autocast(device, precision):
            frames = run.net(feats, fine=True)[0][:, -clip_frames:]  # with unknown words: their outputs too
        logits, fine = model.pool_fine(frames.float())
        hidden = captured[0][:, -clip_frames:].float().mean(1) if captured else None
        loss = objective(logits, y, idx, fine, hidden)
        total = loss
        if streams is not None:
            rng = step_rng(tc.seed, context.rank, step)
            extra, sums = stream_loss(model, streams, rng, _autocast(device, precision))
            total = loss + config.stream.weight * extra
            stream_sums += sums
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(total).backward()
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        step += 1
        if run.ema is not None:
            _update_ema(run.ema, model, tc.ema_decay, step)
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(idx)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        if tc.max_steps and step >= tc.max_steps:
            break
    bar.close()
    if hook is not None:
        hook.remove()
    batches.close()  # ends the DataLoader's workers of a partial epoch
    return step, loss_sum, correct, seen, stream_sums
