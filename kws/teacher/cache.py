"""The teacher's files besides ``teacher.pt``: the embedding caches and the soft labels the student learns from.

In a ``kws teacher --out`` folder:

* ``embeddings.npz`` (and ``train_views.npz`` with augmented views): the cached embeddings, float16
  ``[clips, windows, 96]`` per split plus ``key``, reused while the data, the ONNX files and the embedding
  settings stay the same (:func:`embedding_key`, :func:`views_key`);
* ``soft_labels.npz``: ``paths`` [n] str, ``logits`` float32 [n, n_labels], ``labels`` [n_labels] str, plus
  ``splits`` [n] str, ``targets`` int64 [n] and ``key`` (the cache key), read by :func:`load_soft_labels`.

Every file is written atomically (:func:`kws.io.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kws.config import AugmentConfig, DataConfig, TeacherConfig, to_dict
from kws.data.splits import PreparedData, SplitData
from kws.errors import KWSError
from kws.io import atomic_write
from kws.teacher.embedding import SpeechEmbedding

logger = logging.getLogger(__name__)

EMBEDDINGS, VIEWS, SOFT_LABELS = "embeddings.npz", "train_views.npz", "soft_labels.npz"


def digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj``'s sorted-key JSON: the cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _split_digest(data: SplitData) -> str:
    h = hashlib.sha256()
    h.update("\n".join(data.paths).encode())
    h.update(data.labels.tobytes())
    h.update(np.ascontiguousarray(data.audio).tobytes())
    return h.hexdigest()


def embedding_key(
    prepared: PreparedData, data_config: DataConfig, data_seed: int, embedder: SpeechEmbedding, config: TeacherConfig
) -> str:
    """Cache key of the clean embeddings: the DataConfig, the seed, every split's paths, labels and audio, the
    ONNX files' sizes and hashes, and the padding."""
    return digest(
        {
            "data": to_dict(data_config),
            "data_seed": data_seed,
            "labels": prepared.labels,
            "splits": {name: _split_digest(split) for name, split in prepared.splits.items()},
            "models": embedder.fingerprint,
            "pad_seconds": config.pad_seconds,
        }
    )


def views_key(key: str, config: TeacherConfig) -> str:
    """Cache key of the augmented training views: the clean key, the number of views, the seed and the
    augmentation settings."""
    return digest(
        {"embeddings": key, "views": config.augment_views, "seed": config.seed, "augment": to_dict(AugmentConfig())}
    )


def load_npz(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of ``path`` if it exists and was written for ``key`` (else None)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return {name: f[name] for name in f.files}
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable cache %s (%s)", path, exc)
        return None


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` (``np.savez``, atomically)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _augmented_views(
    prepared: PreparedData, embedder: SpeechEmbedding, config: TeacherConfig, sample_rate: int
) -> np.ndarray:
    """``[views, train clips, windows, 96]``: embeddings of ``config.augment_views`` augmented copies."""
    from kws.data.augment import Augmenter

    train = prepared.splits["train"]
    augmenter = Augmenter(AugmentConfig(), sample_rate, prepared.noises, [])
    views = []
    for view in range(config.augment_views):
        rng = np.random.default_rng([config.seed, 1000 + view])
        audio = np.stack(
            [
                augmenter.clip(clip, bool(silent), rng)
                for clip, silent in zip(train.float_audio(slice(None)), train.silence, strict=True)
            ]
        )
        views.append(embedder.embed(audio, desc=f"embedding train view {view + 1}"))
    return np.stack(views)


def compute_embeddings(
    prepared: PreparedData,
    embedder: SpeechEmbedding,
    config: TeacherConfig,
    key: str,
    out_dir: Path,
    sample_rate: int,
) -> tuple[dict[str, np.ndarray], float]:
    """Every split's embeddings (``[clips, windows, 96]``, float16-rounded), from the cache where it holds ``key``.

    The clean embeddings are cached in ``embeddings.npz``, augmented views in ``train_views.npz`` (keyed by
    :func:`views_key`), so changing only the views keeps the clean ones.

    Returns:
        the arrays (``train``, ``validation``, ``test`` and, with augmented views, ``train_views``
        ``[views, clips, windows, 96]``) and the seconds spent embedding in this call (0 when all was cached).
    """
    seconds = 0.0
    arrays = load_npz(out_dir / EMBEDDINGS, key)
    if arrays is not None:
        logger.info("reusing the cached embeddings in %s", out_dir / EMBEDDINGS)
        arrays.pop("key")
    else:
        started = time.monotonic()
        arrays = {
            name: embedder.embed(split.audio, desc=f"embedding {name}") for name, split in prepared.splits.items()
        }
        seconds += time.monotonic() - started
        n_clips = sum(len(split) for split in prepared.splits.values())
        logger.info(
            "embedded %d clips in %.1f s (%.1f ms per clip)", n_clips, seconds, 1000 * seconds / max(n_clips, 1)
        )
        arrays = {k: v.astype(np.float16) for k, v in arrays.items()}
        save_npz(out_dir / EMBEDDINGS, {**arrays, "key": np.asarray(key)})
    if config.augment_views:
        vkey = views_key(key, config)
        views = load_npz(out_dir / VIEWS, vkey)
        if views is not None:
            logger.info("reusing the cached augmented views in %s", out_dir / VIEWS)
            arrays["train_views"] = views["train_views"]
        else:
            started = time.monotonic()
            arrays["train_views"] = _augmented_views(prepared, embedder, config, sample_rate).astype(np.float16)
            seconds += time.monotonic() - started
            save_npz(out_dir / VIEWS, {"train_views": arrays["train_views"], "key": np.asarray(vkey)})
    return {k: v.astype(np.float32) for k, v in arrays.items()}, seconds


def match_rows(stored_paths: Sequence[str], paths: Sequence[str]) -> np.ndarray:
    """int64 ``[len(paths)]``: the row of ``stored_paths`` holding each of ``paths``, -1 where none does. A path that
    occurs several times (e.g. two noise slices at the same offset with different gains) is matched occurrence by
    occurrence, in order."""
    rows: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = {}
    for i, p in enumerate(stored_paths):
        k = seen.get(p, 0)
        rows[(p, k)] = i
        seen[p] = k + 1
    out = np.full(len(paths), -1, np.int64)
    seen.clear()
    for j, p in enumerate(paths):
        k = seen.get(p, 0)
        seen[p] = k + 1
        out[j] = rows.get((p, k), -1)
    return out


def load_soft_labels(teacher_dir: str | Path, labels: Sequence[str], paths: Sequence[str]) -> np.ndarray:
    """The teacher's logits for the student's examples, aligned with ``paths``.

    Args:
        teacher_dir: a ``kws teacher --out`` folder.
        labels: the student's label list (must equal the teacher's, in order).
        paths: the student's ``SplitData.paths``. A path that occurs several times (e.g. two noise slices at
            the same offset with different gains) is matched occurrence by occurrence, in order.

    Returns:
        float32 ``[len(paths), n_labels]`` logits (not probabilities); rows of paths the teacher never saw are
        NaN (``np.isnan(out[:, 0])`` is the mask of missing rows).

    Raises:
        KWSError: no soft labels in the folder, or the labels differ from the student's.
    """
    path = Path(teacher_dir) / SOFT_LABELS
    if not path.is_file():
        raise KWSError(f"no {SOFT_LABELS} in {teacher_dir}: run `kws teacher --out {teacher_dir}` first")
    try:
        with np.load(path, allow_pickle=False) as f:
            stored_paths, logits, stored_labels = f["paths"].tolist(), f["logits"], f["labels"].tolist()
    except (OSError, ValueError, KeyError) as exc:
        raise KWSError(f"{path} is not a readable soft-label file ({exc})") from None
    if list(labels) != stored_labels:
        raise KWSError(
            f"the teacher's labels ({','.join(stored_labels)}) differ from the student's ({','.join(labels)}); "
            "rerun `kws teacher` with the same --data and --labels"
        )
    rows = match_rows(stored_paths, paths)
    out = np.full((len(paths), len(stored_labels)), np.nan, np.float32)
    out[rows >= 0] = logits[rows[rows >= 0]]
    missing = int(np.isnan(out[:, 0]).sum()) if len(out) else 0
    if missing:
        logger.warning("%d of %d examples have no soft label in %s", missing, len(paths), teacher_dir)
    return out


def load_embedding_targets(teacher_dir: str | Path, paths: Sequence[str]) -> np.ndarray:
    """The teacher's mean speech embedding of each of the student's examples (``kws train --embed-distill-weight``),
    aligned with ``paths`` and standardised per dimension over the rows found.

    The clean clips' cached embeddings (``embeddings.npz``: ``[clips, windows, 96]`` per split) are averaged over
    the windows; their rows follow ``soft_labels.npz``'s ``paths`` (both are written split by split, in order).

    Returns:
        float32 ``[len(paths), dims]`` (zero mean, unit variance per dimension); NaN rows for paths the teacher
        never saw.

    Raises:
        KWSError: the folder lacks either file, or they do not belong together.
    """
    folder = Path(teacher_dir)
    for name in (SOFT_LABELS, EMBEDDINGS):
        if not (folder / name).is_file():
            raise KWSError(f"no {name} in {teacher_dir}: run `kws teacher --out {teacher_dir}` first")
    try:
        with np.load(folder / SOFT_LABELS, allow_pickle=False) as f:
            stored_paths, splits = f["paths"].tolist(), f["splits"].tolist()
        with np.load(folder / EMBEDDINGS, allow_pickle=False) as f:
            names = list(dict.fromkeys(splits))
            means = np.concatenate([f[name].astype(np.float32).mean(1) for name in names])
    except (OSError, ValueError, KeyError) as exc:
        raise KWSError(f"{folder / EMBEDDINGS} does not match {folder / SOFT_LABELS} ({exc})") from None
    if len(means) != len(stored_paths):
        raise KWSError(
            f"{folder / EMBEDDINGS} holds {len(means)} clips but {folder / SOFT_LABELS} {len(stored_paths)}: "
            f"rerun `kws teacher --out {teacher_dir}`"
        )
    rows = match_rows(stored_paths, paths)
    out = np.full((len(paths), means.shape[1]), np.nan, np.float32)
    found = means[rows[rows >= 0]]
    if len(found):
        out[rows >= 0] = (found - found.mean(0)) / np.maximum(found.std(0), 1e-6)
    missing = int((rows < 0).sum())
    if missing:
        logger.warning("%d of %d examples have no teacher embedding in %s", missing, len(paths), teacher_dir)
    return out
