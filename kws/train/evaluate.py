"""Evaluate a checkpoint: accuracy, per-class precision/recall with 95% confidence intervals, a confusion-matrix
PNG and a JSON report.

Any split of the training data, or every clip of any Speech Commands folder (``--split all``), e.g. the
official 12-class test archive. Words outside the checkpoint's labels count as ``_unknown_``.

A split is read with the split rule the checkpoint's own training used (the official lists and hash, or the
salted speaker hash when a test archive was among its folders), whatever folders are given here, so a clip the
training learnt from is never scored as ``test``. Every accuracy and recall comes with its 95% Wilson score
interval.

examples:
  kws evaluate runs/v2/best.pt --data speech_commands_test_set_v0.02 --split all
  kws evaluate runs/small/best.pt --data ARCHIVE V1_SAMPLE --split test --out runs/small/eval
"""

# The module docstring above is `kws evaluate --help`. The loader shared with kws export and kws bench is
# kws.train.evaluation_data; accuracy() below is the one accuracy of kws.

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kws.constants import SPLITS
from kws.data.audio import int16_to_float
from kws.data.layout import SPLIT_MODES
from kws.data.splits import SplitData
from kws.errors import KWSError
from kws.io import atomic_write, clean_stale_temporaries, ensure_writable_dir
from kws.model.checkpoint import model_from_checkpoint
from kws.model.network import KWSModel

# the evaluation loader's names, re-exported: ``kws.train.evaluate`` is where kws export and kws bench find them
from kws.train.evaluation_data import EvaluationData as EvaluationData
from kws.train.evaluation_data import EvaluationError, load_evaluation_data
from kws.train.evaluation_data import evaluation_data_config as evaluation_data_config
from kws.train.evaluation_data import resolve_split_mode as resolve_split_mode

logger = logging.getLogger(__name__)

EVAL_BATCH = 256
REPORT = "report"
REPORT_JSON, REPORT_PNG = f"{REPORT}.json", f"{REPORT}_confusion.png"
"""What `kws evaluate` writes into its output folder (see :func:`write_report`)."""

CONFIDENCE_Z = 1.959963984540054
"""Standard normal quantile of a two-sided 95% interval."""

# ------------------------------------------------------------------------------------ confidence intervals


def wilson_interval(successes: int, trials: int, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default: 95%).

    Unlike the normal approximation it stays inside [0, 1] and is sensible for proportions near 0 or 1 and for
    small ``trials``. With no trials every proportion is possible: ``(0.0, 1.0)``.

    Example: 82 correct of 100 gives about (0.733, 0.883).
    """
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at the ends, no rounding residue
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def format_interval(interval: Sequence[float] | None, digits: int = 1) -> str:
    """``"73.3-88.3"`` (percent, no sign) of a ``(low, high)`` fraction pair; ``"n/a"`` for None."""
    if interval is None:
        return "n/a"
    low, high = interval
    return f"{100 * low:.{digits}f}-{100 * high:.{digits}f}"


def format_with_interval(value: float | None, interval: Sequence[float] | None, digits: int = 1) -> str:
    """``"82.0% (73.3-88.3)"``: a proportion and its confidence interval, in percent."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{100 * value:.{digits}f}%"
    return text if interval is None else f"{text} ({format_interval(interval, digits)})"


def check_output_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and make sure a file can be created in it (EvaluationError otherwise)."""
    ensure_writable_dir(out_dir, EvaluationError)


# ----------------------------------------------------------------------------------------------- scoring


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


def accuracy(predicted: np.ndarray, labels: np.ndarray, empty: float = math.nan) -> float:
    """The share of clips classified as their label: the one accuracy of kws (reports, teacher, export, bench).

    Args:
        predicted: class scores ``[clips, n_labels]`` (logits or probabilities: the top class is the prediction)
            or predicted class indices ``[clips]``.
        labels: true class indices ``[clips]``.
        empty: the value for no clips (NaN: undefined; reports use 0.0).

    Returns:
        a fraction in [0, 1] (``correct / clips``).
    """
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if predicted.ndim == labels.ndim + 1:
        predicted = predicted.argmax(-1)
    if predicted.shape != labels.shape:
        raise ValueError(f"predictions {predicted.shape} do not match labels {labels.shape}")
    return int(np.count_nonzero(predicted == labels)) / len(labels) if len(labels) else float(empty)


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true, cols: predicted).

    Accuracy, precision and recall come with their 95% Wilson score intervals (``*_ci95``: ``[low, high]``).
    """
    n = len(labels)
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = {}
    for i, label in enumerate(labels):
        tp, support, predicted = int(cm[i, i]), int(cm[i].sum()), int(cm[:, i].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "precision_ci95": list(wilson_interval(tp, predicted)),
            "recall": float(recall),
            "recall_ci95": list(wilson_interval(tp, support)),
            "f1": float(f1),
            "support": support,
        }
    correct, clips = int(np.trace(cm)), int(cm.sum())
    return {
        "accuracy": accuracy(y_pred, y_true, empty=0.0),
        "accuracy_ci95": list(wilson_interval(correct, clips)),
        "clips": clips,
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
    accuracy = format_with_interval(report["accuracy"], report.get("accuracy_ci95"), 2)
    ax.set_title(f"{title}\naccuracy {accuracy} (95% CI) on {report['clips']} clips", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def split_report(data: SplitData, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Classification report of class scores ``[clips, n_labels]`` (any model's) on one loaded split, with its
    speaker count (silence excluded) and the number of unreadable clips skipped."""
    report = classification_report(data.labels, scores.argmax(1), labels)
    report["speakers"] = len({s for s, sil in zip(data.speakers, data.silence, strict=True) if not sil})
    report["skipped"] = len(data.skipped)
    return report


def evaluate_split(model: KWSModel, data: SplitData, labels: list[str]) -> dict[str, Any]:
    """Classification report of ``model`` on one loaded split (:func:`split_report` of its probabilities)."""
    return split_report(data, predict(model, data.audio), labels)


def write_report(report: dict[str, Any], out_dir: Path, name: str, title: str) -> tuple[Path, Path]:
    """``out_dir/NAME.json`` and ``out_dir/NAME_confusion.png``."""
    json_path, png_path = out_dir / f"{name}.json", out_dir / f"{name}_confusion.png"
    atomic_write(json_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    plot_confusion(report, png_path, title)
    return json_path, png_path


def format_report(report: dict[str, Any]) -> str:
    """A human-readable per-class table, with 95% confidence intervals."""
    ci = report.get("accuracy_ci95")
    accuracy = f"{100 * report['accuracy']:.2f}%" + (f" (95% CI {format_interval(ci, 2)}%)" if ci else "")
    lines = [
        f"accuracy {accuracy} on {report['clips']} clips ({report.get('speakers', '?')} speakers)",
        f"{'class':<12} {'precision (95% CI)':>20} {'recall (95% CI)':>20} {'n':>5}",
    ]
    if report.get("split_mode"):
        how = f" ({report['split_mode_how']})" if report.get("split_mode_how") else ""
        lines.insert(1, f"split {report.get('split', '?')}, split mode {report['split_mode']}{how}")
    for label, m in report["per_class"].items():
        precision = format_with_interval(m["precision"], m.get("precision_ci95"))
        recall = format_with_interval(m["recall"], m.get("recall_ci95"))
        lines.append(f"{label:<12} {precision:>20} {recall:>20} {m['support']:>5}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by `kws train` (e.g. runs/kws/best.pt)")
    parser.add_argument(
        "--data",
        nargs="+",
        action="extend",
        required=True,
        metavar="DIR",
        help="Speech Commands folder(s): full dataset, test archive, or several combined (repeatable)",
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
        choices=["auto", *SPLIT_MODES],
        help="how splits are assigned: auto = as the checkpoint's training did; another mode is refused "
        "unless --split all (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: next to the checkpoint, eval-SPLIT/)"
    )


def run(args: argparse.Namespace) -> int:
    model, labels, payload = model_from_checkpoint(args.checkpoint)
    out_dir = args.out or Path(args.checkpoint).parent / f"eval-{args.split}"
    check_output_dir(out_dir)  # before the slow part: a result that cannot be saved is not computed
    clean_stale_temporaries(out_dir, names=[REPORT_JSON, REPORT_PNG])  # left by a killed earlier run
    evaluation = load_evaluation_data(payload, args.data, args.split, args.split_mode)
    report = evaluate_split(model, evaluation.data, labels)
    report.update(
        {
            "checkpoint": str(args.checkpoint),
            "data": list(args.data),
            "split": args.split,
            "split_mode": evaluation.split_mode,
            "split_mode_how": evaluation.split_mode_how,
        }
    )
    print(format_report(report), flush=True)  # shown even if the report cannot be written
    try:
        json_path, png_path = write_report(report, out_dir, REPORT, f"{Path(args.checkpoint).name} on {args.split}")
    except (KWSError, OSError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise EvaluationError(
            f"the figures above were not saved: writing the report to {out_dir} failed: {detail}"
        ) from None
    print(f"report: {json_path}\nconfusion matrix: {png_path}")
    return 0
