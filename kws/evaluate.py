"""Evaluate a checkpoint: accuracy, per-class precision/recall, a confusion-matrix PNG and a JSON report.

Any split of the training data, or every clip of any Speech Commands folder (``--split all``), e.g. the
official 12-class test archive. Words outside the checkpoint's labels count as ``_unknown_``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kws.audio import int16_to_float
from kws.checkpoint import atomic_write, model_from_checkpoint, run_config
from kws.config import DataConfig
from kws.constants import SPLITS
from kws.dataset import SplitData, prepare
from kws.model import KWSModel

logger = logging.getLogger(__name__)

EVAL_BATCH = 256


@torch.no_grad()
def predict(model: KWSModel, audio: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Class probabilities ``[clips, n_labels]`` of int16 clips ``[clips, samples]`` (whole-clip mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(audio), batch_size):
        x = torch.from_numpy(int16_to_float(audio[start : start + batch_size])).to(device)
        out.append(torch.softmax(model.classify(x), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.n_labels), np.float32)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true, cols: predicted)."""
    n = len(labels)
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = {}
    for i, label in enumerate(labels):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support),
        }
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "clips": int(cm.sum()),
        "labels": labels,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion(report: dict[str, Any], path: Path, title: str) -> None:
    """Write the confusion matrix as a PNG (row-normalised colours, counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion_matrix"])
    labels = report["labels"]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(labels), 1 + 0.55 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_title(f"{title}\naccuracy {100 * report['accuracy']:.2f}% on {report['clips']} clips", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def evaluate_split(model: KWSModel, data: SplitData, labels: list[str]) -> dict[str, Any]:
    """Classification report of ``model`` on one loaded split."""
    probs = predict(model, data.audio)
    report = classification_report(data.labels, probs.argmax(1), labels)
    report["speakers"] = len({s for s, sil in zip(data.speakers, data.silence, strict=True) if not sil})
    report["skipped"] = len(data.skipped)
    return report


def write_report(report: dict[str, Any], out_dir: Path, name: str, title: str) -> tuple[Path, Path]:
    """``out_dir/NAME.json`` and ``out_dir/NAME_confusion.png``."""
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}_confusion.png"
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    plot_confusion(report, png_path, title)
    return json_path, png_path


def format_report(report: dict[str, Any]) -> str:
    """A human-readable per-class table."""
    lines = [
        f"accuracy {100 * report['accuracy']:.2f}% on {report['clips']} clips ({report.get('speakers', '?')} speakers)",
        f"{'class':<12} {'precision':>9} {'recall':>7} {'n':>5}",
    ]
    for label, m in report["per_class"].items():
        lines.append(f"{label:<12} {100 * m['precision']:>8.1f}% {100 * m['recall']:>6.1f}% {m['support']:>5}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by `kws train` (e.g. runs/kws/best.pt)")
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="DIR",
        help="Speech Commands folder(s): full dataset, test archive, or several combined",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=[*SPLITS, "all"],
        help="which split to score; 'all' scores every clip (default: %(default)s)",
    )
    parser.add_argument(
        "--split-mode",
        default="auto",
        choices=["auto", "official", "speaker-hash"],
        help="how splits are assigned; must match training (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: next to the checkpoint, eval-SPLIT/)"
    )


def run(args: argparse.Namespace) -> int:
    model, labels, payload = model_from_checkpoint(args.checkpoint)
    config = run_config(payload)
    data_config = DataConfig(**{**config.data.__dict__, "roots": tuple(args.data)})
    splits = SPLITS if args.split == "all" else (args.split,)
    prepared = prepare(
        data_config,
        config.features.sample_rate,
        config.features.clip_samples,
        config.train.seed,
        splits,
        labels=labels,
        split_mode=args.split_mode,
    )
    data = _concat([prepared.splits[s] for s in splits])
    if len(data) == 0:
        from kws.data import DataError

        raise DataError(f"no clips in the {args.split} split of {', '.join(args.data)}")
    report = evaluate_split(model, data, labels)
    report.update({"checkpoint": str(args.checkpoint), "data": list(args.data), "split": args.split})
    out_dir = args.out or Path(args.checkpoint).parent / f"eval-{args.split}"
    json_path, png_path = write_report(report, out_dir, "report", f"{Path(args.checkpoint).name} on {args.split}")
    print(format_report(report))
    print(f"report: {json_path}\nconfusion matrix: {png_path}")
    return 0


def _concat(parts: list[SplitData]) -> SplitData:
    return SplitData(
        audio=np.concatenate([p.audio for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        silence=np.concatenate([p.silence for p in parts]),
        speakers=[s for p in parts for s in p.speakers],
        paths=[s for p in parts for s in p.paths],
        skipped=[s for p in parts for s in p.skipped],
    )
