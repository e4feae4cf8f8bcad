"""Loading an exported streaming model with onnxruntime and reading everything it needs from the file.

Labels, sample rate, window, hop and the LSTM state shapes all come from the ONNX ``metadata_props``
(keys in :mod:`kws.constants`), so the runtime never needs the training code or its configuration.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from kws.constants import (
    INPUT_AUDIO,
    META_CLIP_SAMPLES,
    META_FEATURE_CONFIG,
    META_FORMAT,
    META_FORMAT_VERSION,
    META_HOP_SAMPLES,
    META_KIND,
    META_LABELS,
    META_POOL_FRAMES,
    META_POOLING,
    META_QUANTIZATION,
    META_SAMPLE_RATE,
    META_STATE,
    META_VERSION,
    META_WINDOW_SAMPLES,
    OUTPUT_LOGITS,
    OUTPUT_SCORES,
)
from kws.errors import KWSError
from kws.runtime.config import (
    DEFAULT_THREADS,
    MAX_INPUT_RATE,
    MIN_INPUT_RATE,
    NON_KEYWORD_LABELS,
    PRETRAINED_MODEL_NAME,
    check_threads,
    regular_file,
)

logger = logging.getLogger(__name__)

KIND_STREAM = "stream"
KIND_CLIP = "clip"
LANES_DIM = "lanes"
"""Name of the symbolic state dimension that holds independent lanes (``META_STATE`` shapes)."""

POOL_NONE, POOL_LAST, POOL_MEAN = "none", "last", "mean"
"""How per-frame outputs become posteriors: ``none``: the graph outputs per-frame softmax ``scores``;
``last``: softmax of each frame's ``logits``; ``mean``: softmax of the mean of the last ``pool_frames``
frames' ``logits`` (the whole-clip model pools a clip's frames the same way)."""

REQUIRED_METADATA: tuple[str, ...] = (
    META_FORMAT, META_KIND, META_LABELS, META_SAMPLE_RATE, META_WINDOW_SAMPLES, META_HOP_SAMPLES, META_STATE,
)  # fmt: skip

# Bounds on the metadata: a damaged or hand-edited file must give a clear error, not a huge allocation.
MAX_LABELS = 1000
MAX_STATES = 16
MAX_STATE_SIZE = 1 << 20
"""Elements of one lane of all state tensors together (the shipped model: 2 x 2 x 192)."""
MAX_CLIP_SECONDS = 10
MIN_HOP_MS = 1.0
"""Frames are at least 1 ms apart (the shipped model: 20 ms)."""


class ModelError(KWSError, ValueError):
    """The model file is missing, not ONNX, or not a kws streaming model."""


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: fed as ``input``, returned as ``output``.

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


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime knows about a model, all read from its metadata.

    Attributes:
        path: the ONNX file.
        kind: ``"stream"`` or ``"clip"``.
        labels: every output class, in score order (``_silence_``, ``_unknown_``, keywords...).
        sample_rate: audio rate the model expects (Hz).
        window_samples: samples per analysis frame (the FFT size).
        hop_samples: samples between frames.
        clip_samples: length of a training clip (samples).
        states: recurrent state tensors (empty for a clip model).
        output: the per-frame output of a streaming graph: ``scores`` (softmax) or ``logits``.
        pooling: :data:`POOL_NONE` for ``scores``; :data:`POOL_LAST` or :data:`POOL_MEAN` for ``logits``.
        pool_frames: frames pooled by :data:`POOL_MEAN` (one clip's frames).
        quantization: ``"none"``, ``"dynamic"`` or ``"static-qdq"`` (``"unknown"`` if absent).
        version: kws version that exported the model (``"unknown"`` if absent).
        metadata: every metadata entry, raw.
    """

    path: Path
    kind: str
    labels: tuple[str, ...]
    sample_rate: int
    window_samples: int
    hop_samples: int
    clip_samples: int
    states: tuple[StateSpec, ...]
    output: str = OUTPUT_SCORES
    pooling: str = POOL_NONE
    pool_frames: int = 1
    quantization: str = "unknown"
    version: str = "unknown"
    metadata: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def context_samples(self) -> int:
        """Samples from before the new hops that a streaming call needs (``window - hop``)."""
        return self.window_samples - self.hop_samples

    @property
    def clip_frames(self) -> int:
        """Frames of one training clip."""
        return 1 + (self.clip_samples - self.window_samples) // self.hop_samples

    @property
    def hop_ms(self) -> float:
        return 1000.0 * self.hop_samples / self.sample_rate

    @property
    def keywords(self) -> tuple[str, ...]:
        """The labels that can be reported (everything but ``_silence_`` and ``_unknown_``)."""
        return tuple(x for x in self.labels if x not in NON_KEYWORD_LABELS)


def default_model_path() -> Path:
    """The model shipped inside the package: ``kws/pretrained/kws.stream.int8.onnx``."""
    import kws

    return Path(kws.__file__).resolve().parent / "pretrained" / PRETRAINED_MODEL_NAME


def session_options(threads: int = DEFAULT_THREADS) -> ort.SessionOptions:
    """SessionOptions tuned for a tiny model called many times a second.

    One intra-op thread (no thread pool hand-offs, no spinning cores), sequential execution, every graph
    optimisation, warnings only.

    Raises:
        ConfigError: ``threads`` is not a whole number in ``1..MAX_THREADS``.
    """
    check_threads(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the default also logs benign graph-optimisation warnings
    # With more than one thread, idle workers would otherwise busy-wait between the (tiny, frequent) calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def make_session(path: str | Path, threads: int = DEFAULT_THREADS) -> ort.InferenceSession:
    """An onnxruntime CPU session for ``path`` with :func:`session_options`.

    Raises:
        ModelError: the file is missing, not a regular file or not a loadable ONNX model.
        ConfigError: ``threads`` is out of range.
    """
    options = session_options(threads)
    path = regular_file(path, "model file", ModelError)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises InvalidProtobuf, Fail, InvalidGraph, NotImplemented, ...
        raise ModelError(f"{path} is not a loadable ONNX model: {_first_line(exc)}") from None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name if empty), at most ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _short(value: object, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (metadata values can be anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(text: str, limit: int = 80) -> str:
    """A metadata string made safe for a one-line message (control characters replaced, length cut)."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


def read_info(session: ort.InferenceSession, path: str | Path) -> ModelInfo:
    """Parse and check the kws metadata and the graph signature of a session.

    Raises:
        ModelError: naming the missing or invalid metadata entries, inputs or outputs.
    """
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelError(f"{path} is not a kws model: metadata {', '.join(missing)} missing "
                         "(export it with `kws export`)")  # fmt: skip
    if meta[META_FORMAT] != META_FORMAT_VERSION:
        raise ModelError(f"{path}: metadata format {_short(meta[META_FORMAT])} is not supported "
                         f"(this runtime reads format {META_FORMAT_VERSION!r})")  # fmt: skip
    kind = meta[META_KIND]
    labels = _labels(path, meta[META_LABELS])
    sample_rate = _integer(path, meta, META_SAMPLE_RATE, MIN_INPUT_RATE, MAX_INPUT_RATE)
    window = _integer(path, meta, META_WINDOW_SAMPLES, 1, sample_rate)  # at most 1 s
    hop = _integer(path, meta, META_HOP_SAMPLES, max(1, math.ceil(sample_rate * MIN_HOP_MS / 1000)), window)
    clip = _integer(path, meta, META_CLIP_SAMPLES, window, MAX_CLIP_SECONDS * sample_rate, sample_rate)
    feature_rate = _feature_rate(meta.get(META_FEATURE_CONFIG))
    if feature_rate is not None and feature_rate != sample_rate:
        raise ModelError(f"{path}: metadata {META_SAMPLE_RATE}={sample_rate} contradicts {META_FEATURE_CONFIG} "
                         f"(features computed at {feature_rate} Hz)")  # fmt: skip
    states = _state_specs(path, meta[META_STATE])

    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    output = OUTPUT_LOGITS if OUTPUT_LOGITS in outputs and kind == KIND_STREAM else OUTPUT_SCORES
    need_in = [INPUT_AUDIO, *(s.input for s in states)]
    need_out = [s.output for s in states]
    problems = [f"input {n!r}" for n in need_in if n not in inputs]
    problems += [f"output {n!r}" for n in need_out if n not in outputs]
    if output not in outputs:
        problems.append(f"output {OUTPUT_SCORES!r} or {OUTPUT_LOGITS!r}" if kind == KIND_STREAM
                        else f"output {OUTPUT_SCORES!r}")  # fmt: skip
    if problems:
        raise ModelError(f"{path}: graph has no {', '.join(problems)} (has inputs {sorted(inputs)}, "
                         f"outputs {sorted(outputs)})")  # fmt: skip
    pooling, pool_frames = POOL_NONE, 1
    if output == OUTPUT_LOGITS:
        pooling = meta.get(META_POOLING, "")
        if pooling not in (POOL_LAST, POOL_MEAN):
            raise ModelError(
                f"{path}: a model with per-frame {OUTPUT_LOGITS!r} needs metadata {META_POOLING} "
                f"({POOL_LAST!r} or {POOL_MEAN!r}), got {pooling or 'none'!r}"
            )
        clip_frames = 1 + (clip - window) // hop
        pool_frames = _integer(path, meta, META_POOL_FRAMES, 1, clip_frames, clip_frames)
    return ModelInfo(
        path=Path(path), kind=_printable(kind), labels=labels, sample_rate=sample_rate, window_samples=window,
        hop_samples=hop, clip_samples=clip, states=states, output=output, pooling=pooling,
        pool_frames=pool_frames,
        quantization=_printable(meta.get(META_QUANTIZATION, "unknown")),
        version=_printable(meta.get(META_VERSION, "unknown")), metadata=meta,
    )  # fmt: skip


def _integer(path: str | Path, meta: dict[str, str], key: str, low: int, high: int,
             default: int | None = None) -> int:  # fmt: skip
    """Metadata ``key`` as a whole number in ``[low, high]`` (``default`` if absent and not None)."""
    raw = meta.get(key)
    if raw is None and default is not None:
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ModelError(f"{path}: metadata {key} must be a whole number, got {_short(raw)}") from None
    if not low <= value <= high:
        raise ModelError(f"{path}: metadata {key}={value} is out of range [{low}, {high}]")
    return value


def _feature_rate(text: str | None) -> int | None:
    """The sample rate in the (informational) feature configuration, if it has a readable one."""
    try:
        rate = json.loads(text).get("sample_rate") if text else None
    except (ValueError, RecursionError, AttributeError):
        return None
    return rate if type(rate) is int else None


def _json(path: str | Path, key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested brackets
        raise ModelError(f"{path}: metadata {key} is not valid JSON ({_first_line(exc, 100)})") from None


def _labels(path: str | Path, text: str) -> tuple[str, ...]:
    labels = _json(path, META_LABELS, text)
    if not (isinstance(labels, list) and all(isinstance(x, str) and x and x.isprintable() for x in labels)):
        raise ModelError(f"{path}: metadata {META_LABELS} must be a JSON list of label names, got "
                         f"{_short(text)}")  # fmt: skip
    if not 2 <= len(labels) <= MAX_LABELS or len(set(labels)) != len(labels):
        raise ModelError(f"{path}: metadata {META_LABELS} must list 2 to {MAX_LABELS} distinct labels, got "
                         f"{_short(labels)}")  # fmt: skip
    return tuple(labels)


def _state_specs(path: str | Path, text: str) -> tuple[StateSpec, ...]:
    entries = _json(path, META_STATE, text)
    if not isinstance(entries, list) or len(entries) > MAX_STATES:
        raise ModelError(f"{path}: metadata {META_STATE} must be a JSON list of at most {MAX_STATES} state "
                         f"tensors, got {_short(text)}")  # fmt: skip
    try:
        specs = tuple(_state_spec(x) for x in entries)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{path}: invalid metadata {META_STATE} ({_first_line(exc, 200)})") from None
    size = sum(math.prod(d for d in s.shape if d != LANES_DIM) for s in specs)
    if size > MAX_STATE_SIZE:
        raise ModelError(f"{path}: metadata {META_STATE} declares {size} state values per lane "
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


class StreamingModel:
    """A loaded streaming model: ``run(audio, states) -> (outputs, new_states)``.

    Args:
        path: the ONNX file (``kws.stream.onnx`` / ``kws.stream.int8.onnx``).
        threads: onnxruntime intra-op threads.

    Raises:
        ModelError: missing/invalid file, missing metadata or inputs, or a whole-clip model.
    """

    def __init__(self, path: str | Path, threads: int = DEFAULT_THREADS) -> None:
        self.session = make_session(path, threads)
        self.info = read_info(self.session, path)
        if self.info.kind != KIND_STREAM or not self.info.states:
            raise ModelError(f"{path} is a {self.info.kind!r} model without recurrent state; the runtime "
                             "needs the streaming export (*.stream.onnx or *.stream.int8.onnx)")  # fmt: skip
        self._output_names = [self.info.output, *(s.output for s in self.info.states)]
        self._state_inputs = [s.input for s in self.info.states]

    def initial_states(self, lanes: int) -> list[np.ndarray]:
        """Zero states for ``lanes`` lanes, in ``info.states`` order."""
        return [s.zeros(lanes) for s in self.info.states]

    def run(self, audio: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One streaming step.

        Args:
            audio: float32 ``[1, context_samples + k * hop_samples]``.
            states: per :attr:`info.states`, float32 with ``lanes`` on the lane axis.

        Returns:
            per-frame ``info.output`` (scores or logits) ``[lanes, k, n_labels]``, and the states after the
            k frames.
        """
        feeds = dict(zip(self._state_inputs, states, strict=True))
        feeds[INPUT_AUDIO] = audio
        scores, *new_states = self.session.run(self._output_names, feeds)
        return scores, new_states


class BoundStep:
    """Streaming calls on preallocated buffers (onnxruntime IO binding), for the steady state of a stream.

    The audio input is always ``audio`` (a fixed ``[1, context + k * hop]`` buffer the caller refills in
    place), the per-frame outputs (``info.output``: scores or logits) land in :attr:`outputs` (overwritten by
    every call) and the states alternate between two
    preallocated buffers per state tensor (ping-pong), so a call allocates nothing. :attr:`states` are the
    current input states, which the caller may modify in place (lane resets).

    The first call is checked with an ordinary run: outputs of unexpected shapes raise ModelError.
    """

    def __init__(self, model: StreamingModel, audio: np.ndarray, lanes: int) -> None:
        info = model.info
        self.model = model
        self.audio = audio
        self.k = (audio.shape[1] - info.context_samples) // info.hop_samples
        self.outputs = np.zeros((lanes, self.k, len(info.labels)), dtype=np.float32)
        self._pairs = [(s.zeros(lanes), s.zeros(lanes)) for s in info.states]
        self._parity = 0
        self._check_shapes()
        self._bindings = [self._bind(0), self._bind(1)]

    @property
    def states(self) -> list[np.ndarray]:
        """The states the next call reads (``info.states`` order)."""
        return [pair[self._parity] for pair in self._pairs]

    def run(self) -> np.ndarray:
        """One call on ``audio``; returns :attr:`outputs` ``[lanes, k, n_labels]``."""
        self.model.session.run_with_iobinding(self._bindings[self._parity])
        self._parity ^= 1
        return self.outputs

    def run_other(self, audio: np.ndarray) -> np.ndarray:
        """One ordinary call on another audio length (end of a stream); the states advance the same way."""
        scores, new_states = self.model.run(audio, self.states)
        for current, new in zip(self.states, new_states, strict=True):
            np.copyto(current, new)
        return scores

    def zero_states(self) -> None:
        for current in self.states:
            current.fill(0.0)

    def _bind(self, parity: int) -> ort.IOBinding:
        binding = self.model.session.io_binding()

        def bind(name: str, array: np.ndarray, output: bool) -> None:
            method = binding.bind_output if output else binding.bind_input
            method(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)

        bind(INPUT_AUDIO, self.audio, False)
        bind(self.model.info.output, self.outputs, True)
        for spec, pair in zip(self.model.info.states, self._pairs, strict=True):
            bind(spec.input, pair[parity], False)
            bind(spec.output, pair[1 - parity], True)
        return binding

    def _check_shapes(self) -> None:
        info = self.model.info
        try:
            scores, new_states = self.model.run(np.zeros_like(self.audio), self.states)
        except Exception as exc:  # onnxruntime errors (wrong input shapes or types)
            raise ModelError(f"{info.path}: a streaming call failed: {_first_line(exc)}") from None
        problems = []
        names = [info.output, *(s.output for s in info.states)]
        for name, got, want in zip(names, [scores, *new_states], [self.outputs, *self.states], strict=True):
            if not isinstance(got, np.ndarray) or got.dtype != np.float32:
                problems.append(f"{name} is {getattr(got, 'dtype', type(got).__name__)}, expected float32")
            elif got.shape != want.shape:
                extra = " [lanes, k, n_labels]" if name == info.output else ""
                problems.append(f"{name} is {list(got.shape)}, expected {list(want.shape)}{extra}")
            elif not np.isfinite(got).all():
                problems.append(f"{name} holds non-finite values (nan or inf) for silence")
        if problems:
            raise ModelError(f"{info.path} does not follow the streaming contract: {'; '.join(problems)}")


def load_model(model: str | Path | StreamingModel | None = None, threads: int = DEFAULT_THREADS) -> StreamingModel:
    """A :class:`StreamingModel` from a path (None: the shipped model), or ``model`` itself if already loaded.

    Raises:
        ModelError: as :class:`StreamingModel`; for the shipped model, a hint to pass ``--model``.
    """
    if isinstance(model, StreamingModel):
        return model
    if model is None:
        path = default_model_path()
        if not path.is_file():
            raise ModelError(f"no model given and the shipped model {path} is not installed: "
                             "pass --model PATH/TO/kws.stream.int8.onnx")  # fmt: skip
        model = path
    return StreamingModel(model, threads)
