"""Train a stacked-LSTM keyword model on Speech Commands.

Reads one or more Speech Commands folders (full dataset v0.01/v0.02 and/or the 12-class test archive),
trains with seeded on-the-fly augmentation (time shift, speed, gain, background noise, preceding context,
SpecAugment), validates every epoch, keeps the best checkpoint and finally evaluates it on the test split.

Writes to --out: last.pt (for --resume), best.pt (the model to export), metrics.jsonl, curves.png,
test.json and test_confusion.png. The whole run configuration is saved in every checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kws.augment import Augmenter
from kws.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    model_from_checkpoint,
    run_config,
    save_checkpoint,
)
from kws.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    to_dict,
)
from kws.dataset import PreparedData, prepare, speech_context_clips
from kws.errors import KWSError
from kws.evaluate import evaluate_split, format_report, predict, write_report
from kws.features import spec_augment
from kws.model import KWSModel

logger = logging.getLogger(__name__)

NORMALIZATION_CLIPS = 2000
CONTEXT_SPEECH_CLIPS = 2000
LAST, BEST = "last.pt", "best.pt"


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    warmup = max(int(config.warmup_epochs * steps_per_epoch), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise KWSError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def _accuracy(model: KWSModel, audio: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of whole-clip predictions of int16 clips ``[clips, samples]``."""
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


def train(config: RunConfig, out_dir: Path, resume: bool = False, device_name: str = "auto", threads: int = 0) -> Path:
    """Train (or resume) a run in ``out_dir``; returns the path of the best checkpoint.

    Args:
        threads: CPU threads for torch (0: every core).
    """
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / LAST, out_dir / BEST
    state: dict[str, Any] | None = None
    if resume:
        if not last_path.is_file():
            raise CheckpointError(f"nothing to resume: {last_path} does not exist")
        state = load_checkpoint(last_path)
        config = run_config(state)
        logger.info("resuming %s after epoch %d", out_dir, state["epoch"])
    elif last_path.exists() or best_path.exists():
        raise KWSError(f"{out_dir} already holds a run; use --resume to continue it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise KWSError(f"output folder {out_dir} is not writable")

    device = _device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    fc, tc = config.features, config.train
    prepared = prepare(config.data, fc.sample_rate, fc.clip_samples, tc.seed, ("train", "validation", "test"))
    labels = prepared.labels
    if state is not None and list(state["labels"]) != labels:
        raise KWSError("the data's labels differ from the checkpoint's; resume with the same --data")
    train_data, val_data = prepared.splits["train"], prepared.splits["validation"]
    if len(train_data) == 0:
        raise KWSError("the training split is empty")
    _log_summary(prepared)
    config = replace(config, model=replace(config.model, n_labels=len(labels), n_inputs=fc.n_mfcc))

    torch.manual_seed(tc.seed)
    model = KWSModel(fc, config.model).to(device)
    if state is None:
        rng = np.random.default_rng(tc.seed)
        idx = rng.choice(len(train_data), min(len(train_data), NORMALIZATION_CLIPS), replace=False)
        model.frontend.fit_normalization(torch.from_numpy(train_data.float_audio(np.sort(idx))).to(device))
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(len(train_data) / tc.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc, steps_per_epoch))
    history: list[dict[str, Any]] = []
    start_epoch, step, best = 0, 0, -1.0
    if state is not None:
        model.load_state_dict(state.get("train_model", state["model"]))
        if ema is not None:
            ema.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, best, history = state["epoch"], state["step"], state["best_accuracy"], state["history"]

    augmenter = Augmenter(
        config.augment,
        fc.sample_rate,
        prepared.noises,
        speech_context_clips(prepared, fc.sample_rate, CONTEXT_SPEECH_CLIPS, tc.seed)
        if config.augment.context_prob
        else [],
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %d parameters, %d labels; %d steps/epoch on %s", n_params, len(labels), steps_per_epoch, device)
    clip_frames = fc.num_frames(fc.clip_samples)
    started = time.monotonic()
    from tqdm import tqdm

    for epoch in range(start_epoch, tc.epochs):
        model.train()
        rng = np.random.default_rng([tc.seed, epoch])
        torch.manual_seed(tc.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(tc.seed * 100_019 + epoch)
        order = rng.permutation(len(train_data))
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, mininterval=1.0, disable=None
        )
        for b in bar:
            idx = order[b * tc.batch_size : (b + 1) * tc.batch_size]
            audio = augmenter.batch(list(train_data.float_audio(idx)), list(train_data.silence[idx]), rng)
            y = torch.from_numpy(train_data.labels[idx]).to(device)
            feats = model.frontend(torch.from_numpy(audio).to(device))
            a = config.augment
            if a.time_masks or a.freq_masks:
                feats = spec_augment(
                    feats.cpu(), a.time_masks, a.time_mask_frames, a.freq_masks, a.freq_mask_bins, gen
                ).to(device)
            logits = model.pool(model(feats)[0][:, -clip_frames:])
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
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
        scored = ema if ema is not None else model
        val_acc, val_loss = _accuracy(scored, val_data.audio, val_data.labels) if len(val_data) else (0, 0)
        record = {
            "epoch": epoch + 1,
            "step": step,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "minutes": (time.monotonic() - started) / 60,
        }
        history.append(record)
        logger.info(
            "epoch %d/%d: loss %.3f, train acc %.1f%%, val acc %.2f%% (%.1f min)",
            epoch + 1,
            tc.epochs,
            record["train_loss"],
            100 * record["train_accuracy"],
            100 * val_acc,
            record["minutes"],
        )
        improved = val_acc > best
        best = max(best, val_acc)
        payload = _payload(
            scored, optimizer, scheduler, config, labels, epoch + 1, step, best, history, prepared.summary
        )
        payload["train_model"] = model.state_dict()
        if improved:
            save_checkpoint(best_path, payload)
        save_checkpoint(last_path, payload)
        _write_metrics(history, out_dir)
        out_of_time = tc.max_minutes and (time.monotonic() - started) / 60 >= tc.max_minutes
        if (tc.max_steps and step >= tc.max_steps) or out_of_time:
            logger.info("stopping early: %s limit reached", "step" if tc.max_steps and step >= tc.max_steps else "time")
            break
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
    report["data"] = list(run_config(payload).data.roots)
    write_report(report, best_path.parent, "test", f"{best_path.name}, test split")
    payload["evaluation"] = {k: report[k] for k in ("accuracy", "clips", "speakers", "split", "data")}
    payload["evaluation"]["per_class_recall"] = {k: v["recall"] for k, v in report["per_class"].items()}
    save_checkpoint(best_path, payload)
    logger.info("test split of the best checkpoint (epoch %d):\n%s", payload["epoch"], format_report(report))


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = RunConfig()
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        nargs="+",
        metavar="DIR",
        help="Speech Commands folder(s): the full dataset (v0.01/v0.02), the 12-class test archive, "
        "or several combined (splits stay speaker-disjoint across them)",
    )
    g.add_argument(
        "--extra-train",
        nargs="+",
        default=[],
        metavar="DIR",
        help="extra Speech Commands-layout folder(s) used for training only, e.g. `kws tts` output",
    )
    g.add_argument(
        "--negatives",
        nargs="+",
        default=[],
        metavar="DIR",
        help="folder(s) of non-keyword speech (any layout): 1 s crops of half of the files (by a fixed hash) join "
        "_unknown_ in training; `kws bench --negatives` streams the other half",
    )
    g.add_argument(
        "--labels",
        default=d.data.labels,
        help="'standard' (10 keywords + _silence_ + _unknown_), 'all' (every word), or a comma-separated "
        "keyword list (default: %(default)s)",
    )
    g.add_argument(
        "--unknown-ratio",
        type=float,
        default=d.data.unknown_ratio,
        help="_unknown_ clips per keyword class size (default: %(default)s)",
    )
    g.add_argument(
        "--silence-ratio",
        type=float,
        default=d.data.silence_ratio,
        help="_silence_ clips per keyword class size (default: %(default)s)",
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--window-ms", type=float, default=d.features.window_ms, help="analysis window (default: %(default)s)"
    )
    g.add_argument("--hop-ms", type=float, default=d.features.hop_ms, help="frame hop (default: %(default)s)")
    g.add_argument("--n-mfcc", type=int, default=d.features.n_mfcc, help="MFCC coefficients (default: %(default)s)")
    g.add_argument("--hidden-size", type=int, default=d.model.hidden_size, help="LSTM units (default: %(default)s)")
    g.add_argument("--layers", type=int, default=d.model.num_layers, help="LSTM layers (default: %(default)s)")
    g.add_argument(
        "--proj-size",
        type=int,
        default=d.model.proj_size,
        help="LSTM projection size, 0 for none (default: %(default)s)",
    )
    g.add_argument("--dropout", type=float, default=d.model.dropout, help="dropout (default: %(default)s)")
    g = parser.add_argument_group("training")
    g.add_argument("--out", type=Path, default=Path("runs/kws"), help="run folder (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=d.train.epochs, help="epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.train.batch_size, help="batch size (default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.train.lr, help="peak AdamW learning rate (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.train.seed, help="random seed (default: %(default)s)")
    g.add_argument("--no-augment", action="store_true", help="train without any augmentation")
    g.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="stop after the epoch that passes this many minutes (default: no limit)",
    )
    g.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (default: no limit)")
    g.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to train (default: CUDA if available, else every CPU core)",
    )
    g.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default: every core; fewer if the machine is shared)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out exactly where it stopped (its saved config is used)",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    d = RunConfig()
    return RunConfig(
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
        ),
        augment=AugmentConfig.none() if args.no_augment else d.augment,
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            max_minutes=args.max_minutes,
            max_steps=args.max_steps,
        ),
    )


def run(args: argparse.Namespace) -> int:
    if not args.resume and not args.data:
        raise KWSError("--data is required (a Speech Commands folder; `kws download` fetches one)")
    best = train(config_from_args(args), args.out, resume=args.resume, device_name=args.device, threads=args.threads)
    print(f"best checkpoint: {best}")
    return 0
