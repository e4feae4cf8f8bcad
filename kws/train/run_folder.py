"""The folder of a training run: opening it (lock, resume checks), what each epoch writes into it (checkpoints,
metrics) and what the run leaves at the end (curves, the test report of the best checkpoint).

Every file is written atomically (:func:`kws.io.atomic_write`); :data:`OUTPUTS` names them all.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kws.config import DataConfig, RunConfig
from kws.data.splits import PreparedData
from kws.errors import ConfigError, KWSError
from kws.io import atomic_write, clean_stale_temporaries, ensure_writable_dir
from kws.model.checkpoint import (
    CheckpointError,
    checkpoint_labels,
    checkpoint_weights,
    load_checkpoint,
    load_weights,
    lock_folder,
    model_from_checkpoint,
    run_config,
    save_checkpoint,
)
from kws.model.network import KWSModel
from kws.train.evaluate import evaluate_split, format_report, write_report

logger = logging.getLogger("kws.train.loop")  # its messages are those of `kws train`, as before the split

LAST, BEST, METRICS, CURVES = "last.pt", "best.pt", "metrics.jsonl", "curves.png"
OUTPUTS = (LAST, BEST, METRICS, CURVES, "test.json", "test_confusion.png")
"""Every file a run writes into its folder (atomically)."""


def absolute_data_paths(data: DataConfig) -> DataConfig:
    """``data`` with every folder (roots, extra_train, negatives) made absolute and resolved, so a saved run
    can be resumed (and its data found) from any working directory."""

    def absolute(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(Path(p).expanduser().resolve()) for p in paths)

    return replace(
        data, roots=absolute(data.roots), extra_train=absolute(data.extra_train), negatives=absolute(data.negatives)
    )


def check_trainable(config: RunConfig) -> None:
    """Refuse a configuration that would train a model the rest of the tool chain cannot use, or start from a
    checkpoint that does not exist."""
    if config.train.init_from and not Path(config.train.init_from).is_file():
        raise ConfigError(f"--init-from {config.train.init_from}: no such checkpoint")
    if config.model.proj_size:
        raise ConfigError(
            f"--proj-size {config.model.proj_size}: `kws export` cannot export an LSTM with projections "
            "(ONNX's LSTM op has none), so such a model could never be deployed; use --proj-size 0"
        )


INIT_FEATURE_FIELDS = ("sample_rate", "window_ms", "hop_ms", "n_mels", "n_mfcc", "f_min", "f_max", "clip_seconds")
INIT_MODEL_FIELDS = ("n_inputs", "n_labels", "hidden_size", "num_layers", "proj_size", "pooling", "unknown_words")
"""What a run started ``--init-from`` a checkpoint must share with it (the weights' shapes and meaning)."""


def init_weights(model: KWSModel, config: RunConfig, labels: list[str]) -> None:
    """Load the evaluated weights (and input normalisation) of ``config.train.init_from`` into a new run's model.

    Raises:
        KWSError: (one line) the checkpoint's labels, front end or model shape differ from the run's.
    """
    path = Path(config.train.init_from)
    payload = load_checkpoint(path)
    saved = run_config(payload)
    saved_labels = checkpoint_labels(payload, saved)
    differences = [f"labels {','.join(saved_labels)} (this run: {','.join(labels)})"] if saved_labels != labels else []
    for section, names in (("features", INIT_FEATURE_FIELDS), ("model", INIT_MODEL_FIELDS)):
        theirs, ours = getattr(saved, section), getattr(config, section)
        differences += [
            f"{n} {getattr(theirs, n)} (this run: {getattr(ours, n)})"
            for n in names
            if getattr(theirs, n) != getattr(ours, n)
        ]
    if differences:
        raise KWSError(
            f"--init-from {path}: its model differs from this run's ({'; '.join(differences)}): use the same model "
            "flags and --data/--labels"
        )
    load_weights(model, checkpoint_weights(payload), str(path))
    logger.info("starting from the weights of %s (epoch %s)", path, payload.get("epoch"))


def open_run(
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
        state, config = resume_state(last_path)
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


def resume_state(last_path: Path) -> tuple[dict[str, Any], RunConfig]:
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


def save_epoch(out_dir: Path, payload: dict[str, Any], improved: bool) -> None:
    """Write an epoch's checkpoint to ``last.pt`` (and ``best.pt`` first when it ``improved``) and the history
    so far (``payload["history"]``) to ``metrics.jsonl``, one JSON record per epoch."""
    if improved:
        save_checkpoint(out_dir / BEST, payload)
    save_checkpoint(out_dir / LAST, payload)
    text = "".join(json.dumps(h) + "\n" for h in payload["history"])
    atomic_write(out_dir / METRICS, lambda tmp: tmp.write_text(text))


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


def finish(out_dir: Path, history: list[dict[str, Any]], prepared: PreparedData, device: torch.device) -> None:
    """The end of a run: the curves, then the best checkpoint evaluated on the test split."""
    plot_curves(history, out_dir / CURVES)
    final_evaluation(out_dir / BEST, prepared, device)


def final_evaluation(best_path: Path, prepared: PreparedData, device: torch.device) -> None:
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
