"""The verifier's head trained for its real job: confirming first-stage detections in streams.

The teacher's head (:mod:`kws.teacher.build`) learnt from clean 1 s clips. A verifier instead sees the
``window_ms`` of stream audio ending ``window_end_ms`` after a first-stage detection: the keyword somewhere in
noise and neighbouring words, or, for a false accept, whatever made the first stage fire. This module collects
exactly such windows and fine-tunes the teacher's head on their (frozen) speech embeddings:

* training streams (:class:`kws.train.streams.StreamBuilder`) built from the **training split** and the
  **training half** of the ``--negatives`` recordings (:func:`kws.data.layout.negative_split`; never the
  calibration third, never the bench's held-out part), each over its own noise bed, SNR and gains: keyword-rich
  streams (``keyword_minutes``) and negative-rich ones (``negative_minutes``, every recording drawn many times,
  each time in a new remix);
* every stream runs through the first stage (``MODEL``, the runtime's own :class:`~kws.runtime.KeywordSpotter`
  at its own settings but a low ``first_stage_threshold``, so that near-misses are found too);
* windows (:func:`stream_windows`) at each detection: inside a planted keyword (its start to
  ``MATCH_SECONDS`` after its word end) the label is that keyword (also when the first stage named another one,
  so that the wrong name is rejected); anywhere else the label is ``_unknown_`` (a false accept: a hard
  negative, weighted ``hard_weight``, also at ``jitter_ms`` shifts); planted keywords the first stage missed
  and planted ``_unknown_`` clips give windows at a detection's typical delay after the word;
* the embeddings come from the same graph the verifier file runs (``pad_seconds`` zeros on both sides, 80 ms
  windows: :class:`~kws.teacher.embedding.SpeechEmbedding`), the head starts from the teacher's weights and is
  fine-tuned with a weighted cross-entropy on them and, in batches of their own, on the teacher's own training
  clips (its cache: so that it keeps what it knew of the keywords); optionally the epoch of lowest loss on
  held-out streams (``holdout``, whole streams) is kept.

The result is a head file in ``teacher.pt``'s format (:data:`VERIFIER_HEAD`, with a ``verifier_training`` entry
saying how it was made), which :func:`kws.teacher.verifier_export.export_verifier` writes as a verifier file
whose metadata carries that entry. Training-time only (torch).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kws.config import DataConfig, FeatureConfig, StreamTrainConfig, to_dict
from kws.constants import UNKNOWN_LABEL
from kws.data.audio import float_to_int16
from kws.errors import KWSError
from kws.format import POOL_MEAN
from kws.train.streams import KIND_KEYWORD, KIND_UNKNOWN, StreamBuilder, TrainingStream

logger = logging.getLogger(__name__)

VERIFIER_HEAD = "verifier_head.pt"
"""The fine-tuned head, written beside the verifier file (``teacher.pt``'s format)."""
MATCH_SECONDS = 1.0
"""A detection from a planted keyword's start to this long after its word end is that keyword's (as the bench's
``--tolerance 1``)."""
DELAY_SECONDS = (-0.05, 0.2)
"""Where missed keywords and ``_unknown_`` clips are "detected": this long after their end (s, uniform), around
the first stage's own delay."""
BLOCK_SECONDS = 1.0
"""Audio given to the first stage per call (s)."""
KIND_HIT, KIND_MISSED, KIND_FALSE, KIND_UNKNOWN_CLIP = "detected keyword", "missed keyword", "false accept", "unknown"
WINDOW_KINDS = (KIND_HIT, KIND_MISSED, KIND_FALSE, KIND_UNKNOWN_CLIP)


@dataclass(frozen=True)
class VerifierTrainConfig:
    """How the verifier's head is trained (:func:`train_verifier_head`); saved in its metadata.

    Attributes:
        keyword_minutes, negative_minutes: training streams of each mix (minutes).
        stream_seconds: length of each stream (s).
        first_stage_threshold: the first stage's threshold while collecting (low: near-misses count too).
        jitter_ms: shifts of each false accept's window (ms; 0 is the detection itself).
        unknown_share: at most this many ``_unknown_``-clip windows per keyword window.
        hard_weight: loss weight of false-accept windows (the others: 1).
        teacher_clips: also train on the teacher's own (clean and augmented) training clips, in batches of their
            own, so that the head keeps what it knew of the keywords.
        holdout: share of the streams held out to choose the epoch (0: none, the last epoch is kept).
        epochs, patience, batch_size, lr, weight_decay: the fine-tuning (AdamW, constant rate).

    The defaults were chosen on the calibration stream (recall within 1 point, false accepts) and on held-out
    training streams (share of false-accept windows confirmed): fine-tuning on the windows alone, or with a
    weight of 3, 30 or 100 on false accepts, confirmed more of them at the same recall.
        seed: streams, holdout and batches.
    """

    keyword_minutes: float = 120.0
    negative_minutes: float = 240.0
    stream_seconds: float = 30.0
    first_stage_threshold: float = 0.2
    jitter_ms: tuple[float, ...] = (-40.0, 0.0, 40.0)
    unknown_share: float = 0.5
    hard_weight: float = 10.0
    teacher_clips: bool = True
    holdout: float = 0.0
    epochs: int = 8
    patience: int = 8
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.keyword_minutes <= 0 or self.negative_minutes < 0 or self.stream_seconds < 2:
            raise KWSError("verifier training needs keyword_minutes > 0, negative_minutes >= 0, stream_seconds >= 2")
        if not 0 < self.first_stage_threshold <= 1 or not 0 <= self.holdout < 1 or self.hard_weight <= 0:
            raise KWSError("verifier training needs 0 < first_stage_threshold <= 1, 0 <= holdout < 1, hard_weight > 0")
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1 or self.lr <= 0:
            raise KWSError("verifier training needs epochs, patience, batch_size >= 1 and lr > 0")


KEYWORD_MIX = StreamTrainConfig(keyword_fraction=0.55, unknown_fraction=0.25, negative_fraction=0.15)
"""Event odds of the keyword-rich streams."""
NEGATIVE_MIX = StreamTrainConfig(keyword_fraction=0.05, unknown_fraction=0.15, negative_fraction=0.75)
"""Event odds of the negative-rich streams (every training-half recording many times, each time remixed)."""


@dataclass(frozen=True)
class Windows:
    """Collected verifier windows: int16 audio ``[n, window]``, label index int64 ``[n]``, kind index int64
    ``[n]`` (into :data:`WINDOW_KINDS`), stream number int64 ``[n]``."""

    audio: np.ndarray
    labels: np.ndarray
    kinds: np.ndarray
    streams: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        return {kind: int((self.kinds == i).sum()) for i, kind in enumerate(WINDOW_KINDS)}


def cut(audio: np.ndarray, end: int, window: int) -> np.ndarray:
    """Samples ``[end - window, end)`` of ``audio`` (zeros outside it, as the runtime's ring gives them)."""
    out = np.zeros(window, np.float32)
    lo, hi = max(end - window, 0), min(end, len(audio))
    if hi > lo:
        out[lo - (end - window) : hi - (end - window)] = audio[lo:hi]
    return out


def detect(spotter: Any, audio: np.ndarray) -> list[Any]:
    """The first stage's detections on one stream (from a fresh state, in 1 s blocks, flushed)."""
    spotter.reset()
    block = round(BLOCK_SECONDS * spotter.sample_rate)
    found = [d for start in range(0, len(audio), block) for d in spotter.process(audio[start : start + block])]
    return found + spotter.flush()


def stream_windows(
    stream: TrainingStream, detections: list[Any], labels: list[str], rate: int, window: int, end_samples: int,
    jitter: tuple[int, ...], rng: np.random.Generator,
) -> list[tuple[np.ndarray, int, int]]:  # fmt: skip
    """The windows of one stream: ``(audio float32 [window], label index, kind index)`` each (module docstring).

    Args:
        detections: the first stage's on this stream (``.time`` s, ``.keyword``).
        window, end_samples: the verifier's window and its end after a detection (samples).
        jitter: shifts of false-accept windows (samples).
    """
    unknown = labels.index(UNKNOWN_LABEL)
    keywords = [e for e in stream.events if e.kind == KIND_KEYWORD]
    match = round(MATCH_SECONDS * rate)
    delay = lambda: round(rng.uniform(*DELAY_SECONDS) * rate)  # noqa: E731
    hit = [False] * len(keywords)
    out: list[tuple[np.ndarray, int, int]] = []
    for d in detections:
        at = round(d.time * rate)
        owner = next((i for i, e in enumerate(keywords) if e.start <= at <= e.word_end + match), None)
        if owner is not None:
            hit[owner] = True
            label = keywords[owner].label
            out.append((cut(stream.audio, at + end_samples, window), label, WINDOW_KINDS.index(KIND_HIT)))
        else:
            out += [(cut(stream.audio, at + end_samples + s, window), unknown, WINDOW_KINDS.index(KIND_FALSE))
                    for s in jitter]  # fmt: skip
    for e, found in zip(keywords, hit, strict=True):
        if not found:
            out.append((cut(stream.audio, e.word_end + delay() + end_samples, window), e.label,
                        WINDOW_KINDS.index(KIND_MISSED)))  # fmt: skip
    for e in stream.events:
        if e.kind == KIND_UNKNOWN:
            at = e.end - int(rng.integers(0, max(1, (e.end - e.start) // 3))) + delay()
            out.append((cut(stream.audio, at + end_samples, window), unknown, WINDOW_KINDS.index(KIND_UNKNOWN_CLIP)))
    return out


def collect_windows(
    builders: list[tuple[StreamBuilder, int]], spotter: Any, labels: list[str], window: int, end_samples: int,
    config: VerifierTrainConfig,
) -> Windows:  # fmt: skip
    """Every window of ``count`` streams from each ``(builder, count)``, run through ``spotter``.

    ``_unknown_``-clip windows are kept at random down to ``unknown_share`` of the keyword windows.
    """
    rng = np.random.default_rng([config.seed, 0x76657269])
    rate = spotter.sample_rate
    jitter = tuple(round(ms * rate / 1000) for ms in config.jitter_ms)
    rows: list[tuple[np.ndarray, int, int, int]] = []
    number = 0
    for builder, count in builders:
        for _ in range(count):
            stream = builder.stream(rng)
            found = detect(spotter, stream.audio)
            rows += [(*w, number) for w in stream_windows(stream, found, labels, rate, window, end_samples, jitter,
                                                          rng)]  # fmt: skip
            number += 1
    kinds = np.asarray([r[2] for r in rows], np.int64)
    keyword_windows = int(np.isin(kinds, [WINDOW_KINDS.index(KIND_HIT), WINDOW_KINDS.index(KIND_MISSED)]).sum())
    unknown_rows = np.flatnonzero(kinds == WINDOW_KINDS.index(KIND_UNKNOWN_CLIP))
    limit = math.ceil(config.unknown_share * keyword_windows)
    excess = max(0, len(unknown_rows) - limit)
    drop = set(rng.choice(unknown_rows, excess, replace=False).tolist()) if excess else set()
    kept = [r for i, r in enumerate(rows) if i not in drop]
    if not kept:
        raise KWSError("no verifier window was collected (are the streams too short?)")
    return Windows(
        audio=float_to_int16(np.stack([r[0] for r in kept])),
        labels=np.asarray([r[1] for r in kept], np.int64),
        kinds=np.asarray([r[2] for r in kept], np.int64),
        streams=np.asarray([r[3] for r in kept], np.int64),
    )


def _loss(head: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (nn.functional.cross_entropy(head(x), y, reduction="none") * w).sum() / w.sum()


def fine_tune(
    head: nn.Module, sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], held: np.ndarray,
    config: VerifierTrainConfig,
) -> tuple[nn.Module, list[dict[str, float]]]:  # fmt: skip
    """Fine-tune ``head`` (in place; returned in eval mode at its best epoch, or its last without a holdout).

    Args:
        sets: ``(embeddings [n, W, 96], labels [n], loss weights [n])`` each; a batch never mixes two sets (their
            ``W`` may differ); every epoch goes once through each, the batches of all of them shuffled together.
        held: bool ``[n]`` of the first set: its held-out windows, which choose the epoch (never trained on).
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 2])
    tensors = [(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w.astype(np.float32))) for x, y, w in sets]
    rows = [np.flatnonzero(~held), *(np.arange(len(y)) for _, y, _ in sets[1:])]
    val = torch.from_numpy(np.flatnonzero(held))
    xv, yv, wv = (t[val] for t in tensors[0])
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_state, best_epoch, history = math.inf, copy.deepcopy(head.state_dict()), 0, []
    for epoch in range(config.epochs):
        head.train()
        batches = [(i, b) for i, r in enumerate(rows) for b in np.array_split(rng.permutation(r),
                                                                              max(1, len(r) // config.batch_size))
                   if len(b)]  # fmt: skip
        total = 0.0
        for i in rng.permutation(len(batches)):
            which, idx = batches[i]
            x, y, w = (t[torch.from_numpy(idx)] for t in tensors[which])
            loss = _loss(head, x, y, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        head.eval()
        with torch.no_grad():
            val_loss = _loss(head, xv, yv, wv).item() if len(val) else math.nan
        seen = max(sum(map(len, rows)), 1)
        history.append({"epoch": epoch + 1, "train_loss": total / seen, "holdout_loss": val_loss})
        if not len(val) or val_loss < best:
            best, best_state, best_epoch = val_loss, copy.deepcopy(head.state_dict()), epoch + 1
        elif epoch + 1 - best_epoch >= config.patience:
            break
    head.load_state_dict(best_state)
    head.eval()
    logger.info("verifier head: epoch %d of %d kept (held-out loss %.4f)", best_epoch, len(history), best)
    return head, history


def teacher_clips(folder: Path, labels: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The teacher's own training examples (``kws teacher``'s cache in ``folder``): clean clip embeddings and
    their augmented views, float32 ``[n, W, 96]``, and labels int64 ``[n]``; None when the cache is not there."""
    from kws.teacher.cache import EMBEDDINGS, SOFT_LABELS, VIEWS

    if not (folder / EMBEDDINGS).is_file() or not (folder / SOFT_LABELS).is_file():
        logger.warning("no %s in %s: the verifier head is fine-tuned on the stream windows alone", EMBEDDINGS, folder)
        return None
    with np.load(folder / SOFT_LABELS) as soft, np.load(folder / EMBEDDINGS) as embedded:
        if list(soft["labels"]) != list(labels):
            raise KWSError(f"{folder / SOFT_LABELS}: labels {list(soft['labels'])}, the teacher's {labels}")
        y = soft["targets"][soft["splits"] == "train"].astype(np.int64)
        parts = [embedded["train"].astype(np.float32)]
    if (folder / VIEWS).is_file():
        with np.load(folder / VIEWS) as views:
            parts += [v.astype(np.float32) for v in views["train_views"]]
    if any(len(p) != len(y) for p in parts):
        raise KWSError(f"{folder}: the cached embeddings do not match {SOFT_LABELS}")
    return np.concatenate(parts), np.tile(y, len(parts))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def train_verifier_head(
    teacher_path: str | Path, first_stage: str | Path, data_config: DataConfig, out: str | Path, *,
    window_ms: float, window_end_ms: float, config: VerifierTrainConfig | None = None,
    embedding_models: str | Path | None = None, threads: int = 1,
) -> Path:  # fmt: skip
    """Collect windows with ``first_stage`` on training streams of ``data_config``, fine-tune the teacher's head on
    them and write it to ``out`` (``teacher.pt``'s format, plus ``verifier_training``).

    Raises:
        KWSError: the data's labels are not the teacher's, no negatives, no window collected.
    """
    from kws.data.splits import negative_recordings, prepare
    from kws.io import atomic_write
    from kws.runtime import KeywordSpotter, load_model, spotter_config
    from kws.teacher.build import load_teacher
    from kws.teacher.embedding import SpeechEmbedding

    config = config or VerifierTrainConfig()
    head, teacher_config, labels, payload = load_teacher(teacher_path)
    torch.set_num_threads(max(threads, 1))
    model = load_model(first_stage, threads=1)
    spotter = KeywordSpotter(model, spotter_config(model.info, threshold=config.first_stage_threshold))
    rate = spotter.sample_rate
    features = FeatureConfig(sample_rate=rate)
    prepared = prepare(data_config, rate, features.clip_samples, int(payload.get("data_seed", 0)), ("train",),
                       labels=labels)  # fmt: skip
    negatives = negative_recordings(prepared, rate)
    if not negatives and config.negative_minutes:
        raise KWSError("verifier training needs --negatives (their training half gives the false accepts)")
    train = prepared.splits["train"]
    count = lambda minutes: max(1, round(60 * minutes / config.stream_seconds))  # noqa: E731
    builders = [(StreamBuilder(dataclasses.replace(mix, seconds=config.stream_seconds), features,
                               POOL_MEAN, train, labels, negatives, prepared.noises), count(minutes))
                for mix, minutes in ((KEYWORD_MIX, config.keyword_minutes), (NEGATIVE_MIX, config.negative_minutes))
                if minutes]  # fmt: skip
    window, end = round(window_ms * rate / 1000), round(window_end_ms * rate / 1000)
    windows = collect_windows(builders, spotter, labels, window, end, config)
    counts = windows.counts()
    logger.info("verifier windows: %s", ", ".join(f"{n} {k}" for k, n in counts.items()))
    embedder = SpeechEmbedding(embedding_models, threads=threads, pad_seconds=teacher_config.pad_seconds)
    x = embedder.embed(windows.audio, desc="verifier windows")
    weights = np.where(windows.kinds == WINDOW_KINDS.index(KIND_FALSE), config.hard_weight, 1.0)
    n_streams = int(windows.streams.max()) + 1
    held_streams = np.random.default_rng([config.seed, 3]).random(n_streams) < config.holdout
    sets = [(x, windows.labels, weights)]
    clips = teacher_clips(Path(teacher_path).parent, labels) if config.teacher_clips else None
    if clips is not None:
        sets.append((*clips, np.ones(len(clips[1]))))
    head, history = fine_tune(head, sets, held_streams[windows.streams], config)
    training = {
        "method": "teacher head fine-tuned on verifier windows of training streams (kws.teacher.verifier_train)",
        "config": to_dict(config), "first_stage": {"file": Path(first_stage).name, "sha256": _sha256(first_stage)},
        "data": {"roots": list(data_config.roots), "negatives": list(data_config.negatives),
                 "split": "train", "negatives_part": "train"},
        "window_ms": window_ms, "window_end_ms": window_end_ms, "windows": counts,
        "streams": n_streams, "held_out_streams": int(held_streams.sum()), "history": history,
        "teacher_clips": 0 if clips is None else len(clips[1]),
    }  # fmt: skip
    result = {**payload, "head": head.state_dict(), "verifier_training": training, "key": None}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save(result, tmp))
    return out
