"""Frozen dataclass configurations (torch-free).

(Over 400 lines on purpose: every config saved in a checkpoint is declared here, in one place.)

Every config is saved in the checkpoint (and the feature/model configs in the ONNX metadata) so that a model
can be rebuilt from the file alone, and reloaded with :func:`from_dict`, which rejects unknown fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kws.constants import CLIP_SECONDS, SAMPLE_RATE
from kws.errors import ConfigError
from kws.format import POOL_MEAN, POOLINGS, frames_in

T = TypeVar("T")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_finite(config: Any, *names: str) -> None:
    """Every named float field is a finite number (``inf``/``nan`` pass most range checks)."""
    for name in names:
        value = getattr(config, name)
        _check(
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            f"{name} must be a finite number, got {value!r}",
        )


MAX_HIDDEN_SIZE = 2048
"""Largest LSTM accepted (far above any keyword model; a typo like 100000 would need ~160 GB)."""
MAX_LAYERS = 8
MAX_SEED = 2**32 - 1
TEACHER_POOLINGS: tuple[str, ...] = ("mean-max", "attention", "flatten")
"""How the teacher's head pools its embedding windows (:class:`TeacherConfig`)."""


@dataclass(frozen=True)
class FeatureConfig:
    """MFCC front end, computed frame by frame (no clip-level statistics).

    Frame ``t`` covers samples ``[t * hop_samples, t * hop_samples + n_fft)``: no centre padding, so a stream
    can compute exactly the same frames as a whole clip.
    """

    sample_rate: int = SAMPLE_RATE
    window_ms: float = 30.0
    hop_ms: float = 20.0
    n_mels: int = 40
    n_mfcc: int = 40
    f_min: float = 20.0
    f_max: float = 7600.0
    clip_seconds: float = CLIP_SECONDS

    def __post_init__(self) -> None:
        _check_finite(self, "window_ms", "hop_ms", "f_min", "f_max", "clip_seconds")
        _check(0 < self.sample_rate <= 384_000, f"sample_rate must be in 1..384000, got {self.sample_rate}")
        _check(0 < self.hop_ms <= self.window_ms, "need 0 < hop_ms <= window_ms")
        _check(self.hop_samples >= 1, f"hop_ms={self.hop_ms} is shorter than one sample")
        _check(0 < self.clip_seconds <= 60, f"clip_seconds must be in (0, 60], got {self.clip_seconds}")
        _check(
            self.num_frames(self.clip_samples) >= 1,
            f"a {self.window_ms:g} ms window needs an FFT of {self.n_fft} samples, more than a clip holds "
            f"({self.clip_samples}): no frame could be computed; use a shorter window",
        )
        _check(0 < self.n_mfcc <= self.n_mels, "need 0 < n_mfcc <= n_mels")
        bins = self.n_fft // 2 + 1
        _check(
            self.n_mels <= bins,
            f"{self.n_mels} mel bands need more than the {bins} FFT bins of a {self.window_ms:g} ms window",
        )
        _check(0 <= self.f_min < self.f_max <= self.sample_rate / 2, "need 0 <= f_min < f_max <= sample_rate/2")

    @property
    def window_samples(self) -> int:
        """Length of the analysis window (samples)."""
        return round(self.sample_rate * self.window_ms / 1000)

    @property
    def hop_samples(self) -> int:
        """Distance between frames (samples)."""
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def n_fft(self) -> int:
        """FFT size: the next power of two >= the window (radix-2 FFTs are fastest on every runtime)."""
        return 1 << (self.window_samples - 1).bit_length()

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)

    @property
    def context_samples(self) -> int:
        """Samples of overlap a streaming step needs besides its new hops (``n_fft - hop``)."""
        return self.n_fft - self.hop_samples

    def num_frames(self, num_samples: int) -> int:
        """Frames computed from ``num_samples`` samples (0 if shorter than one FFT frame)."""
        return frames_in(num_samples, self.n_fft, self.hop_samples)


@dataclass(frozen=True)
class ModelConfig:
    """Stacked LSTM over MFCC frames with a linear classifier on every frame's output; a clip's logits are the
    mean of its frames' logits (``pooling="mean"``, the default) or the last frame's (``"last"``).

    ``unknown_words`` (``kws train --fine-unknowns``): one more classifier output per non-keyword word of the
    training data; the model's logits stay ``n_labels`` wide, its ``_unknown_`` logit the log-sum-exp of the
    ``_unknown_`` output and these (:mod:`kws.model.network`). Checkpoints written before it load with ``()``.
    """

    n_inputs: int = 40
    n_labels: int = 12
    hidden_size: int = 192
    num_layers: int = 2
    proj_size: int = 0
    dropout: float = 0.4
    input_dropout: float = 0.1
    pooling: str = POOL_MEAN  # clip logits: "mean" of the per-frame logits, or the "last" frame's
    unknown_words: tuple[str, ...] = ()  # words with their own output, collapsed into _unknown_ (none: off)

    def __post_init__(self) -> None:
        _check(self.pooling in POOLINGS, f"pooling must be {' or '.join(map(repr, POOLINGS))}, got {self.pooling!r}")
        words = self.unknown_words
        _check(
            isinstance(words, tuple) and all(isinstance(w, str) and w for w in words) and len(set(words)) == len(words),
            "unknown_words must be a tuple of distinct non-empty words",
        )
        _check(self.n_inputs > 0 and self.n_labels >= 2, "need n_inputs > 0 and n_labels >= 2")
        _check(
            0 < self.hidden_size <= MAX_HIDDEN_SIZE,
            f"hidden_size must be in 1..{MAX_HIDDEN_SIZE}, got {self.hidden_size}",
        )
        _check(1 <= self.num_layers <= MAX_LAYERS, f"num_layers must be in 1..{MAX_LAYERS}, got {self.num_layers}")
        _check(0 <= self.proj_size < self.hidden_size, "need 0 <= proj_size < hidden_size")
        _check_finite(self, "dropout", "input_dropout")
        _check(0 <= self.dropout < 1 and 0 <= self.input_dropout < 1, "dropouts must be in [0, 1)")

    @property
    def output_size(self) -> int:
        """Size of the hidden state h (the LSTM output): ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def n_outputs(self) -> int:
        """Outputs of the classifier: one per label, then one per unknown word."""
        return self.n_labels + len(self.unknown_words)


@dataclass(frozen=True)
class DataConfig:
    """Which clips are used and how they are labelled and split."""

    roots: tuple[str, ...] = ()
    extra_train: tuple[str, ...] = ()  # roots whose clips all go to the training split (e.g. `kws tts` output)
    negatives: tuple[str, ...] = ()  # folders of non-keyword speech: 1 s crops of half the files join _unknown_
    negative_ratio: float = 0.5  # negative-speech crops, relative to the mean keyword class size
    labels: str = "standard"  # "standard" (12 classes), "all" (every word) or comma-separated keywords
    unknown_ratio: float = 1.0  # _unknown_ clips per keyword clip class, relative to the mean class size
    silence_ratio: float = 1.0  # _silence_ clips, relative to the mean keyword class size
    validation_percent: float = 10.0
    testing_percent: float = 10.0

    def __post_init__(self) -> None:
        _check_finite(self, "negative_ratio", "unknown_ratio", "silence_ratio", "validation_percent", "testing_percent")
        _check(self.unknown_ratio >= 0 and self.silence_ratio >= 0 and self.negative_ratio >= 0, "ratios must be >= 0")
        _check(
            0 <= self.validation_percent
            and 0 <= self.testing_percent
            and self.validation_percent + self.testing_percent < 100,
            "validation_percent + testing_percent must be < 100",
        )


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly, seeded waveform and feature augmentation (training split only)."""

    time_shift_ms: float = 100.0
    noise_prob: float = 0.6
    snr_db_min: float = 5.0
    snr_db_max: float = 25.0
    gain_db: float = 6.0
    speed_min: float = 0.9
    speed_max: float = 1.1
    speed_prob: float = 0.5
    context_prob: float = 0.3  # prepend up to context_seconds of noise/unknown speech (streaming robustness)
    context_seconds: float = 0.8
    time_masks: int = 2
    time_mask_frames: int = 5
    freq_masks: int = 2
    freq_mask_bins: int = 5
    reverb_prob: float = 0.0  # share of the speech clips convolved with a simulated room's response (0: off)
    reverb_rt60_min: float = 0.2  # reverberation times of the run's bank of simulated rooms (s, uniform)
    reverb_rt60_max: float = 0.8
    reverb_rooms: int = 64  # rooms in that bank, simulated once per run from its seed

    def __post_init__(self) -> None:
        _check_finite(
            self,
            "time_shift_ms",
            "noise_prob",
            "snr_db_min",
            "snr_db_max",
            "gain_db",
            "speed_min",
            "speed_max",
            "speed_prob",
            "context_prob",
            "context_seconds",
            "reverb_prob",
            "reverb_rt60_min",
            "reverb_rt60_max",
        )
        _check(0 <= self.reverb_prob <= 1, "reverb_prob must be in [0, 1]")
        _check(0 < self.reverb_rt60_min <= self.reverb_rt60_max <= 2.0, "need 0 < reverb_rt60_min <= max <= 2 s")
        _check(1 <= self.reverb_rooms <= 10_000, "reverb_rooms must be in 1..10000")
        for name in ("time_masks", "time_mask_frames", "freq_masks", "freq_mask_bins"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0")
        for name in ("time_shift_ms", "gain_db", "context_seconds"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0")
        for name in ("noise_prob", "speed_prob", "context_prob"):
            _check(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1]")
        _check(self.snr_db_min <= self.snr_db_max, "need snr_db_min <= snr_db_max")
        _check(0 < self.speed_min <= self.speed_max, "need 0 < speed_min <= speed_max")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(
            time_shift_ms=0.0,
            noise_prob=0.0,
            gain_db=0.0,
            speed_prob=0.0,
            context_prob=0.0,
            time_masks=0,
            freq_masks=0,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.05
    grad_clip: float = 5.0
    ema_decay: float = 0.995  # exponential moving average of the weights, used for validation and export (0: off)
    seed: int = 0
    max_minutes: float = 0.0  # stop after this many minutes (0: no limit); the schedule is set by epochs
    max_steps: int = 0  # stop after this many optimiser steps (0: no limit); for smoke tests
    num_workers: int = 0
    class_weight_power: float = 0.0  # loss weight of class c is (clips of c) ** -power (0: off, 1: fully balanced)
    teacher: str = ""  # a `kws teacher --out` folder whose soft labels the student learns from ("": none)
    distill_weight: float = 0.5  # share of the loss given to the teacher's soft labels
    distill_temperature: float = 2.0  # softmax temperature of both teacher and student in that term
    embed_distill_weight: float = 0.0  # weight of regressing the teacher's mean speech embedding (0: off)
    init_from: str = ""  # a checkpoint whose evaluated weights a new run starts from (fine-tuning; "": none)
    fine_unknowns: bool = False  # one output per unknown word of the training split (ModelConfig.unknown_words)
    fine_weight: float = 1.0  # weight of the cross-entropy on those fine outputs, beside the 12-class loss

    def __post_init__(self) -> None:
        _check_finite(
            self,
            "lr",
            "weight_decay",
            "warmup_epochs",
            "label_smoothing",
            "grad_clip",
            "ema_decay",
            "max_minutes",
            "class_weight_power",
            "distill_weight",
            "distill_temperature",
            "embed_distill_weight",
            "fine_weight",
        )
        _check(0 <= self.fine_weight <= 100, f"fine_weight must be in [0, 100], got {self.fine_weight}")
        _check(0 <= self.class_weight_power <= 1, "class_weight_power must be in [0, 1]")
        _check(0 <= self.distill_weight <= 1, "distill_weight must be in [0, 1]")
        _check(0 < self.distill_temperature <= 20, "distill_temperature must be in (0, 20]")
        _check(0 <= self.embed_distill_weight <= 100, "embed_distill_weight must be in [0, 100]")
        _check(
            not self.embed_distill_weight or bool(self.teacher),
            "embed_distill_weight needs a teacher (--teacher DIR) whose embeddings it regresses",
        )
        _check(self.epochs >= 1, f"need epochs >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"need batch_size >= 1, got {self.batch_size}")
        _check(self.lr > 0 and self.weight_decay >= 0, "need lr > 0 and weight_decay >= 0")
        _check(0 <= self.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED}, got {self.seed}")
        _check(self.max_minutes >= 0, f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")
        _check(self.max_steps >= 0, f"max_steps must be >= 0 (0: no limit), got {self.max_steps}")
        _check(self.warmup_epochs >= 0, "need warmup_epochs >= 0")
        _check(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")
        _check(self.grad_clip > 0, "need grad_clip > 0")
        _check(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1) (0: off)")
        _check(self.num_workers >= 0, "need num_workers >= 0")


MAX_STREAM_SECONDS = 60.0
MAX_STREAM_BATCH = 256


@dataclass(frozen=True)
class StreamTrainConfig:
    """Frame-level training on long synthetic streams (:mod:`kws.train.streams`), beside the clip loss.

    Each step also draws ``batch`` sequences of ``seconds`` built from the training split (keyword clips,
    unknown-word clips, pieces of the ``--negatives`` recordings and noise gaps over a noise bed) and scores
    every frame's pooled posteriors as the runtime computes them, with the LSTM state carried over the whole
    sequence: ``loss = clip loss + weight * stream loss``. Checkpoints written before it existed load with
    these defaults (off).

    Attributes:
        weight: share of the stream loss (0: off, the run is exactly the clip-only one).
        seconds: length of each sequence (s).
        batch: sequences per step.
        label_window_ms: frames ending this long after a keyword's word end are its targets (ms).
        keyword_fraction, unknown_fraction, negative_fraction: relative odds of the next event being a keyword
            clip, an unknown-word clip or a piece of negative speech; the rest (``1 - sum``, if positive) are
            noise-only gaps. Without ``--negatives`` their share goes to the others.
        snr_db_min, snr_db_max: level of the speech over the noise bed (dB, uniform per sequence).
        hard_fraction: share of the negative pieces cut around hard negatives (spots of the negative recordings
            where the model's pooled keyword posterior peaks over ``hard_threshold``, mined again at every
            epoch: :mod:`kws.train.hard_negatives`), growing linearly to this at the last epoch; 0: off.
        hard_threshold: pooled keyword posterior over which a spot is mined.
    """

    weight: float = 0.0
    seconds: float = 12.0
    batch: int = 4
    label_window_ms: float = 300.0
    keyword_fraction: float = 0.4
    unknown_fraction: float = 0.25
    negative_fraction: float = 0.25
    snr_db_min: float = 5.0
    snr_db_max: float = 30.0
    hard_fraction: float = 0.0
    hard_threshold: float = 0.3

    def __post_init__(self) -> None:
        _check_finite(
            self,
            "hard_fraction",
            "hard_threshold",
            "weight",
            "seconds",
            "label_window_ms",
            "keyword_fraction",
            "unknown_fraction",
            "negative_fraction",
            "snr_db_min",
            "snr_db_max",
        )
        _check(0 <= self.weight <= 100, f"stream weight must be in [0, 100] (0: off), got {self.weight}")
        _check(
            2 <= self.seconds <= MAX_STREAM_SECONDS,
            f"stream seconds must be in [2, {MAX_STREAM_SECONDS:g}], got {self.seconds}",
        )
        _check(1 <= self.batch <= MAX_STREAM_BATCH, f"stream batch must be in 1..{MAX_STREAM_BATCH}, got {self.batch}")
        _check(0 < self.label_window_ms <= 1000, f"label_window_ms must be in (0, 1000], got {self.label_window_ms}")
        fractions = (self.keyword_fraction, self.unknown_fraction, self.negative_fraction)
        _check(
            all(f >= 0 for f in fractions) and 0 < self.keyword_fraction and sum(fractions) <= 1,
            "stream fractions must be >= 0, keyword_fraction > 0, and sum to at most 1",
        )
        _check(self.snr_db_min <= self.snr_db_max, "need stream snr_db_min <= snr_db_max")
        _check(0 <= self.hard_fraction <= 1, f"hard-negative fraction must be in [0, 1], got {self.hard_fraction}")
        _check(0 < self.hard_threshold < 1, f"hard-negative threshold must be in (0, 1), got {self.hard_threshold}")


@dataclass(frozen=True)
class TeacherConfig:
    """How ``kws teacher`` embeds clips and trains its head (:mod:`kws.teacher.build`); saved in ``teacher.pt``.

    Attributes:
        pad_seconds: zeros added before and after each clip before embedding (0.5: a 1 s clip becomes 2 s and
            gives 16 windows, the first and last of which overlap the clip by 275 ms).
        augment_views: extra augmented copies of each training clip (:class:`kws.data.augment.Augmenter`, default
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
        soft_label_folds: 0 (or 1): the training clips' soft labels come from the head trained on them; K >= 2:
            out of fold: the training speakers are split into K folds (by a stable hash of the speaker), and
            each fold's soft labels come from a head trained on the other folds, so that they carry the
            teacher's real uncertainty instead of nearly the hard labels (validation and test still use the
            head trained on everything).
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
    soft_label_folds: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.soft_label_folds <= 20, f"soft-label folds must be in 0..20, got {self.soft_label_folds}")
        _check(
            self.pooling in TEACHER_POOLINGS,
            f"pooling must be 'mean-max', 'attention' or 'flatten', got {self.pooling!r}",
        )
        _check(self.pad_seconds >= 0 and self.augment_views >= 0, "need pad_seconds >= 0 and augment_views >= 0")
        _check(
            self.epochs >= 1 and self.patience >= 1 and self.batch_size >= 1 and self.hidden_size >= 1,
            "need epochs, patience, batch_size and hidden_size >= 1",
        )
        _check(
            0 <= self.dropout < 1 and 0 <= self.label_smoothing < 1 and self.lr > 0 and self.weight_decay >= 0,
            "need 0 <= dropout, label_smoothing < 1, lr > 0 and weight_decay >= 0",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run was made from; saved whole in every checkpoint."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stream: StreamTrainConfig = field(default_factory=StreamTrainConfig)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (nested) config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from :func:`to_dict` output; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        ftype = fields[name].type
        ftype = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
        nested = _CONFIG_TYPES.get(ftype)
        if nested is not None:
            value = from_dict(nested, value)
        else:
            value = _checked_value(f"{cls.__name__}.{name}", ftype, value)
        kwargs[name] = value
    return cls(**kwargs)


def _checked_value(where: str, ftype: str, value: Any) -> Any:
    """``value`` if it has the field's declared type (a list for a tuple field becomes a tuple)."""
    if ftype == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif ftype == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif ftype == "str":
        ok = isinstance(value, str)
    elif ftype == "bool":
        ok = isinstance(value, bool)
    elif ftype.startswith("tuple[str"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}: expected {ftype}, got {type(value).__name__} {value!r:.40}")
    return value


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), sort_keys=True)


_CONFIG_TYPES: dict[str, type] = {
    c.__name__: c
    for c in (FeatureConfig, ModelConfig, DataConfig, AugmentConfig, TrainConfig, StreamTrainConfig, RunConfig)
}
