"""A training-time teacher: Google's pretrained ``speech_embedding`` with a small head trained on the run's labels.

The embedding is openWakeWord's ONNX port of Google's ``speech_embedding`` (Apache-2.0), read with onnxruntime
from two files: ``melspectrogram.onnx`` (int16-scale audio -> 32-bin log-mel frames, one per 10 ms) and
``embedding_model.onnx`` (windows of 76 mel frames -> one 96-d embedding). Each 1 s clip is centred in zeros
(``TeacherConfig.pad_seconds`` each side) and embedded every 8 mel frames (80 ms), so the windows cover the whole
word. A small head (:class:`TeacherHead`) learns the run's labels from those ``[windows, 96]`` sequences.

The teacher sees exactly the student's examples: the data are prepared by :func:`kws.dataset.prepare` with the
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
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kws import __version__
from kws.audio import float_to_int16
from kws.checkpoint import load_versioned
from kws.config import AugmentConfig, ConfigError, DataConfig, FeatureConfig, from_dict, to_dict
from kws.dataset import PreparedData, SplitData, prepare
from kws.errors import KWSError
from kws.evaluate import classification_report, format_report, write_report
from kws.io import atomic_write, ensure_writable_dir

logger = logging.getLogger(__name__)

MISSING_PACKAGE = "the teacher needs openWakeWord's speech embedding: pip install 'kws[teacher]'"
MEL_FILE, EMBEDDING_FILE = "melspectrogram.onnx", "embedding_model.onnx"
PACKAGE = "openwakeword"
PACKAGE_MODELS = ("resources", "models")
SAMPLE_RATE = 16_000  # the embedding's only rate
MEL_BINS = 32
WINDOW_FRAMES = 76  # mel frames per embedding window (775 ms of audio)
WINDOW_STEP = 8  # mel frames between windows (80 ms)
EMBEDDING_DIM = 96
MEL_SCALE, MEL_OFFSET = 0.1, 2.0  # the embedding model expects log-mel * 0.1 + 2 (as openWakeWord feeds it)
INT16_SCALE = 32768.0
EMBED_BATCH_CLIPS = 32
SPLITS = ("train", "validation", "test")
EMBEDDINGS, VIEWS, TEACHER, SOFT_LABELS = "embeddings.npz", "train_views.npz", "teacher.pt", "soft_labels.npz"
TEACHER_FORMAT, TEACHER_VERSION = "kws-teacher", 1


@dataclass(frozen=True)
class TeacherConfig:
    """How the teacher embeds clips and trains its head; saved in ``teacher.pt``.

    Attributes:
        pad_seconds: zeros added before and after each clip before embedding (0.5: a 1 s clip becomes 2 s and
            gives 16 windows, the first and last of which overlap the clip by 275 ms).
        augment_views: extra augmented copies of each training clip (:class:`kws.augment.Augmenter`, default
            waveform augmentation, no context) embedded and added to the head's training set.
        pooling: how the head reduces the ``[windows, 96]`` sequence: ``"mean-max"`` (mean and max over the
            windows of per-window MLP features), ``"attention"`` (learned weights over the windows instead of the
            mean) or ``"flatten"`` (all windows concatenated, position-aware). On the real data (10,778 training
            clips) mean-max and attention were within 0.2 points of validation accuracy of each other and flatten
            about 1 point lower; mean-max is the default (the simpler one, best on validation).
        hidden_size: width of the head's per-window MLP (or of the flattened MLP).
        dropout: dropout in the head.
        epochs: most training epochs; patience: stop after this many epochs without a better validation score.
        batch_size, lr, weight_decay: AdamW settings; label_smoothing: of the cross-entropy.
        seed: head initialisation, batch order and augmentation.
    """

    pad_seconds: float = 0.5
    augment_views: int = 0
    pooling: str = "mean-max"
    hidden_size: int = 128
    dropout: float = 0.3
    epochs: int = 200
    patience: int = 25
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in ("mean-max", "attention", "flatten"):
            raise ConfigError(f"pooling must be 'mean-max', 'attention' or 'flatten', got {self.pooling!r}")
        if self.pad_seconds < 0 or self.augment_views < 0:
            raise ConfigError("need pad_seconds >= 0 and augment_views >= 0")
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1 or self.hidden_size < 1:
            raise ConfigError("need epochs, patience, batch_size and hidden_size >= 1")
        if not (0 <= self.dropout < 1 and 0 <= self.label_smoothing < 1 and self.lr > 0 and self.weight_decay >= 0):
            raise ConfigError("need 0 <= dropout, label_smoothing < 1, lr > 0 and weight_decay >= 0")


def package_models_dir() -> Path:
    """The folder of the two ONNX files inside the installed openWakeWord package (never imported).

    Raises:
        KWSError: the package is not installed.
    """
    try:
        spec = find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise KWSError(MISSING_PACKAGE)
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_MODELS)


def _file_digest(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


class SpeechEmbedding:
    """Google's ``speech_embedding`` (openWakeWord's ONNX port), run with onnxruntime.

    Args:
        models_dir: folder holding ``melspectrogram.onnx`` and ``embedding_model.onnx``; None: the installed
            openWakeWord package's.
        threads: onnxruntime intra-op threads (0: onnxruntime's default, every core).
        pad_seconds: zeros added before and after each clip.

    Raises:
        KWSError: the package is missing (and no folder is given), a file is missing or cannot be loaded.
    """

    def __init__(self, models_dir: str | Path | None = None, threads: int = 0, pad_seconds: float = 0.5) -> None:
        import onnxruntime as ort

        folder = Path(models_dir).expanduser() if models_dir is not None else package_models_dir()
        paths = {name: folder / name for name in (MEL_FILE, EMBEDDING_FILE)}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if missing:
            hint = "" if models_dir is not None else f"; {MISSING_PACKAGE}"
            raise KWSError(f"{folder} has no {' or '.join(missing)}{hint}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(threads, 0)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sessions = {}
        for name, path in paths.items():
            try:
                sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise KWSError(f"cannot load {path}: {message}") from None
        self.folder = folder
        self.pad_samples = round(pad_seconds * SAMPLE_RATE)
        self._mel = sessions[MEL_FILE]
        self._embedding = sessions[EMBEDDING_FILE]
        self._mel_input = self._mel.get_inputs()[0].name
        self._embedding_input = self._embedding.get_inputs()[0].name
        self.fingerprint = {name: _file_digest(path) for name, path in paths.items()}
        """Size and SHA-256 of each ONNX file (part of the cache key)."""

    def mel(self, clip: np.ndarray) -> np.ndarray:
        """Scaled log-mel frames of one int16-scale float32 signal ``[samples]`` -> float32 ``[frames, 32]``.

        One frame per 10 ms (512-sample window in the real model). The model clamps its output to 80 dB below
        the largest value of the *whole input tensor*, so each clip is run alone: batching clips would couple
        them.
        """
        out = self._mel.run(None, {self._mel_input: clip[None].astype(np.float32, copy=False)})[0]
        frames = np.asarray(out, np.float32).reshape(-1, MEL_BINS)
        return frames * np.float32(MEL_SCALE) + np.float32(MEL_OFFSET)

    def windows(self, frames: np.ndarray) -> np.ndarray:
        """``[frames, 32]`` -> ``[windows, 76, 32, 1]``: every 76-frame window, 8 frames apart (80 ms)."""
        if len(frames) < WINDOW_FRAMES:
            raise KWSError(f"clip too short for the speech embedding: {len(frames)} mel frames < {WINDOW_FRAMES}")
        view = np.lib.stride_tricks.sliding_window_view(frames, WINDOW_FRAMES, axis=0)[::WINDOW_STEP]
        return np.ascontiguousarray(view.transpose(0, 2, 1))[..., None]

    def embed(self, audio: np.ndarray, batch_clips: int = EMBED_BATCH_CLIPS, desc: str = "embedding") -> np.ndarray:
        """Embed clips, each centred in ``pad_seconds`` of zeros on both sides.

        Args:
            audio: 16 kHz clips ``[clips, samples]``, int16 or float in [-1, 1] (scaled by 32768 and rounded, so
                a float clip and its int16 version give the same embedding).
            batch_clips: clips per embedding-model call.
            desc: progress-bar label.

        Returns:
            float32 ``[clips, windows, 96]``; ``windows = (frames - 76) // 8 + 1`` for the padded length's mel
            frames (16 for 1 s clips and the default 0.5 s padding).
        """
        from tqdm import tqdm

        audio = np.asarray(audio)
        if audio.ndim != 2:
            raise ValueError(f"expected clips [clips, samples], got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.integer):
            audio = float_to_int16(audio.astype(np.float32, copy=False))
        pad = np.zeros(self.pad_samples, np.float32)
        out: list[np.ndarray] = []
        bar = tqdm(total=len(audio), desc=desc, unit="clip", leave=False, mininterval=1.0, disable=None)
        for start in range(0, len(audio), batch_clips):
            batch = audio[start : start + batch_clips]
            windows = [self.windows(self.mel(np.concatenate([pad, clip.astype(np.float32), pad]))) for clip in batch]
            n_windows = len(windows[0])
            result = self._embedding.run(None, {self._embedding_input: np.concatenate(windows)})[0]
            out.append(np.asarray(result, np.float32).reshape(len(batch), n_windows, EMBEDDING_DIM))
            bar.update(len(batch))
        bar.close()
        if not out:
            n_windows = len(self.windows(self.mel(np.zeros(audio.shape[1] + 2 * self.pad_samples, np.float32))))
            return np.zeros((0, n_windows, EMBEDDING_DIM), np.float32)
        return np.concatenate(out)


class TeacherHead(nn.Module):
    """Logits of the run's labels from a clip's embedding sequence.

    ``forward``: float32 ``[batch, windows, 96]`` -> logits ``[batch, n_labels]``. Every variant starts with a
    LayerNorm of each 96-d embedding.
    """

    def __init__(self, config: TeacherConfig, n_windows: int, n_labels: int) -> None:
        super().__init__()
        self.pooling = config.pooling
        h = config.hidden_size
        self.norm = nn.LayerNorm(EMBEDDING_DIM)
        if config.pooling == "flatten":
            self.frame = nn.Identity()
            self.out = nn.Sequential(
                nn.Flatten(),
                nn.Dropout(config.dropout),
                nn.Linear(n_windows * EMBEDDING_DIM, h),
                nn.GELU(),
                nn.Dropout(config.dropout),
                nn.Linear(h, n_labels),
            )
        else:
            self.frame = nn.Sequential(nn.Dropout(config.dropout / 2), nn.Linear(EMBEDDING_DIM, h), nn.GELU())
            self.score = nn.Linear(h, 1) if config.pooling == "attention" else None
            self.out = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * h, n_labels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.frame(self.norm(x))
        if self.pooling == "flatten":
            return self.out(z)
        if self.score is not None:  # attention: softmax weights over the windows
            first = (torch.softmax(self.score(z), dim=1) * z).sum(1)
        else:
            first = z.mean(1)
        return self.out(torch.cat([first, z.amax(1)], dim=-1))


@torch.no_grad()
def head_logits(head: TeacherHead, embeddings: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """float32 logits ``[clips, n_labels]`` of embeddings ``[clips, windows, 96]`` (eval mode)."""
    head.eval()
    out = [
        head(torch.from_numpy(embeddings[i : i + batch_size])).numpy() for i in range(0, len(embeddings), batch_size)
    ]
    n_labels = head.out[-1].out_features
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, n_labels), np.float32)


def _score(head: TeacherHead, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy)."""
    logits = torch.from_numpy(head_logits(head, x))
    target = torch.from_numpy(y)
    loss = nn.functional.cross_entropy(logits, target).item() if len(y) else 0.0
    return float((logits.argmax(1) == target).float().mean()) if len(y) else 0.0, loss


def train_head(
    config: TeacherConfig,
    n_labels: int,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
) -> tuple[TeacherHead, list[dict[str, Any]]]:
    """Train a head with AdamW; keep the epoch with the best validation accuracy (ties: lower loss).

    Args:
        train_x, val_x: float32 embeddings ``[clips, windows, 96]``; train_y, val_y: int64 label indices.

    Returns:
        the best head (eval mode) and the per-epoch history.
    """
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    head = TeacherHead(config, train_x.shape[1], n_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = math.ceil(len(train_x) / config.batch_size) * config.epochs
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng([config.seed, 1])
    x_all, y_all = torch.from_numpy(train_x), torch.from_numpy(train_y)
    best: tuple[float, float] = (-1.0, math.inf)
    best_state, best_epoch, history = copy.deepcopy(head.state_dict()), 0, []
    if not len(val_y):
        logger.warning("the validation split is empty: the teacher keeps its last epoch")
    bar = tqdm(range(config.epochs), desc="teacher head", unit="epoch", leave=False, mininterval=1.0, disable=None)
    for epoch in bar:
        head.train()
        order = torch.from_numpy(rng.permutation(len(train_x)))
        loss_sum = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = nn.functional.cross_entropy(head(x_all[idx]), y_all[idx], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
        val_acc, val_loss = _score(head, val_x, val_y)
        history.append(
            {"epoch": epoch + 1, "train_loss": loss_sum / len(order), "val_accuracy": val_acc, "val_loss": val_loss}
        )
        bar.set_postfix(val=f"{val_acc:.3f}")
        if not len(val_y) or (val_acc, -val_loss) > (best[0], -best[1]):
            best, best_epoch, best_state = (val_acc, val_loss), epoch + 1, copy.deepcopy(head.state_dict())
        elif epoch + 1 - best_epoch >= config.patience:
            break
    bar.close()
    head.load_state_dict(best_state)
    head.eval()
    logger.info(
        "teacher head (%s): best epoch %d of %d, validation accuracy %.2f%%",
        config.pooling,
        best_epoch,
        len(history),
        100 * best[0],
    )
    return head, history


def _digest(obj: Any) -> str:
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
    return _digest(
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
    return _digest(
        {"embeddings": key, "views": config.augment_views, "seed": config.seed, "augment": to_dict(AugmentConfig())}
    )


def _load_npz(path: Path, key: str) -> dict[str, np.ndarray] | None:
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


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def _augmented_views(
    prepared: PreparedData, embedder: SpeechEmbedding, config: TeacherConfig, sample_rate: int
) -> np.ndarray:
    """``[views, train clips, windows, 96]``: embeddings of ``config.augment_views`` augmented copies."""
    from kws.augment import Augmenter

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
    arrays = _load_npz(out_dir / EMBEDDINGS, key)
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
        _save_npz(out_dir / EMBEDDINGS, {**arrays, "key": np.asarray(key)})
    if config.augment_views:
        vkey = views_key(key, config)
        views = _load_npz(out_dir / VIEWS, vkey)
        if views is not None:
            logger.info("reusing the cached augmented views in %s", out_dir / VIEWS)
            arrays["train_views"] = views["train_views"]
        else:
            started = time.monotonic()
            arrays["train_views"] = _augmented_views(prepared, embedder, config, sample_rate).astype(np.float16)
            seconds += time.monotonic() - started
            _save_npz(out_dir / VIEWS, {"train_views": arrays["train_views"], "key": np.asarray(vkey)})
    return {k: v.astype(np.float32) for k, v in arrays.items()}, seconds


def _report(logits: np.ndarray, data: SplitData, labels: list[str]) -> dict[str, Any]:
    """The ``kws evaluate`` report of a split's teacher logits."""
    report = classification_report(data.labels, logits.argmax(1), labels)
    report["speakers"] = len({s for s, silent in zip(data.speakers, data.silence, strict=True) if not silent})
    report["skipped"] = len(data.skipped)
    return report


@dataclass
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
    full_key = _digest({"embeddings": key, "teacher": to_dict(config)})

    soft = _load_npz(out_dir / SOFT_LABELS, full_key)
    if soft is not None and (out_dir / TEACHER).is_file():
        payload = load_teacher_payload(out_dir / TEACHER)
        if payload.get("key") == full_key:
            logger.info("reusing the teacher in %s (same data, embedding files and teacher config)", out_dir)
            return TeacherResult(out_dir, payload.get("reports", {}), True, 0.0)

    embeddings, seconds = compute_embeddings(prepared, embedder, config, key, out_dir, sample_rate)
    train, val = prepared.splits["train"], prepared.splits["validation"]
    train_x, train_y = embeddings["train"], train.labels
    if "train_views" in embeddings:
        views = embeddings["train_views"]
        train_x = np.concatenate([train_x, views.reshape(-1, *train_x.shape[1:])])
        train_y = np.concatenate([train_y, np.tile(train.labels, len(views))])
    head, history = train_head(config, len(labels), train_x, train_y, embeddings["validation"], val.labels)

    logits = {name: head_logits(head, embeddings[name]) for name in SPLITS}
    reports: dict[str, dict[str, Any]] = {}
    for name in ("validation", "test"):
        data = prepared.splits[name]
        if len(data) == 0:
            logger.warning("the %s split is empty: no report", name)
            continue
        report = _report(logits[name], data, labels)
        report.update({"split": name, "data": list(data_config.roots), "model": "teacher (speech_embedding + head)"})
        write_report(report, out_dir, name, f"teacher ({config.pooling} head), {name} split")
        reports[name] = report
    train_acc = float((logits["train"].argmax(1) == train.labels).mean())
    logger.info("teacher accuracy on its own (clean) training clips: %.2f%%", 100 * train_acc)
    _save_npz(
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
    rows: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = {}
    for i, p in enumerate(stored_paths):
        k = seen.get(p, 0)
        rows[(p, k)] = i
        seen[p] = k + 1
    out = np.full((len(paths), len(stored_labels)), np.nan, np.float32)
    seen.clear()
    for j, p in enumerate(paths):
        k = seen.get(p, 0)
        seen[p] = k + 1
        i = rows.get((p, k))
        if i is not None:
            out[j] = logits[i]
    missing = int(np.isnan(out[:, 0]).sum()) if len(out) else 0
    if missing:
        logger.warning("%d of %d examples have no soft label in %s", missing, len(paths), teacher_dir)
    return out


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
        choices=["mean-max", "attention", "flatten"],
        help="how the head pools the embedding windows (default: %(default)s)",
    )
    g.add_argument(
        "--augment-views",
        type=int,
        default=t.augment_views,
        help="augmented copies of each training clip to embed for the head (default: %(default)s)",
    )
    g.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default: every core; fewer if the machine is shared)"
    )


def student_configs(args: argparse.Namespace) -> tuple[DataConfig, FeatureConfig]:
    """The DataConfig and FeatureConfig ``kws train`` builds from the same options (its defaults elsewhere),
    built by ``kws.train.config_from_args`` itself so that the two can never drift apart."""
    from kws import train as train_cli

    parser = argparse.ArgumentParser(add_help=False)
    train_cli.add_arguments(parser)
    merged = parser.parse_args([])
    for name, value in vars(args).items():
        if name in ("data", "extra_train", "negatives", "labels", "unknown_ratio", "silence_ratio", "seed"):
            setattr(merged, name, value)
    run_config = train_cli.config_from_args(merged)
    return run_config.data, run_config.features


def run(args: argparse.Namespace) -> int:
    if not args.data:
        raise KWSError("--data is required (the Speech Commands folder(s) of the student run)")
    data_config, features = student_configs(args)
    config = dataclasses.replace(
        TeacherConfig(), epochs=args.epochs, pooling=args.head, augment_views=args.augment_views, seed=args.seed
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


if __name__ == "__main__":  # `python -m kws.teacher ...` until `kws teacher` is registered in kws/cli.py
    import sys

    from kws import cli

    cli.COMMANDS.setdefault("teacher", ("kws.teacher", "train the pretrained-embedding teacher, write soft labels"))
    sys.exit(cli.main(["teacher", *sys.argv[1:]]))
