"""Train a stacked-LSTM keyword model on Speech Commands.

Reads one or more Speech Commands folders (full dataset v0.01/v0.02 and/or the 12-class test archive),
trains with seeded on-the-fly augmentation (time shift, speed, gain, background noise, preceding context,
SpecAugment), validates every epoch, keeps the best checkpoint and finally evaluates it on the test split.

Writes to --out: last.pt (for --resume), best.pt (the model to export), metrics.jsonl, curves.png,
test.json and test_confusion.png. The whole run configuration is saved in every checkpoint.

Several GPUs (or CPU processes, or machines): `torchrun --nproc_per_node N -m kws train ...` trains one model with
DistributedDataParallel (NCCL on CUDA, gloo on CPU); add `--nnodes M --rdzv-backend c10d --rdzv-endpoint
HOST:PORT` on every machine for several. --batch-size is per process (the global batch is N times larger); each
epoch's shuffled order is shared by all processes and split between them; rank 0 alone writes files and logs, and
its checkpoints are those of a single process (--resume them with the same number of processes). The clips are
read through a decoded-audio cache (--cache) shared by all processes and later runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kws import distributed
from kws.augment import Augmenter
from kws.cache import default_cache_dir
from kws.checkpoint import (
    CheckpointError,
    checkpoint_labels,
    load_checkpoint,
    load_weights,
    lock_folder,
    model_from_checkpoint,
    run_config,
    save_checkpoint,
)
from kws.config import (
    MAX_HIDDEN_SIZE,
    MAX_LAYERS,
    MAX_SEED,
    AugmentConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    to_dict,
)
from kws.dataset import AugmentedBatches, PreparedData, SplitData, prepare, speech_context_clips
from kws.errors import KWSError
from kws.evaluate import evaluate_split, format_report, predict, write_report
from kws.features import spec_augment
from kws.io import atomic_write, clean_stale_temporaries, ensure_writable_dir
from kws.model import KWSModel
from kws.objective import Objective

logger = logging.getLogger(__name__)

NORMALIZATION_CLIPS = 2000
CONTEXT_SPEECH_CLIPS = 2000
LAST, BEST = "last.pt", "best.pt"
PRECISIONS = ("fp32", "bf16", "fp16")
"""--precision: float32, or autocast to bfloat16 / float16 (with loss scaling) for the LSTM on CUDA."""
OUTPUTS = (LAST, BEST, "metrics.jsonl", "curves.png", "test.json", "test_confusion.png")
"""Every file a run writes into its folder (atomically)."""


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
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


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation accuracy per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax1.legend()
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train (augmented)")
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    ax2.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _write_metrics(history: list[dict[str, Any]], out_dir: Path) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(out_dir / "metrics.jsonl", lambda tmp: tmp.write_text(text))


@torch.no_grad()
def _update_ema(ema: KWSModel, model: KWSModel, decay: float, step: int) -> None:
    """``ema <- d * ema + (1 - d) * model`` with ``d`` warming up from 0.1 to ``decay`` over the first steps."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - d)


def _payload(model, optimizer, scheduler, config, labels, epoch, step, best, history, summary) -> dict:
    return {
        "config": to_dict(config),
        "labels": labels,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best_accuracy": best,
        "history": history,
        "data_summary": summary,
    }


def absolute_data_paths(data: DataConfig) -> DataConfig:
    """``data`` with every folder (roots, extra_train, negatives) made absolute and resolved, so a saved run
    can be resumed (and its data found) from any working directory."""

    def absolute(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(Path(p).expanduser().resolve()) for p in paths)

    return replace(
        data, roots=absolute(data.roots), extra_train=absolute(data.extra_train), negatives=absolute(data.negatives)
    )


def check_trainable(config: RunConfig) -> None:
    """Refuse a configuration that would train a model the rest of the tool chain cannot use."""
    if config.model.proj_size:
        raise ConfigError(
            f"--proj-size {config.model.proj_size}: `kws export` cannot export an LSTM with projections "
            "(ONNX's LSTM op has none), so such a model could never be deployed; use --proj-size 0"
        )


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
    (:mod:`kws.distributed`): rank 0 checks and locks the folder, reads ``last.pt`` and alone writes files.

    Args:
        config: the run's configuration (ignored with ``resume``: the saved one is used; ``kws train
            --resume`` refuses flags that contradict it).
        threads: CPU threads for torch (0: every core, shared by the processes of a distributed run).
        cache_dir: read the clips through the decoded-audio caches in this folder (:mod:`kws.cache`; the same
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
        state, config = context.lead(lambda: _open_run(config, out_dir, resume, context.world_size, held))
        return _train_locked(config, state, out_dir, context, threads, cache_dir, precision)


def _open_run(
    config: RunConfig, out_dir: Path, resume: bool, world_size: int, held: contextlib.ExitStack
) -> tuple[dict[str, Any] | None, RunConfig]:
    """Rank 0's part of starting a run: check and lock ``out_dir`` (held in ``held``), read ``last.pt`` for a
    resume, remove stale temporaries. Returns the resume payload (None for a new run) and the run's config."""
    last_path, best_path = out_dir / LAST, out_dir / BEST
    if resume and not last_path.is_file():
        raise CheckpointError(f"nothing to resume: {last_path} does not exist")
    if not resume:
        check_trainable(config)
    ensure_writable_dir(out_dir)
    held.enter_context(lock_folder(out_dir, "kws train"))
    state: dict[str, Any] | None = None
    if resume:
        state, config = _resume_state(last_path)
        saved_world = state.get("world_size", 1)
        if saved_world != world_size:
            raise KWSError(
                f"{last_path} was trained by {saved_world} process(es) and this run has {world_size}: the batches "
                f"and schedule depend on it, so resume with {saved_world} (torchrun --nnodes x --nproc_per_node; "
                "plain `kws train` for 1)"
            )
        logger.info("resuming %s after epoch %d", out_dir, state["epoch"])
    elif last_path.exists() or best_path.exists():
        raise KWSError(f"{out_dir} already holds a run; use --resume to continue it or choose another --out")
    clean_stale_temporaries(out_dir, OUTPUTS, min_age_s=0)  # the lock says no other train writes here
    return state, replace(config, data=absolute_data_paths(config.data))


def _resume_state(last_path: Path) -> tuple[dict[str, Any], RunConfig]:
    """The payload and config of ``last.pt``, checked for everything a resume reads from it."""
    state = load_checkpoint(last_path)
    config = run_config(state)
    checkpoint_labels(state, config)
    expected = {"epoch": int, "step": int, "best_accuracy": (int, float), "history": list}
    expected |= {"optimizer": dict, "scheduler": dict}
    for key, kind in expected.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"{last_path}: {key!r} is missing or invalid; it cannot be resumed")
    if not 0 <= state["epoch"] <= config.train.epochs or state["step"] < 0:
        raise CheckpointError(f"{last_path}: epoch {state['epoch']} / step {state['step']} out of range")
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise CheckpointError(f"{last_path}: 'world_size' is invalid; it cannot be resumed")
    return state, config


def _as_is(batch: Any) -> Any:
    """DataLoader ``collate_fn`` that keeps a dataset item (numpy arrays) as it is."""
    return batch


def _epoch_batches(
    data: SplitData,
    augmenter: Augmenter,
    sampler: distributed.ShardedSampler,
    config: TrainConfig,
    epoch: int,
    in_process: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This process's ``(clip indices [batch], augmented float32 audio [batch, samples])`` of one epoch.

    ``in_process`` (a single process without workers): one generator, seeded ``[seed, epoch]``, draws the order
    and then every batch's augmentation, as ``kws train`` always has. Otherwise each batch is augmented from its
    own seed (:class:`~kws.dataset.AugmentedBatches`), in ``config.num_workers`` DataLoader workers or here.
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


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _train_locked(
    config: RunConfig,
    state: dict[str, Any] | None,
    out_dir: Path,
    context: distributed.Context,
    threads: int,
    cache_dir: str | Path | None,
    precision: str,
) -> Path:
    last_path, best_path = out_dir / LAST, out_dir / BEST
    device = context.device
    if device.type == "cpu":
        torch.set_num_threads(threads or context.default_threads())
    fc, tc = config.features, config.train
    prepared = prepare(
        config.data,
        fc.sample_rate,
        fc.clip_samples,
        tc.seed,
        ("train", "validation", "test"),
        cache_dir=cache_dir,
        lazy=("train",),
    )
    labels = prepared.labels
    if state is not None and list(state["labels"]) != labels:
        raise KWSError("the data's labels differ from the checkpoint's; resume with the same --data")
    train_data, val_data = prepared.splits["train"], prepared.splits["validation"]
    _check_split(prepared, "train", config.data)
    _check_split(prepared, "validation", config.data)
    _log_summary(prepared)
    config = replace(config, model=replace(config.model, n_labels=len(labels), n_inputs=fc.n_mfcc))

    torch.manual_seed(tc.seed)
    try:
        model = KWSModel(fc, config.model).to(device)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc).lower():
            raise
        raise KWSError(
            f"not enough memory for an LSTM of {config.model.num_layers} x {config.model.hidden_size} units "
            f"on {device}; use a smaller --hidden-size or --layers"
        ) from None
    if state is None:
        rng = np.random.default_rng(tc.seed)
        idx = rng.choice(len(train_data), min(len(train_data), NORMALIZATION_CLIPS), replace=False)
        model.frontend.fit_normalization(torch.from_numpy(train_data.float_audio(np.sort(idx))).to(device))
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sampler = distributed.ShardedSampler(len(train_data), tc.batch_size, tc.seed, context.rank, context.world_size)
    steps_per_epoch = sampler.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    history: list[dict[str, Any]] = []
    start_epoch, step, best = 0, 0, -1.0
    if state is not None:
        load_weights(model, state.get("train_model", state.get("model")), str(last_path))
        if ema is not None:
            load_weights(ema, state.get("model"), str(last_path))
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler.is_enabled() and isinstance(state.get("scaler"), dict):
                scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError) as exc:
            raise CheckpointError(
                f"{last_path}: the optimizer state cannot be restored ({type(exc).__name__})"
            ) from None
        start_epoch, step, best, history = state["epoch"], state["step"], state["best_accuracy"], state["history"]

    teacher_logits = None
    if tc.teacher:
        from kws.teacher import load_soft_labels

        teacher_logits = load_soft_labels(tc.teacher, labels, train_data.paths)
        logger.info(
            "distilling from the teacher in %s (weight %g, temperature %g)",
            tc.teacher,
            tc.distill_weight,
            tc.distill_temperature,
        )
    objective = Objective(tc, train_data.labels, len(labels), teacher_logits, device)
    augmenter = Augmenter(
        config.augment,
        fc.sample_rate,
        prepared.noises,
        speech_context_clips(
            prepared, fc.sample_rate, CONTEXT_SPEECH_CLIPS, tc.seed, max(1.0, config.augment.context_seconds)
        )
        if config.augment.context_prob
        else [],
    )
    net = context.wrap(model)  # what the batches go through; checkpoints keep `model`'s own state dict
    in_process = not context.distributed and not tc.num_workers
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "model: %d parameters, %d labels; %d steps/epoch on %s%s",
        n_params,
        len(labels),
        steps_per_epoch,
        device,
        f" x {context.world_size} processes ({context.backend})" if context.distributed else "",
    )
    clip_frames = fc.num_frames(fc.clip_samples)
    started = time.monotonic()
    from tqdm import tqdm

    for epoch in range(start_epoch, tc.epochs):
        model.train()
        torch.manual_seed(distributed.rank_seed(tc.seed * 100_003 + epoch, context.rank))
        gen = torch.Generator().manual_seed(distributed.rank_seed(tc.seed * 100_019 + epoch, context.rank))
        batches = _epoch_batches(train_data, augmenter, sampler, tc, epoch, in_process)
        loss_sum, correct, seen = 0.0, 0, 0
        epoch_started = time.monotonic()
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            leave=False,
            mininterval=1.0,
            disable=context.progress_disable,
        )
        for idx, audio in bar:
            y = torch.from_numpy(train_data.labels[idx]).to(device)
            feats = model.frontend(torch.from_numpy(audio).to(device))  # float32 features, also under autocast
            a = config.augment
            if a.time_masks or a.freq_masks:
                mask = spec_augment(
                    torch.ones(feats.shape), a.time_masks, a.time_mask_frames, a.freq_masks, a.freq_mask_bins, gen
                )
                feats = feats * mask.to(device)
            with _autocast(device, precision):
                frames = net(feats)[0][:, -clip_frames:]
            logits = model.pool(frames.float())
            loss = objective(logits, y, idx)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if ema is not None:
                _update_ema(ema, model, tc.ema_decay, step)
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
            if tc.max_steps and step >= tc.max_steps:
                break
        bar.close()
        batches.close()  # ends the DataLoader's workers of a partial epoch
        train_seconds = time.monotonic() - epoch_started
        scored = ema if ema is not None else model
        val_acc, val_loss = _accuracy(scored, val_data.audio, val_data.labels, context)  # not empty: _check_split
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
        context.check_replicas(f"after epoch {epoch + 1}", model, *([ema] if ema is not None else []))
        improved = val_acc > best
        best = max(best, val_acc)
        if context.is_main:
            payload = _payload(
                scored, optimizer, scheduler, config, labels, epoch + 1, step, best, history, prepared.summary
            )
            payload["train_model"] = model.state_dict()
            payload["world_size"] = context.world_size
            if scaler.is_enabled():
                payload["scaler"] = scaler.state_dict()
            if improved:
                save_checkpoint(best_path, payload)
            save_checkpoint(last_path, payload)
            _write_metrics(history, out_dir)
        if (tc.max_steps and step >= tc.max_steps) or sums[4]:
            logger.info("stopping early: %s limit reached", "step" if tc.max_steps and step >= tc.max_steps else "time")
            break
    if context.is_main:
        plot_curves(history, out_dir / "curves.png")
        _final_evaluation(best_path, prepared, device)
    return best_path


def _final_evaluation(best_path: Path, prepared: PreparedData, device: torch.device) -> None:
    """Evaluate the best checkpoint on the test split and store the figures inside it (for export)."""
    test = prepared.splits["test"]
    if len(test) == 0:
        logger.warning("the test split is empty: no final evaluation")
        return
    model, _, payload = model_from_checkpoint(best_path)
    report = evaluate_split(model.to(device), test, prepared.labels)
    report["split"] = "test"
    report["data"] = [Path(r).name for r in run_config(payload).data.roots]  # by name: no machine's paths
    write_report(report, best_path.parent, "test", f"{best_path.name}, test split")
    payload["evaluation"] = {k: report[k] for k in ("accuracy", "clips", "speakers", "split", "data")}
    payload["evaluation"]["per_class_recall"] = {k: v["recall"] for k, v in report["per_class"].items()}
    save_checkpoint(best_path, payload)
    logger.info("test split of the best checkpoint (epoch %d):\n%s", payload["epoch"], format_report(report))


def _check_split(prepared: PreparedData, split: str, data: DataConfig) -> None:
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


def _log_summary(prepared: PreparedData) -> None:
    for split in ("train", "validation", "test"):
        s = prepared.summary.get(split)
        if isinstance(s, dict):
            logger.info(
                "%s: %d clips, %d speakers, per class %s",
                split,
                s["clips"],
                s["speakers"],
                ", ".join(f"{k} {v}" for k, v in s["per_class"].items()),
            )


PASSED_FLAGS = "passed_flags"
"""Namespace attribute: the dests of the options given on the command line (see :func:`passed_flags`)."""


def _note_passed(namespace: argparse.Namespace, dest: str) -> None:
    setattr(namespace, PASSED_FLAGS, frozenset(getattr(namespace, PASSED_FLAGS, None) or ()) | {dest})


class _Store(argparse.Action):
    """``store``, noting that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        _note_passed(namespace, self.dest)


class _StoreTrue(argparse.Action):
    """``store_true``, noting that the option was given."""

    def __init__(self, option_strings, dest, default=False, required=False, help=None) -> None:
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, True)
        _note_passed(namespace, self.dest)


class _Extend(argparse.Action):
    """``extend`` (``--data A --data B C`` gives ``[A, B, C]``: a repeated option adds, it never replaces),
    noting that the option was given."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])  # a copy: the default list is never changed
        items.extend(values)
        setattr(namespace, self.dest, items)
        _note_passed(namespace, self.dest)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = RunConfig()
    parser.set_defaults(**{PASSED_FLAGS: frozenset()})
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        action=_Extend,
        nargs="+",
        metavar="DIR",
        help="Speech Commands folder(s): the full dataset (v0.01/v0.02), the 12-class test archive, "
        "or several combined (splits stay speaker-disjoint across them); repeatable",
    )
    g.add_argument(
        "--extra-train",
        action=_Extend,
        nargs="+",
        default=[],
        metavar="DIR",
        help="extra Speech Commands-layout folder(s) used for training only, e.g. `kws tts` output; repeatable",
    )
    g.add_argument(
        "--negatives",
        action=_Extend,
        nargs="+",
        default=[],
        metavar="DIR",
        help="folder(s) of non-keyword speech (any layout): 1 s crops of half of the files (by a fixed hash) join "
        "_unknown_ in training; `kws bench --negatives` streams the other half; repeatable",
    )
    g.add_argument(
        "--labels",
        action=_Store,
        default=d.data.labels,
        help="'standard' (10 keywords + _silence_ + _unknown_), 'all' (every word), or a comma-separated "
        "keyword list (default: %(default)s)",
    )
    g.add_argument(
        "--unknown-ratio",
        action=_Store,
        type=float,
        default=d.data.unknown_ratio,
        help="_unknown_ clips per keyword class size (default: %(default)s)",
    )
    g.add_argument(
        "--silence-ratio",
        action=_Store,
        type=float,
        default=d.data.silence_ratio,
        help="_silence_ clips per keyword class size (default: %(default)s)",
    )
    g.add_argument(
        "--validation-percent",
        action=_Store,
        type=float,
        default=d.data.validation_percent,
        help="speakers (by hash) in the validation split, for data without official lists (default: %(default)s)",
    )
    g.add_argument(
        "--testing-percent",
        action=_Store,
        type=float,
        default=d.data.testing_percent,
        help="speakers (by hash) in the test split, for data without official lists (default: %(default)s)",
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--window-ms",
        action=_Store,
        type=float,
        default=d.features.window_ms,
        help="analysis window (default: %(default)s)",
    )
    g.add_argument(
        "--hop-ms", action=_Store, type=float, default=d.features.hop_ms, help="frame hop (default: %(default)s)"
    )
    g.add_argument(
        "--n-mfcc", action=_Store, type=int, default=d.features.n_mfcc, help="MFCC coefficients (default: %(default)s)"
    )
    g.add_argument(
        "--hidden-size",
        action=_Store,
        type=int,
        default=d.model.hidden_size,
        help=f"LSTM units, at most {MAX_HIDDEN_SIZE} (default: %(default)s)",
    )
    g.add_argument(
        "--layers",
        action=_Store,
        type=int,
        default=d.model.num_layers,
        help=f"LSTM layers, at most {MAX_LAYERS} (default: %(default)s)",
    )
    g.add_argument(
        "--proj-size",
        action=_Store,
        type=int,
        default=d.model.proj_size,
        help="LSTM projection size; only 0 (none) is accepted, since `kws export` cannot export projections "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--dropout", action=_Store, type=float, default=d.model.dropout, help="dropout (default: %(default)s)"
    )
    g = parser.add_argument_group("training")
    g.add_argument(
        "--out", action=_Store, type=Path, default=Path("runs/kws"), help="run folder (default: %(default)s)"
    )
    g.add_argument("--epochs", action=_Store, type=int, default=d.train.epochs, help="epochs (default: %(default)s)")
    g.add_argument(
        "--batch-size", action=_Store, type=int, default=d.train.batch_size, help="batch size (default: %(default)s)"
    )
    g.add_argument(
        "--lr", action=_Store, type=float, default=d.train.lr, help="peak AdamW learning rate (default: %(default)s)"
    )
    g.add_argument(
        "--seed",
        action=_Store,
        type=int,
        default=d.train.seed,
        help=f"random seed, 0..{MAX_SEED} (default: %(default)s)",
    )
    g.add_argument("--no-augment", action=_StoreTrue, help="train without any augmentation")
    g.add_argument(
        "--class-weight-power",
        action=_Store,
        type=float,
        default=d.train.class_weight_power,
        help="weigh each class's loss by (its training clips) ** -POWER: 0 off, 0.5 halfway, 1 every class "
        "counts the same, for unbalanced data such as few on/off clips (default: %(default)s)",
    )
    g.add_argument(
        "--max-minutes",
        action=_Store,
        type=float,
        default=0.0,
        help="stop after the epoch that passes this many minutes (default: no limit)",
    )
    g.add_argument(
        "--max-steps", action=_Store, type=int, default=0, help="stop after this many steps (default: no limit)"
    )
    g.add_argument(
        "--device",
        action=_Store,
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to train (default: CUDA if available, else every CPU core)",
    )
    g.add_argument(
        "--threads",
        action=_Store,
        type=int,
        default=0,
        help="CPU threads (default: every core; fewer if the machine is shared)",
    )
    g.add_argument(
        "--resume",
        action=_StoreTrue,
        help="continue the interrupted run in --out exactly where it stopped, with its saved config: other flags "
        "must agree with it (only --threads, --device, --cache, --no-cache, --precision and --distributed may "
        "differ); a distributed run resumes with the same number of processes",
    )

    scale = parser.add_argument_group(
        "scale (several GPUs or processes: `torchrun --nproc_per_node N -m kws train ...`)",
        "torchrun starts N processes that train one model with DistributedDataParallel (NCCL on CUDA, one\n"
        "GPU each; gloo on CPU); for several machines run the same command on each with --nnodes M\n"
        "--rdzv-backend c10d --rdzv-endpoint HOST:PORT. --batch-size is per process; rank 0 alone writes the\n"
        "files and logs.",
    )
    scale.add_argument(
        "--workers",
        action=_Store,
        type=int,
        default=d.train.num_workers,
        help="DataLoader worker processes that read and augment the training batches, per process (default: "
        "%(default)s: in the training process). With 1 or more, and in every distributed run, each batch is "
        "augmented from its own seed, so the number of workers never changes the result",
    )
    scale.add_argument(
        "--cache",
        action=_Store,
        type=Path,
        default=default_cache_dir(),
        metavar="DIR",
        help="decoded-audio cache: each data folder is decoded once into an int16 memory map there, shared by the "
        "processes of a run and by later runs, and rebuilt when the folder changes (default: $KWS_CACHE_DIR or "
        "%(default)s)",
    )
    scale.add_argument("--no-cache", action=_StoreTrue, help="read the audio files themselves (no cache)")
    scale.add_argument(
        "--precision",
        action=_Store,
        default="fp32",
        choices=PRECISIONS,
        help="fp32, or bf16/fp16 autocast of the LSTM on CUDA (fp16 with loss scaling); features and "
        "validation stay float32 (default: %(default)s)",
    )
    scale.add_argument(
        "--distributed",
        action=_StoreTrue,
        help="fail (one line) unless launched by torchrun, instead of training as a single process",
    )

    t = parser.add_argument_group("distillation (optional: a `kws teacher` folder made with the same --data)")
    t.add_argument(
        "--teacher",
        action=_Store,
        default="",
        metavar="DIR",
        help="learn also from the soft labels of the pretrained-embedding teacher in DIR (`kws teacher --out DIR`)",
    )
    t.add_argument(
        "--distill-weight",
        action=_Store,
        type=float,
        default=d.train.distill_weight,
        help="share of the loss given to the teacher's soft labels (default: %(default)s)",
    )
    t.add_argument(
        "--distill-temperature",
        action=_Store,
        type=float,
        default=d.train.distill_temperature,
        help="softmax temperature of the distillation term (default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    d = RunConfig()
    config = RunConfig(
        features=replace(
            d.features,
            window_ms=args.window_ms,
            hop_ms=args.hop_ms,
            n_mfcc=args.n_mfcc,
            n_mels=max(d.features.n_mels, args.n_mfcc),
        ),
        model=ModelConfig(
            n_inputs=args.n_mfcc,
            hidden_size=args.hidden_size,
            num_layers=args.layers,
            proj_size=args.proj_size,
            dropout=args.dropout,
        ),
        data=DataConfig(
            roots=tuple(args.data or ()),
            extra_train=tuple(args.extra_train),
            negatives=tuple(args.negatives),
            labels=args.labels,
            unknown_ratio=args.unknown_ratio,
            silence_ratio=args.silence_ratio,
            validation_percent=args.validation_percent,
            testing_percent=args.testing_percent,
        ),
        augment=AugmentConfig.none() if args.no_augment else d.augment,
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            max_minutes=args.max_minutes,
            max_steps=args.max_steps,
            class_weight_power=args.class_weight_power,
            teacher=str(Path(args.teacher).expanduser().resolve()) if args.teacher else "",
            distill_weight=args.distill_weight,
            distill_temperature=args.distill_temperature,
            num_workers=args.workers,
        ),
    )
    return replace(config, data=absolute_data_paths(config.data))


RESUME_FREE_FLAGS = frozenset({"out", "resume", "device", "threads", "cache", "no_cache", "precision", "distributed"})
"""Options that may differ from the saved run on --resume (they do not change what is computed)."""

_SAVED_VALUE: dict[str, Any] = {
    "data": lambda c: c.data.roots,
    "extra_train": lambda c: c.data.extra_train,
    "negatives": lambda c: c.data.negatives,
    "labels": lambda c: c.data.labels,
    "unknown_ratio": lambda c: c.data.unknown_ratio,
    "silence_ratio": lambda c: c.data.silence_ratio,
    "validation_percent": lambda c: c.data.validation_percent,
    "testing_percent": lambda c: c.data.testing_percent,
    "window_ms": lambda c: c.features.window_ms,
    "hop_ms": lambda c: c.features.hop_ms,
    "n_mfcc": lambda c: c.features.n_mfcc,
    "hidden_size": lambda c: c.model.hidden_size,
    "layers": lambda c: c.model.num_layers,
    "proj_size": lambda c: c.model.proj_size,
    "dropout": lambda c: c.model.dropout,
    "epochs": lambda c: c.train.epochs,
    "batch_size": lambda c: c.train.batch_size,
    "lr": lambda c: c.train.lr,
    "seed": lambda c: c.train.seed,
    "max_minutes": lambda c: c.train.max_minutes,
    "max_steps": lambda c: c.train.max_steps,
    "class_weight_power": lambda c: c.train.class_weight_power,
    "teacher": lambda c: c.train.teacher,
    "distill_weight": lambda c: c.train.distill_weight,
    "distill_temperature": lambda c: c.train.distill_temperature,
    "no_augment": lambda c: c.augment == AugmentConfig.none(),
    "workers": lambda c: c.train.num_workers,
}
"""For each option of ``kws train``: the value it sets, read from a RunConfig."""


def passed_flags(args: argparse.Namespace) -> set[str]:
    """The dests of the options the user gave (recorded while parsing; for a namespace built elsewhere, the
    options whose value differs from the parser's default)."""
    recorded = getattr(args, PASSED_FLAGS, None)
    if recorded is not None:
        return set(recorded)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    return {k for k, v in vars(args).items() if k in defaults and k != PASSED_FLAGS and v != defaults[k]}


def resume_conflicts(args: argparse.Namespace, saved: RunConfig) -> list[str]:
    """The options in ``args`` that contradict the saved run configuration, as ``--flag VALUE (saved: X)``."""
    passed = passed_flags(args) - RESUME_FREE_FLAGS
    if not passed:
        return []
    wanted = config_from_args(args)
    saved = replace(saved, data=absolute_data_paths(saved.data))
    conflicts = []
    for dest in sorted(passed):
        get = _SAVED_VALUE.get(dest)
        if get is None:
            raise KWSError(f"--{dest.replace('_', '-')} cannot be checked against a saved run")
        if get(wanted) != get(saved):
            conflicts.append(f"--{dest.replace('_', '-')} {_show(get(wanted))} (saved: {_show(get(saved))})")
    return conflicts


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(value) if value else "none"
    return str(value)


def run(args: argparse.Namespace) -> int:
    if not args.resume and not args.data:
        raise KWSError("--data is required (a Speech Commands folder; `kws download` fetches one)")
    if args.resume and (Path(args.out) / LAST).is_file():
        conflicts = resume_conflicts(args, run_config(load_checkpoint(Path(args.out) / LAST)))
        if conflicts:
            raise ConfigError(
                f"--resume continues {args.out} with its saved config, which these flags contradict: "
                f"{'; '.join(conflicts)}. Drop them (only --threads, --device, --cache and --precision may "
                "differ), or train anew into another --out"
            )
        config = RunConfig()  # unused: the saved config is
    else:
        config = config_from_args(args)
    best = train(
        config,
        args.out,
        resume=args.resume,
        device_name=args.device,
        threads=args.threads,
        cache_dir=None if args.no_cache else args.cache,
        precision=args.precision,
        require_distributed=args.distributed,
    )
    if distributed.environment_rank() == 0:
        print(f"best checkpoint: {best}")
    return 0
