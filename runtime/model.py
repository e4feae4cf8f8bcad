"""Loading an exported streaming model with onnxruntime and reading everything it needs from the file.

Labels, sample rate, window, hop and the LSTM state shapes all come from the ONNX ``metadata_props``
(:mod:`kws.format`), so the runtime never needs the training code or its configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kws.format import (
    INPUT_AUDIO,
    KIND_STREAM,
    META_POOLING,
    OUTPUT_LOGITS,
    OUTPUT_SCORES,
    POOL_LAST,
    POOL_MEAN,
    POOLINGS,
    UNKNOWN,
    ModelError,
    ModelMetadata,
    StateSpec,
    first_line,
    frames_in,
    printable,
)
from kws.runtime.config import DEFAULT_THREADS, NON_KEYWORD_LABELS, PRETRAINED_MODEL_NAME, check_threads, regular_file

logger = logging.getLogger(__name__)


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
        output: the graph's scores output: ``logits`` per frame (streaming model) or ``scores`` (clip model).
        pooling: how a streaming model's frame logits become a clip's scores: :data:`POOL_LAST` or
            :data:`POOL_MEAN` (``kws.pooling``; as written for a clip model).
        pool_frames: frames pooled by :data:`POOL_MEAN` (one clip's frames).
        quantization: ``"none"``, ``"dynamic"`` or ``"static-qdq"`` (``"unknown"`` if absent).
        version: kws version that exported the model (``"unknown"`` if absent).
        thresholds: calibrated ``(keyword, threshold)`` pairs (``kws.thresholds``; () if absent).
        reset_period_ms: the lane reset period the model is calibrated for (``kws.reset_period_ms``, ms; 0: one
            lane, never reset; None if absent).
        patience: frames over threshold a detection needs (``kws.patience``; None if absent).
        metadata: every metadata entry, raw.

    How these settings become a run's: :func:`kws.runtime.config.spotter_config`.
    """

    path: Path
    kind: str
    labels: tuple[str, ...]
    sample_rate: int
    window_samples: int
    hop_samples: int
    clip_samples: int
    states: tuple[StateSpec, ...]
    output: str = OUTPUT_LOGITS
    pooling: str = POOL_MEAN
    pool_frames: int = 1
    quantization: str = UNKNOWN
    version: str = UNKNOWN
    thresholds: tuple[tuple[str, float], ...] = ()
    reset_period_ms: float | None = None
    patience: int | None = None
    metadata: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def context_samples(self) -> int:
        """Samples from before the new hops that a streaming call needs (``window - hop``)."""
        return self.window_samples - self.hop_samples

    @property
    def clip_frames(self) -> int:
        """Frames of one training clip."""
        return frames_in(self.clip_samples, self.window_samples, self.hop_samples)

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
        raise ModelError(f"{path} is not a loadable ONNX model: {first_line(exc)}") from None


def read_info(session: ort.InferenceSession, path: str | Path) -> ModelInfo:
    """Parse and check the kws metadata (:meth:`kws.format.ModelMetadata.from_props`) and the graph signature
    of a session.

    Raises:
        ModelError: naming the missing or invalid metadata entries, inputs or outputs.
    """
    meta = dict(session.get_modelmeta().custom_metadata_map)
    parsed = ModelMetadata.from_props(meta, path)
    kind, states = parsed.kind, parsed.states
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    output = OUTPUT_LOGITS if kind == KIND_STREAM else OUTPUT_SCORES
    need_in = [INPUT_AUDIO, *(s.input for s in states)]
    need_out = [s.output for s in states]
    problems = [f"input {n!r}" for n in need_in if n not in inputs]
    problems += [f"output {n!r}" for n in need_out if n not in outputs]
    if output not in outputs:
        problems.append(f"output {output!r}")
    if problems:
        raise ModelError(f"{path}: graph has no {', '.join(problems)} (has inputs {sorted(inputs)}, "
                         f"outputs {sorted(outputs)})")  # fmt: skip
    pooling, pool_frames = parsed.pooling, parsed.pool_frames
    if kind == KIND_STREAM:
        if pooling not in POOLINGS:
            raise ModelError(
                f"{path}: a model with per-frame {OUTPUT_LOGITS!r} needs metadata {META_POOLING} "
                f"({POOL_LAST!r} or {POOL_MEAN!r}), got {pooling or 'none'!r}"
            )
    return ModelInfo(
        path=Path(path), kind=printable(kind), labels=parsed.labels, sample_rate=parsed.sample_rate,
        window_samples=parsed.window_samples, hop_samples=parsed.hop_samples, clip_samples=parsed.clip_samples,
        states=states, output=output, pooling=pooling, pool_frames=pool_frames,
        quantization=printable(parsed.quantization), version=printable(parsed.version),
        thresholds=tuple(sorted(parsed.thresholds.items())), reset_period_ms=parsed.reset_period_ms,
        patience=parsed.patience, metadata=meta,
    )  # fmt: skip


class StreamingModel:
    """A loaded streaming model: ``run(audio, states) -> (outputs, new_states)``, the one streaming step.

    Everything that streams audio through a kws model drives this step: the engine (:mod:`kws.runtime.engine`,
    its steady state through :class:`BoundStep`), and the export's checks and calibration (:meth:`calls`).

    Args:
        path: the ONNX file (``kws.stream.onnx`` / ``kws.stream.int8.onnx``).
        threads: onnxruntime intra-op threads.

    Raises:
        ModelError: missing/invalid file, missing metadata or inputs, or a whole-clip model.
    """

    def __init__(self, path: str | Path, threads: int = DEFAULT_THREADS) -> None:
        self._attach(make_session(path, threads), path)

    @classmethod
    def from_session(cls, session: ort.InferenceSession, path: str | Path = "<session>") -> StreamingModel:
        """A model around a session made elsewhere (``path`` only names it in messages)."""
        model = cls.__new__(cls)
        model._attach(session, path)
        return model

    def _attach(self, session: ort.InferenceSession, path: str | Path) -> None:
        self.session = session
        self.info = read_info(session, path)
        if self.info.kind != KIND_STREAM or not self.info.states:
            raise ModelError(f"{path} is a {self.info.kind!r} model without recurrent state; the runtime "
                             "needs the streaming export (*.stream.onnx or *.stream.int8.onnx)")  # fmt: skip
        self._output_names = [self.info.output, *(s.output for s in self.info.states)]
        self._state_inputs = [s.input for s in self.info.states]

    def initial_states(self, lanes: int) -> list[np.ndarray]:
        """Zero states for ``lanes`` lanes, in ``info.states`` order."""
        return [s.zeros(lanes) for s in self.info.states]

    def feeds(self, audio: np.ndarray, states: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The session inputs of one call (``audio`` and ``states`` as in :meth:`run`), by input name."""
        feeds = dict(zip(self._state_inputs, states, strict=True))
        feeds[INPUT_AUDIO] = audio
        return feeds

    def run(self, audio: np.ndarray, states: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One streaming step.

        Args:
            audio: float32 ``[1, context_samples + k * hop_samples]``.
            states: per :attr:`info.states`, float32 with ``lanes`` on the lane axis.

        Returns:
            per-frame ``info.output`` (logits) ``[lanes, k, n_labels]``, and the states after the
            k frames.
        """
        return self._run(self.feeds(audio, states))

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        outputs, *new_states = self.session.run(self._output_names, feeds)
        return outputs, new_states

    def calls(self, chunks: Iterable[np.ndarray], lanes: int = 1) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Consecutive steps of one stream from zero state, each fed the states the previous one returned.

        Args:
            chunks: the audio of each call, ``[context_samples + k * hop_samples]`` samples (``k >= 1`` may
                change from call to call), converted to float32 ``[1, n]``.
            lanes: independent states run over the same audio.

        Yields:
            per call: its feeds (:meth:`feeds`) and its per-frame outputs ``[lanes, k, n_labels]``.
        """
        states = self.initial_states(lanes)
        for chunk in chunks:
            feeds = self.feeds(np.asarray(chunk, np.float32).reshape(1, -1), states)
            outputs, states = self._run(feeds)
            yield feeds, outputs

    def frame_outputs(self, chunks: Iterable[np.ndarray], lanes: int = 1) -> np.ndarray:
        """Per-frame outputs ``[lanes, frames, n_labels]`` of all :meth:`calls` of ``chunks`` together."""
        return np.concatenate([outputs for _, outputs in self.calls(chunks, lanes)], axis=1)


class BoundStep:
    """Streaming calls on preallocated buffers (onnxruntime IO binding), for the steady state of a stream.

    The audio input is always ``audio`` (a fixed ``[1, context + k * hop]`` buffer the caller refills in
    place), the per-frame outputs (``info.output``: logits) land in :attr:`outputs` (overwritten by
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
            raise ModelError(f"{info.path}: a streaming call failed: {first_line(exc)}") from None
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
