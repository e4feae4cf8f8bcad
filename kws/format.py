"""The kws ONNX file format, in one place (torch-free: json and numpy only).

(Over 400 lines: the keys, their writer and their checked parser belong together.)

An exported model is an ONNX file whose graph inputs and outputs have the names below and whose model-level
``metadata_props`` hold the entries of :class:`ModelMetadata` (string values, keys ``kws.*``). The exporter
(:mod:`kws.export.onnx_export`) writes them with :meth:`ModelMetadata.to_props`; the runtime
(:mod:`kws.runtime.model`) reads them with :meth:`ModelMetadata.from_props`, which checks every value and
raises :class:`ModelError` with one line naming the bad entry.

Graphs:
    clip model: ``audio [batch, clip_samples]`` -> ``scores [batch, n_labels]`` (softmax of the pooled logits).
    stream model: ``audio [1, context + k*hop]``, ``h_in``, ``c_in`` -> ``logits [lanes, k, n_labels]``,
    ``h_out``, ``c_out``; the state shapes are in ``kws.state`` (one :data:`LANES_DIM` axis each).

Frame alignment: frame ``t`` covers samples ``[t*hop, t*hop + window)`` (:func:`frames_in`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.errors import KWSError

# ------------------------------------------------------------------------------------------ metadata keys

META_FORMAT = "kws.format"
META_FORMAT_VERSION = "1"
"""The only format version written and read (the value of ``kws.format``)."""
META_KIND = "kws.kind"  # KIND_CLIP or KIND_STREAM
META_LABELS = "kws.labels"  # JSON list
META_SAMPLE_RATE = "kws.sample_rate"
META_CLIP_SAMPLES = "kws.clip_samples"
META_WINDOW_SAMPLES = "kws.window_samples"  # samples per analysis frame (FFT size)
META_HOP_SAMPLES = "kws.hop_samples"
META_POOLING = "kws.pooling"  # POOL_MEAN or POOL_LAST: how a clip's per-frame logits become its scores
META_POOL_FRAMES = "kws.pool_frames"  # frames per clip, over which a stream pools its logits
META_FEATURE_CONFIG = "kws.feature_config"  # JSON (informational: kws.config.FeatureConfig)
META_MODEL_CONFIG = "kws.model_config"  # JSON (informational: kws.config.ModelConfig)
META_STATE = "kws.state"  # JSON: [{"input": ..., "output": ..., "shape": [layers, "lanes", size]}, ...]
META_EVALUATION = "kws.evaluation"  # JSON
META_QUANTIZATION = "kws.quantization"  # QUANT_NONE, QUANT_DYNAMIC or QUANT_STATIC
META_VERSION = "kws.version"
# How to run the model (optional; written by `kws calibrate`; a model without them runs with the runtime's
# built-in defaults: two lanes reset every 2000 ms, threshold 0.7, patience 1)
META_THRESHOLDS = "kws.thresholds"  # JSON object: keyword -> detection threshold in (0, 1]
META_RESET_PERIOD_MS = "kws.reset_period_ms"  # number >= 0 (ms); 0: one lane, state carried forever
META_PATIENCE = "kws.patience"  # whole number >= 1: consecutive frames over threshold for a detection

REQUIRED_METADATA: tuple[str, ...] = (
    META_FORMAT, META_KIND, META_LABELS, META_SAMPLE_RATE, META_WINDOW_SAMPLES, META_HOP_SAMPLES, META_STATE,
)  # fmt: skip
UNKNOWN = "unknown"
"""What :meth:`ModelMetadata.from_props` reports for an absent ``kws.quantization`` or ``kws.version``."""

# --------------------------------------------------------------------------------------- graph IO names

INPUT_AUDIO = "audio"
OUTPUT_SCORES = "scores"  # clip model: class probabilities [batch, n_labels]
OUTPUT_LOGITS = "logits"  # stream model: per-frame logits [lanes, frames, n_labels]
STATE_H_IN, STATE_C_IN = "h_in", "c_in"
STATE_H_OUT, STATE_C_OUT = "h_out", "c_out"

LANES_DIM, BATCH_DIM, FRAMES_DIM = "lanes", "batch", "k"
"""Names of the symbolic dimensions: independent LSTM states (``kws.state`` shapes), clips, new frames."""

# ------------------------------------------------------------------------------------------------- enums

KIND_CLIP, KIND_STREAM = "clip", "stream"
"""``kws.kind``: the whole-clip model or the streaming step."""

POOL_LAST, POOL_MEAN = "last", "mean"
POOLINGS: tuple[str, ...] = (POOL_MEAN, POOL_LAST)
"""``kws.pooling`` (also ``ModelConfig.pooling``): a clip's scores are the softmax of the mean of its frames'
logits (``mean``) or of the last frame's (``last``)."""

QUANT_NONE, QUANT_DYNAMIC, QUANT_STATIC = "none", "dynamic", "static-qdq"
"""``kws.quantization``: float, onnxruntime dynamic int8, or static int8 in QDQ format (one spelling each: the
folder of the static variant and its check names in an export report are ``static-qdq`` too)."""

# ------------------------------------------------------------------------------- bounds on what is read

# A damaged or hand-edited file must give a clear error, not a huge allocation.
MAX_LABELS = 1000
MAX_STATES = 16
MAX_STATE_SIZE = 1 << 20
"""Elements of one lane of all state tensors together (the shipped model: 2 x 2 x 192)."""
MAX_CLIP_SECONDS = 10
MIN_HOP_MS = 1.0
"""Frames are at least 1 ms apart (the shipped model: 20 ms)."""


class ModelError(KWSError, ValueError):
    """The model file is missing, not ONNX, or not a kws streaming model."""


def frames_in(num_samples: int, window_samples: int, hop_samples: int) -> int:
    """Frames computed from ``num_samples`` samples: frame ``t`` covers ``[t*hop, t*hop + window)``.

    0 if shorter than one window (a trailing partial hop is dropped).
    """
    return 0 if num_samples < window_samples else 1 + (num_samples - window_samples) // hop_samples


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor of a streaming model: fed as ``input``, returned as ``output``.

    ``shape`` has one entry :data:`LANES_DIM` (the lanes axis, ``lane_axis``); the others are fixed sizes.
    """

    input: str
    output: str
    shape: tuple[int | str, ...]

    @property
    def lane_axis(self) -> int:
        return self.shape.index(LANES_DIM)

    def zeros(self, lanes: int) -> np.ndarray:
        """Zero state for ``lanes`` lanes (float32)."""
        return np.zeros([lanes if d == LANES_DIM else d for d in self.shape], dtype=np.float32)

    def to_json(self) -> dict[str, Any]:
        """The ``kws.state`` entry."""
        return {"input": self.input, "output": self.output, "shape": list(self.shape)}


def lstm_state_specs(num_layers: int, output_size: int, hidden_size: int) -> tuple[StateSpec, ...]:
    """The state of a stacked LSTM: ``h`` ``[layers, lanes, output_size]`` and ``c`` ``[layers, lanes, hidden]``."""
    return (
        StateSpec(STATE_H_IN, STATE_H_OUT, (num_layers, LANES_DIM, output_size)),
        StateSpec(STATE_C_IN, STATE_C_OUT, (num_layers, LANES_DIM, hidden_size)),
    )


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a kws ONNX file says about itself (its ``metadata_props``).

    Attributes:
        kind: :data:`KIND_CLIP` or :data:`KIND_STREAM` (any printable text when read from a file).
        labels: every output class, in score order.
        sample_rate: audio rate the model expects (Hz).
        clip_samples: length of a training clip (samples).
        window_samples: samples per analysis frame (the FFT size).
        hop_samples: samples between frames.
        pooling: :data:`POOL_MEAN` or :data:`POOL_LAST` ("" when a file has none).
        pool_frames: frames a stream pools (one clip's frames).
        states: recurrent state tensors (empty for a clip model).
        feature_config, model_config: the training configuration (informational; {} when unreadable).
        evaluation: accuracy figures of the exported checkpoint (informational).
        quantization: ``QUANT_*`` (:data:`UNKNOWN` when a file has none).
        version: kws version that exported the model.
        format: ``kws.format`` (:data:`META_FORMAT_VERSION`).
        thresholds: calibrated detection threshold per keyword, in (0, 1] ({} when a file has none).
        reset_period_ms: the lane reset period the thresholds were calibrated with (ms; 0: one lane, never
            reset; None when a file has none).
        patience: consecutive frames over threshold a detection needs (None when a file has none).
    """

    kind: str
    labels: tuple[str, ...]
    sample_rate: int
    clip_samples: int
    window_samples: int
    hop_samples: int
    pooling: str
    pool_frames: int
    states: tuple[StateSpec, ...] = ()
    feature_config: Mapping[str, Any] = field(default_factory=dict)
    model_config: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    quantization: str = QUANT_NONE
    version: str = UNKNOWN
    format: str = META_FORMAT_VERSION
    thresholds: Mapping[str, float] = field(default_factory=dict)
    reset_period_ms: float | None = None
    patience: int | None = None

    @property
    def clip_frames(self) -> int:
        """Frames of one training clip."""
        return frames_in(self.clip_samples, self.window_samples, self.hop_samples)

    @property
    def context_samples(self) -> int:
        """Samples from before the new hops that a streaming call needs (``window - hop``)."""
        return self.window_samples - self.hop_samples

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (the writer; always in this order; the optional run settings only
        when set, so a model without them is written as before)."""
        props = {
            META_FORMAT: self.format,
            META_KIND: self.kind,
            META_LABELS: json.dumps(list(self.labels)),
            META_SAMPLE_RATE: str(self.sample_rate),
            META_CLIP_SAMPLES: str(self.clip_samples),
            META_WINDOW_SAMPLES: str(self.window_samples),
            META_HOP_SAMPLES: str(self.hop_samples),
            META_POOLING: self.pooling,
            META_POOL_FRAMES: str(self.pool_frames),
            META_FEATURE_CONFIG: json.dumps(dict(self.feature_config), sort_keys=True),
            META_MODEL_CONFIG: json.dumps(dict(self.model_config), sort_keys=True),
            META_STATE: json.dumps([s.to_json() for s in self.states]),
            META_EVALUATION: json.dumps(dict(self.evaluation), sort_keys=True, default=str),
            META_QUANTIZATION: self.quantization,
            META_VERSION: self.version,
        }
        return {**props, **run_settings_props(self.thresholds, self.reset_period_ms, self.patience)}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str | Path = "model") -> ModelMetadata:
        """Parse and check ``metadata_props`` (the parser). ``source`` names the file in messages.

        ``kws.pool_frames`` is read (default: one clip's frames) only when ``kws.pooling`` is ``mean`` or
        ``last``; whether a graph needs a pooling at all depends on its outputs (the runtime checks that).

        Raises:
            ModelError: one line naming the missing or invalid entry.
        """
        # The runtime's bounds on audio rates; imported here, not at the top: kws.runtime.config imports
        # kws.config, which imports this module.
        from kws.runtime.config import MAX_INPUT_RATE, MAX_PATIENCE, MAX_RESET_PERIOD_MS, MIN_INPUT_RATE

        meta = dict(props)
        missing = [k for k in REQUIRED_METADATA if k not in meta]
        if missing:
            raise ModelError(f"{source} is not a kws model: metadata {', '.join(missing)} missing "
                             "(export it with `kws export`)")  # fmt: skip
        if meta[META_FORMAT] != META_FORMAT_VERSION:
            raise ModelError(f"{source}: metadata format {_short(meta[META_FORMAT])} is not supported "
                             f"(this runtime reads format {META_FORMAT_VERSION!r})")  # fmt: skip
        labels = _labels(source, meta[META_LABELS])
        rate = _integer(source, meta, META_SAMPLE_RATE, MIN_INPUT_RATE, MAX_INPUT_RATE)
        window = _integer(source, meta, META_WINDOW_SAMPLES, 1, rate)  # at most 1 s
        hop = _integer(source, meta, META_HOP_SAMPLES, max(1, math.ceil(rate * MIN_HOP_MS / 1000)), window)
        clip = _integer(source, meta, META_CLIP_SAMPLES, window, MAX_CLIP_SECONDS * rate, rate)
        features = _informational(meta.get(META_FEATURE_CONFIG))
        feature_rate = features.get("sample_rate")
        if type(feature_rate) is int and feature_rate != rate:
            raise ModelError(f"{source}: metadata {META_SAMPLE_RATE}={rate} contradicts {META_FEATURE_CONFIG} "
                             f"(features computed at {feature_rate} Hz)")  # fmt: skip
        states = _state_specs(source, meta[META_STATE])
        pooling = meta.get(META_POOLING, "")
        clip_frames = frames_in(clip, window, hop)
        pool_frames = clip_frames
        if pooling in POOLINGS:
            pool_frames = _integer(source, meta, META_POOL_FRAMES, 1, clip_frames, clip_frames)
        reset = meta.get(META_RESET_PERIOD_MS)
        reset_ms = None if reset is None else _number(source, META_RESET_PERIOD_MS, reset, MAX_RESET_PERIOD_MS)
        return cls(
            kind=meta[META_KIND], labels=labels, sample_rate=rate, clip_samples=clip, window_samples=window,
            hop_samples=hop, pooling=pooling, pool_frames=pool_frames, states=states, feature_config=features,
            model_config=_informational(meta.get(META_MODEL_CONFIG)),
            evaluation=_informational(meta.get(META_EVALUATION)),
            quantization=meta.get(META_QUANTIZATION, UNKNOWN), version=meta.get(META_VERSION, UNKNOWN),
            format=meta[META_FORMAT],
            thresholds=_thresholds(source, meta[META_THRESHOLDS], labels) if META_THRESHOLDS in meta else {},
            reset_period_ms=reset_ms,
            patience=_integer(source, meta, META_PATIENCE, 1, MAX_PATIENCE) if META_PATIENCE in meta else None,
        )  # fmt: skip


def run_settings_props(thresholds: Mapping[str, float], reset_period_ms: float | None = None,
                       patience: int | None = None) -> dict[str, str]:  # fmt: skip
    """The optional run-setting entries (``kws.thresholds``, ``kws.reset_period_ms``, ``kws.patience``), each
    only when set ({} / None: left out)."""
    props = {}
    if thresholds:
        props[META_THRESHOLDS] = json.dumps({k: float(v) for k, v in thresholds.items()}, sort_keys=True)
    if reset_period_ms is not None:
        props[META_RESET_PERIOD_MS] = repr(float(reset_period_ms))
    if patience is not None:
        props[META_PATIENCE] = str(int(patience))
    return props


# ------------------------------------------------------------------------------------------ message text


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name if empty), at most ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def printable(text: str, limit: int = 80) -> str:
    """A metadata string made safe for a one-line message (control characters replaced, length cut)."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


def _short(value: object, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (metadata values can be anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ parsing


def _integer(source: str | Path, meta: Mapping[str, str], key: str, low: int, high: int,
             default: int | None = None) -> int:  # fmt: skip
    """Metadata ``key`` as a whole number in ``[low, high]`` (``default`` if absent and not None)."""
    raw = meta.get(key)
    if raw is None and default is not None:
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ModelError(f"{source}: metadata {key} must be a whole number, got {_short(raw)}") from None
    if not low <= value <= high:
        raise ModelError(f"{source}: metadata {key}={value} is out of range [{low}, {high}]")
    return value


def _number(source: str | Path, key: str, raw: str, high: float) -> float:
    """Metadata ``key`` as a finite number in ``[0, high]``."""
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ModelError(f"{source}: metadata {key} must be a number, got {_short(raw)}") from None
    if not 0 <= value <= high:  # nan fails too
        raise ModelError(f"{source}: metadata {key}={value:g} is out of range [0, {high:g}]")
    return value


def _thresholds(source: str | Path, text: str, labels: tuple[str, ...]) -> dict[str, float]:
    """``kws.thresholds``: a JSON object of keywords of ``labels`` -> numbers in (0, 1]."""
    value = _json(source, META_THRESHOLDS, text)
    if not isinstance(value, dict):
        raise ModelError(f"{source}: metadata {META_THRESHOLDS} must be a JSON object keyword -> threshold, "
                         f"got {_short(text)}")  # fmt: skip
    keywords = [x for x in labels if x not in (SILENCE_LABEL, UNKNOWN_LABEL)]
    out = {}
    for keyword, threshold in value.items():
        if keyword not in keywords:
            raise ModelError(f"{source}: metadata {META_THRESHOLDS} names {_short(keyword)}, not a keyword of the "
                             f"model (keywords: {', '.join(keywords)})")  # fmt: skip
        number = threshold if type(threshold) in (int, float) else math.nan
        if not 0 < number <= 1:
            raise ModelError(f"{source}: metadata {META_THRESHOLDS}: the threshold of {keyword} must be a number "
                             f"in (0, 1], got {_short(threshold)}")  # fmt: skip
        out[keyword] = float(number)
    return out


def _informational(text: str | None) -> dict[str, Any]:
    """An informational JSON object entry ({} if absent or unreadable: the runtime never depends on it)."""
    try:
        value = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _json(source: str | Path, key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested brackets
        raise ModelError(f"{source}: metadata {key} is not valid JSON ({first_line(exc, 100)})") from None


def _labels(source: str | Path, text: str) -> tuple[str, ...]:
    labels = _json(source, META_LABELS, text)
    if not (isinstance(labels, list) and all(isinstance(x, str) and x and x.isprintable() for x in labels)):
        raise ModelError(f"{source}: metadata {META_LABELS} must be a JSON list of label names, got "
                         f"{_short(text)}")  # fmt: skip
    if not 2 <= len(labels) <= MAX_LABELS or len(set(labels)) != len(labels):
        raise ModelError(f"{source}: metadata {META_LABELS} must list 2 to {MAX_LABELS} distinct labels, got "
                         f"{_short(labels)}")  # fmt: skip
    return tuple(labels)


def _state_specs(source: str | Path, text: str) -> tuple[StateSpec, ...]:
    entries = _json(source, META_STATE, text)
    if not isinstance(entries, list) or len(entries) > MAX_STATES:
        raise ModelError(f"{source}: metadata {META_STATE} must be a JSON list of at most {MAX_STATES} state "
                         f"tensors, got {_short(text)}")  # fmt: skip
    try:
        specs = tuple(_state_spec(x) for x in entries)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{source}: invalid metadata {META_STATE} ({first_line(exc, 200)})") from None
    size = sum(math.prod(d for d in s.shape if d != LANES_DIM) for s in specs)
    if size > MAX_STATE_SIZE:
        raise ModelError(f"{source}: metadata {META_STATE} declares {size} state values per lane "
                         f"(at most {MAX_STATE_SIZE})")  # fmt: skip
    return specs


def _state_spec(entry: Any) -> StateSpec:
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("input", "output")):
        raise ValueError(f"each state needs 'input' and 'output' names and a 'shape', got {_short(entry)}")
    shape = entry.get("shape")
    if not isinstance(shape, list):
        raise ValueError(f"state shape must be a list, got {_short(shape)}")
    sizes = [d for d in shape if d != LANES_DIM]
    if shape.count(LANES_DIM) != 1 or not all(type(d) is int and d > 0 for d in sizes):
        raise ValueError(f"state shape {_short(shape)} must hold positive sizes and one {LANES_DIM!r}")
    if math.prod(sizes) > MAX_STATE_SIZE:  # checked here too: the product of huge sizes is slow to sum
        raise ValueError(f"state shape {_short(shape)} holds more than {MAX_STATE_SIZE} values per lane")
    return StateSpec(input=entry["input"], output=entry["output"], shape=tuple(shape))
