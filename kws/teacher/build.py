"""A training-time teacher: Google's pretrained ``speech_embedding`` with a small head trained on the run's labels.

The embedding is openWakeWord's ONNX port of Google's ``speech_embedding`` (Apache-2.0), read with onnxruntime
from two files: ``melspectrogram.onnx`` (int16-scale audio -> 32-bin log-mel frames, one per 10 ms) and
``embedding_model.onnx`` (windows of 76 mel frames -> one 96-d embedding). Each 1 s clip is centred in zeros
(``TeacherConfig.pad_seconds`` each side) and embedded every 8 mel frames (80 ms), so the windows cover the whole
word. A small head (:class:`TeacherHead`) learns the run's labels from those ``[windows, 96]`` sequences.

The teacher sees exactly the student's examples: the data are prepared by :func:`kws.data.splits.prepare` with the
same :class:`~kws.config.DataConfig`, labels and seed as ``kws train``, and its logits are stored per example,
keyed by ``SplitData.paths``, for :func:`load_soft_labels`.

Writes to ``--out``:

* ``embeddings.npz`` (and ``train_views.npz`` with augmented views): the cached embeddings, reused while the
  data, the ONNX files and the embedding settings stay the same;
* ``teacher.pt``: the head's weights, its :class:`TeacherConfig`, the labels, the ``DataConfig`` and the reports;
* ``soft_labels.npz``: ``paths`` [n] str, ``logits`` float32 [n, n_labels], ``labels`` [n_labels] str, plus
  ``splits`` [n] str, ``targets`` int64 [n] and ``key`` (the cache key);
* ``validation.json`` / ``test.json`` and their confusion matrices (the ``kws evaluate`` report format).

The files come from the installed ``openwakeword`` package (``pip install 'kws[teacher]'``; only its model
files are read, the package is never imported) or from ``--embedding-models DIR``. Training-time only:
nothing at run time needs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kws import __version__
from kws.config import TEACHER_POOLINGS, DataConfig, FeatureConfig, TeacherConfig, from_dict, to_dict
from kws.constants import SPLITS
from kws.data.splits import prepare
from kws.errors import KWSError
from kws.io import atomic_write, ensure_writable_dir
from kws.model.checkpoint import load_versioned
from kws.teacher.cache import SOFT_LABELS, compute_embeddings, digest, embedding_key, load_npz, save_npz
from kws.teacher.embedding import EMBEDDING_FILE, MEL_FILE, SAMPLE_RATE, SpeechEmbedding
from kws.teacher.head import TeacherHead, head_logits, out_of_fold_logits, train_head, with_views
from kws.train.evaluate import accuracy, format_report, split_report, write_report

logger = logging.getLogger(__name__)

TEACHER = "teacher.pt"
TEACHER_FORMAT, TEACHER_VERSION = "kws-teacher", 1


@dataclass(frozen=True)
class TeacherResult:
    """What :func:`build_teacher` produced.

    Attributes:
        out_dir: the teacher folder.
        reports: ``validation`` / ``test`` classification reports (empty splits are absent).
        reused: True when the soft labels were already there for this data and config (nothing was trained).
        embed_seconds: time spent embedding in this call (0 when the embeddings were cached).
    """

    out_dir: Path
    reports: dict[str, dict[str, Any]]
    reused: bool
    embed_seconds: float


def build_teacher(
    data_config: DataConfig,
    config: TeacherConfig,
    out_dir: str | Path,
    data_seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    clip_samples: int = SAMPLE_RATE,
    embedding_models: str | Path | None = None,
    threads: int = 0,
) -> TeacherResult:
    """Prepare the data as ``kws train`` does, embed it (or reuse the cache), train the head, write soft labels.

    Args:
        data_config, data_seed, sample_rate, clip_samples: exactly what the student run uses
            (``RunConfig.data``, ``TrainConfig.seed``, ``FeatureConfig.sample_rate`` / ``clip_samples``).
        config: the teacher's settings.
        out_dir: where the cache, ``teacher.pt``, ``soft_labels.npz`` and the reports go.
        embedding_models: folder of the two ONNX files (None: the installed openWakeWord package).
        threads: CPU threads for onnxruntime and torch (0: every core).
    """
    if sample_rate != SAMPLE_RATE:
        raise KWSError(f"the speech embedding works at {SAMPLE_RATE} Hz, the run at {sample_rate} Hz")
    embedder = SpeechEmbedding(embedding_models, threads=threads, pad_seconds=config.pad_seconds)
    out_dir = ensure_writable_dir(out_dir)
    torch.set_num_threads(threads or os.cpu_count() or 1)
    prepared = prepare(data_config, sample_rate, clip_samples, data_seed, SPLITS)
    labels = prepared.labels
    if len(prepared.splits["train"]) == 0:
        raise KWSError("the training split is empty")
    key = embedding_key(prepared, data_config, data_seed, embedder, config)
    full_key = digest({"embeddings": key, "teacher": to_dict(config)})

    soft = load_npz(out_dir / SOFT_LABELS, full_key)
    if soft is not None and (out_dir / TEACHER).is_file():
        payload = load_teacher_payload(out_dir / TEACHER)
        if payload.get("key") == full_key:
            logger.info("reusing the teacher in %s (same data, embedding files and teacher config)", out_dir)
            return TeacherResult(out_dir, payload.get("reports", {}), True, 0.0)

    embeddings, seconds = compute_embeddings(prepared, embedder, config, key, out_dir, sample_rate)
    train, val = prepared.splits["train"], prepared.splits["validation"]
    views = embeddings.get("train_views")
    train_x, train_y = with_views(embeddings["train"], train.labels, views)
    head, history = train_head(config, len(labels), train_x, train_y, embeddings["validation"], val.labels)

    logits = {name: head_logits(head, embeddings[name]) for name in SPLITS}
    if config.soft_label_folds >= 2:  # the training clips' soft labels out of fold (TeacherConfig)
        oof = out_of_fold_logits(config, len(labels), embeddings["train"], train.labels, train.speakers, views,
                                 embeddings["validation"], val.labels)  # fmt: skip
        missing = np.isnan(oof[:, 0])
        oof[missing] = logits["train"][missing]
        logger.info("out-of-fold teacher accuracy on the training clips: %.2f%%", 100 * accuracy(oof, train.labels))
        logits["train"] = oof
    reports: dict[str, dict[str, Any]] = {}
    for name in ("validation", "test"):
        data = prepared.splits[name]
        if len(data) == 0:
            logger.warning("the %s split is empty: no report", name)
            continue
        report = split_report(data, logits[name], labels)
        report.update({"split": name, "data": list(data_config.roots), "model": "teacher (speech_embedding + head)"})
        write_report(report, out_dir, name, f"teacher ({config.pooling} head), {name} split")
        reports[name] = report
    train_acc = accuracy(logits["train"], train.labels)
    logger.info("teacher accuracy on the (clean) training clips' soft labels: %.2f%%", 100 * train_acc)
    save_npz(
        out_dir / SOFT_LABELS,
        {
            "paths": np.asarray([p for name in SPLITS for p in prepared.splits[name].paths], dtype=str),
            "logits": np.concatenate([logits[name] for name in SPLITS]),
            "labels": np.asarray(labels, dtype=str),
            "splits": np.asarray([name for name in SPLITS for _ in prepared.splits[name].paths], dtype=str),
            "targets": np.concatenate([prepared.splits[name].labels for name in SPLITS]),
            "key": np.asarray(full_key),
        },
    )
    payload = {
        "format": TEACHER_FORMAT,
        "version": TEACHER_VERSION,
        "kws_version": __version__,
        "config": to_dict(config),
        "labels": labels,
        "data": to_dict(data_config),
        "data_seed": data_seed,
        "sample_rate": sample_rate,
        "clip_samples": clip_samples,
        "n_windows": int(train_x.shape[1]),
        "head": head.state_dict(),
        "key": full_key,
        "embedding_key": key,
        "embedding_models": embedder.fingerprint,
        "history": history,
        "train_accuracy": train_acc,
        "reports": reports,
        "embed_seconds": seconds,
        "data_summary": prepared.summary,
    }
    atomic_write(out_dir / TEACHER, lambda tmp: torch.save(payload, tmp))
    return TeacherResult(out_dir, reports, False, seconds)


def load_teacher_payload(path: str | Path) -> dict[str, Any]:
    """The dict saved in ``teacher.pt`` (``weights_only`` loading); raises KWSError for anything else."""
    return load_versioned(path, TEACHER_FORMAT, TEACHER_VERSION, "teacher checkpoint")


def load_teacher(path: str | Path) -> tuple[TeacherHead, TeacherConfig, list[str], dict[str, Any]]:
    """Rebuild the head (eval mode) from ``teacher.pt``: ``(head, config, labels, payload)``."""
    payload = load_teacher_payload(path)
    config = from_dict(TeacherConfig, payload["config"])
    head = TeacherHead(config, int(payload["n_windows"]), len(payload["labels"]))
    head.load_state_dict(payload["head"])
    head.eval()
    return head, config, list(payload["labels"]), payload


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, t = DataConfig(), TeacherConfig()
    g = parser.add_argument_group("data (use the same options as the student's `kws train`)")
    g.add_argument(
        "--data",
        nargs="+",
        action="extend",
        metavar="DIR",
        help="Speech Commands folder(s), as for `kws train --data`",
    )
    g.add_argument("--extra-train", nargs="+", action="extend", default=[], metavar="DIR", help="as `kws train`")
    g.add_argument(
        "--negatives",
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="folder(s) of non-keyword speech, as for `kws train --negatives`",
    )
    g.add_argument("--labels", default=d.labels, help="label set, as for `kws train` (default: %(default)s)")
    g.add_argument("--unknown-ratio", type=float, default=d.unknown_ratio, help="as `kws train` (default: %(default)s)")
    g.add_argument("--silence-ratio", type=float, default=d.silence_ratio, help="as `kws train` (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="the student's --seed (splits) and the head's (default: 0)")
    g = parser.add_argument_group("teacher")
    g.add_argument("--out", type=Path, default=Path("runs/teacher"), help="teacher folder (default: %(default)s)")
    g.add_argument(
        "--embedding-models",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder with {MEL_FILE} and {EMBEDDING_FILE} (default: those of the installed openwakeword package)",
    )
    g.add_argument("--epochs", type=int, default=t.epochs, help="most head epochs (default: %(default)s)")
    g.add_argument(
        "--head",
        default=t.pooling,
        choices=list(TEACHER_POOLINGS),
        help="how the head pools the embedding windows (default: %(default)s)",
    )
    g.add_argument(
        "--augment-views",
        type=int,
        default=t.augment_views,
        help="augmented copies of each training clip to embed for the head (default: %(default)s)",
    )
    g.add_argument(
        "--soft-label-folds",
        type=int,
        default=t.soft_label_folds,
        metavar="K",
        help="training clips' soft labels out of fold: each of K speaker folds labelled by a head trained on the "
        "others (0: by the head trained on them all; default: %(default)s)",
    )
    g.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default: every core; fewer if the machine is shared)"
    )
    from kws.teacher import verifier_cli

    verifier_cli.add_arguments(parser)


def student_configs(args: argparse.Namespace) -> tuple[DataConfig, FeatureConfig]:
    """The DataConfig and FeatureConfig ``kws train`` builds from the same options (its defaults elsewhere),
    built by ``kws.train.cli.config_from_args`` itself so that the two can never drift apart."""
    from kws.train import cli as train_cli

    parser = argparse.ArgumentParser(add_help=False)
    train_cli.add_arguments(parser)
    merged = parser.parse_args([])
    for name, value in vars(args).items():
        if name in ("data", "extra_train", "negatives", "labels", "unknown_ratio", "silence_ratio", "seed"):
            setattr(merged, name, value)
    run_config = train_cli.config_from_args(merged)
    return run_config.data, run_config.features


def run(args: argparse.Namespace) -> int:
    if args.export_verifier is not None:
        from kws.teacher import verifier_cli

        return verifier_cli.run(args)
    if not args.data:
        raise KWSError("--data is required (the Speech Commands folder(s) of the student run)")
    data_config, features = student_configs(args)
    config = dataclasses.replace(
        TeacherConfig(),
        epochs=args.epochs,
        pooling=args.head,
        augment_views=args.augment_views,
        seed=args.seed,
        soft_label_folds=args.soft_label_folds,
    )
    result = build_teacher(
        data_config,
        config,
        args.out,
        data_seed=args.seed,
        sample_rate=features.sample_rate,
        clip_samples=features.clip_samples,
        embedding_models=args.embedding_models,
        threads=args.threads,
    )
    for name, report in result.reports.items():
        print(f"teacher, {name} split: {format_report(report)}")
    if result.embed_seconds:
        print(f"embedding: {result.embed_seconds:.1f} s")
    print(f"teacher: {result.out_dir / TEACHER}{' (reused)' if result.reused else ''}")
    print(f"soft labels: {result.out_dir / SOFT_LABELS}")
    return 0


if __name__ == "__main__":  # `python -m kws.teacher.build ...` until `kws teacher` is registered in kws/cli.py
    import sys

    from kws import cli

    cli.COMMANDS.setdefault(
        "teacher", ("kws.teacher.build", "train the pretrained-embedding teacher, write soft labels")
    )
    sys.exit(cli.main(["teacher", *sys.argv[1:]]))
