"""``kws teacher --export-verifier OUT.onnx``: the teacher as ONE second-stage verifier ONNX file.

The graph (opset 13, :mod:`kws.verifier_format` describes the contract): ``audio [1, samples]`` float32 in
[-1, 1] -> int16 scale (rounded and clipped, as :func:`kws.data.audio.float_to_int16`) -> zeros of the teacher's
``pad_seconds`` on both sides (as every training clip was centred) -> openWakeWord's ``melspectrogram.onnx`` ->
``* 0.1 + 2`` -> every 76-frame window, 8 frames apart (a ``Gather`` whose indices the graph computes from the
input length) -> ``embedding_model.onnx`` -> the trained head (rebuilt from its weights with plain ONNX
operators: LayerNorm, Linear, exact GELU, mean/max or attention pooling) -> softmax -> ``scores [1, n_labels]``.
The two pretrained graphs are copied in unchanged (names prefixed), so the file runs with onnxruntime alone.

Attribution: Google's ``speech_embedding`` (Apache-2.0), ONNX port by openWakeWord; written into the metadata.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kws import __version__
from kws.errors import KWSError
from kws.format import INPUT_AUDIO, OUTPUT_SCORES
from kws.teacher.embedding import (
    EMBEDDING_DIM,
    EMBEDDING_FILE,
    MEL_BINS,
    MEL_FILE,
    MEL_OFFSET,
    MEL_SCALE,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    WINDOW_STEP,
    package_models_dir,
)
from kws.verifier_format import VerifierMetadata

logger = logging.getLogger(__name__)

OPSET = 13
"""Opset of the pretrained graphs (both are opset 13), kept for the whole file."""
MEL_N_FFT, MEL_HOP = 512, 160
"""The melspectrogram's frames: ``1 + (samples - 512) // 160`` (measured on the real file)."""
DEFAULT_WINDOW_MS = 1300.0
DEFAULT_WINDOW_END_MS = 0.0
DEFAULT_THRESHOLD = 0.5
LAYER_NORM_EPS = 1e-5


def min_input_samples(pad_samples: int) -> int:
    """Shortest input that gives one embedding window (76 mel frames) after the padding."""
    return max(1, MEL_N_FFT + (WINDOW_FRAMES - 1) * MEL_HOP - 2 * pad_samples)


def windows_for(samples: int, pad_samples: int) -> int:
    """Embedding windows of an input of ``samples`` (0 if too short)."""
    frames = 1 + (samples + 2 * pad_samples - MEL_N_FFT) // MEL_HOP
    return 0 if frames < WINDOW_FRAMES else 1 + (frames - WINDOW_FRAMES) // WINDOW_STEP


class _Graph:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._n = 0

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        self._n += 1
        name = f"v/const{self._n}"
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attributes: Any) -> str:
        self._n += 1
        name = out or f"v/{op_type.lower()}{self._n}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [name], name=f"v/n{self._n}", **attributes))
        return name

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """``x @ weight.T + bias`` (a torch ``nn.Linear``)."""
        return self.op("Add", self.op("MatMul", x, self.const(weight.T)), self.const(bias))

    def gelu(self, x: str) -> str:
        """Exact GELU: ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (torch's default)."""
        erf = self.op("Erf", self.op("Mul", x, self.const(1 / math.sqrt(2))))
        return self.op("Mul", self.op("Mul", x, self.const(0.5)), self.op("Add", erf, self.const(1.0)))

    def layer_norm(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        mean = self.op("ReduceMean", x, axes=[-1], keepdims=1)
        centred = self.op("Sub", x, mean)
        var = self.op("ReduceMean", self.op("Mul", centred, centred), axes=[-1], keepdims=1)
        scale = self.op("Sqrt", self.op("Add", var, self.const(LAYER_NORM_EPS)))
        return self.op("Add", self.op("Mul", self.op("Div", centred, scale), self.const(weight)), self.const(bias))


def _head_nodes(g: _Graph, x: str, state: Mapping[str, np.ndarray], pooling: str, n_windows: int) -> str:
    """The teacher head (:class:`kws.teacher.head.TeacherHead`, eval mode) on ``x`` ``[1, W, 96]`` -> logits."""
    z = g.layer_norm(x, state["norm.weight"], state["norm.bias"])
    if pooling == "flatten":
        flat = g.op("Reshape", z, g.const([1, n_windows * EMBEDDING_DIM], np.int64))
        hidden = g.gelu(g.linear(flat, state["out.2.weight"], state["out.2.bias"]))
        return g.linear(hidden, state["out.5.weight"], state["out.5.bias"])
    z = g.gelu(g.linear(z, state["frame.1.weight"], state["frame.1.bias"]))
    if pooling == "attention":
        weights = g.op("Softmax", g.linear(z, state["score.weight"], state["score.bias"]), axis=1)
        first = g.op("ReduceSum", g.op("Mul", weights, z), g.const([1], np.int64), keepdims=0)
    else:
        first = g.op("ReduceMean", z, axes=[1], keepdims=0)
    pooled = g.op("Concat", first, g.op("ReduceMax", z, axes=[1], keepdims=0), axis=-1)
    return g.linear(pooled, state["out.1.weight"], state["out.1.bias"])


def _windowing(g: _Graph, frames: str) -> str:
    """Mel frames ``[F, 32]`` -> ``[W, 76, 32, 1]``: every 76-frame window, 8 frames apart."""
    count = g.op("Slice", g.op("Shape", frames), g.const([0], np.int64), g.const([1], np.int64))
    step = g.const(WINDOW_STEP, np.int64)
    windows = g.op("Add", g.op("Div", g.op("Sub", count, g.const(WINDOW_FRAMES, np.int64)), step),
                   g.const(1, np.int64))  # fmt: skip
    starts = g.op("Range", g.const(0, np.int64), g.op("Squeeze", windows, g.const([0], np.int64)),
                  g.const(1, np.int64))  # fmt: skip
    first = g.op("Unsqueeze", g.op("Mul", starts, step), g.const([1], np.int64))
    index = g.op("Add", first, g.const(np.arange(WINDOW_FRAMES)[None], np.int64))
    return g.op("Unsqueeze", g.op("Gather", frames, index, axis=0), g.const([3], np.int64))


def build_verifier_proto(
    mel: Any, embedding: Any, head_state: Mapping[str, np.ndarray], pooling: str, n_windows: int, n_labels: int,
    pad_samples: int, input_samples: int = 0,
) -> Any:  # fmt: skip
    """The composed ONNX ``ModelProto`` (no metadata) from the two pretrained graphs and the head's weights.

    Args:
        mel, embedding: the loaded ``melspectrogram.onnx`` / ``embedding_model.onnx`` protos.
        head_state: the head's ``state_dict`` as float32 arrays.
        pooling: the head's pooling; n_windows: its windows (used by ``flatten`` only); n_labels: its outputs.
        pad_samples: zeros added on each side; input_samples: fixed input length (0: any).
    """
    import onnx
    from onnx import TensorProto, compose, helper

    mel = compose.add_prefix(mel, "mel/")
    embedding = compose.add_prefix(embedding, "emb/")
    g = _Graph()
    pcm = g.op("Clip", g.op("Round", g.op("Mul", INPUT_AUDIO, g.const(32768.0))), g.const(-32768.0),
               g.const(32767.0))  # fmt: skip
    zeros = g.const(np.zeros((1, pad_samples), np.float32))
    g.op("Concat", zeros, pcm, zeros, axis=1, out=mel.graph.input[0].name)
    pre = list(g.nodes)
    g.nodes.clear()
    scaled = g.op("Add", g.op("Mul", mel.graph.output[0].name, g.const(MEL_SCALE)), g.const(MEL_OFFSET))
    frames = g.op("Reshape", scaled, g.const([-1, MEL_BINS], np.int64))
    g.op("Identity", _windowing(g, frames), out=embedding.graph.input[0].name)
    middle = list(g.nodes)
    g.nodes.clear()
    sequence = g.op("Reshape", embedding.graph.output[0].name, g.const([1, -1, EMBEDDING_DIM], np.int64))
    g.op("Softmax", _head_nodes(g, sequence, head_state, pooling, n_windows), axis=-1, out=OUTPUT_SCORES)
    nodes = [*pre, *mel.graph.node, *middle, *embedding.graph.node, *g.nodes]
    samples: int | str = input_samples or "samples"
    graph = helper.make_graph(
        nodes, "kws_verifier",
        [helper.make_tensor_value_info(INPUT_AUDIO, TensorProto.FLOAT, [1, samples])],
        [helper.make_tensor_value_info(OUTPUT_SCORES, TensorProto.FLOAT, [1, n_labels])],
        [*mel.graph.initializer, *embedding.graph.initializer, *g.initializers],
        value_info=[*mel.graph.value_info, *embedding.graph.value_info],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kws")
    model.ir_version = max(mel.ir_version, embedding.ir_version, 7)
    onnx.checker.check_model(model)
    return model


def _summary(training: Mapping[str, Any]) -> dict[str, Any]:
    """How the head was trained for verification (:mod:`kws.teacher.verifier_train`), without the per-epoch
    history (its length and best held-out loss instead)."""
    history = training.get("history", [])
    losses = [h["holdout_loss"] for h in history if h.get("holdout_loss") == h.get("holdout_loss")]
    return {**{k: v for k, v in training.items() if k != "history"}, "epochs_run": len(history),
            "best_holdout_loss": min(losses) if losses else None}  # fmt: skip


def export_verifier(
    teacher_path: str | Path, out: str | Path, *, embedding_models: str | Path | None = None,
    window_ms: float = DEFAULT_WINDOW_MS, window_end_ms: float = DEFAULT_WINDOW_END_MS,
    threshold: float = DEFAULT_THRESHOLD,
) -> VerifierMetadata:  # fmt: skip
    """Write the verifier file for ``teacher.pt`` to ``out`` (atomically) and check that it loads and agrees
    with the teacher (the same clip through the head in torch and through the file).

    Raises:
        KWSError: no teacher, no embedding files (the ``kws[teacher]`` extra), a window the head cannot take,
            or a file that does not agree with the teacher.
    """
    import onnx
    import torch

    from kws.io import atomic_write
    from kws.runtime.verifier import Verifier
    from kws.teacher.build import load_teacher
    from kws.teacher.embedding import SpeechEmbedding
    from kws.teacher.head import head_logits

    head, config, labels, payload = load_teacher(teacher_path)
    if payload.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise KWSError(f"{teacher_path}: the teacher works at {payload['sample_rate']} Hz, not {SAMPLE_RATE}")
    folder = Path(embedding_models).expanduser() if embedding_models is not None else package_models_dir()
    embedder = SpeechEmbedding(folder, threads=1, pad_seconds=config.pad_seconds)  # checks both files load
    pad = embedder.pad_samples
    window = round(window_ms * SAMPLE_RATE / 1000)
    n_windows = int(payload["n_windows"])
    fixed = 0
    if config.pooling == "flatten":  # position-aware: only the training clips' number of windows
        fixed = window
        if windows_for(window, pad) != n_windows:
            raise KWSError(f"the teacher's flatten head takes {n_windows} windows; a {window_ms:g} ms window gives "
                           f"{windows_for(window, pad)} (use --verifier-window-ms "
                           f"{1000 * int(payload['clip_samples']) / SAMPLE_RATE:g})")  # fmt: skip
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in head.state_dict().items()}
    proto = build_verifier_proto(onnx.load(str(folder / MEL_FILE)), onnx.load(str(folder / EMBEDDING_FILE)),
                                 state, config.pooling, n_windows, len(labels), pad, fixed)  # fmt: skip
    reports = payload.get("reports", {})
    meta = VerifierMetadata(
        labels=tuple(labels), sample_rate=SAMPLE_RATE, window_ms=float(window_ms), window_end_ms=float(window_end_ms),
        threshold=float(threshold), min_samples=fixed or min_input_samples(pad), input_samples=fixed,
        pad_ms=1000 * pad / SAMPLE_RATE, version=__version__,
        teacher={
            "file": Path(teacher_path).name, "config": payload.get("config", {}),
            "embedding_models": payload.get("embedding_models", {}),
            "accuracy": {k: {"accuracy": r.get("accuracy"), "ci95": r.get("accuracy_ci95"), "clips": r.get("clips")}
                         for k, r in reports.items()},
            **({"verifier_training": _summary(payload["verifier_training"])} if "verifier_training" in payload
               else {}),
        },
    )  # fmt: skip
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    out = Path(out)
    atomic_write(out, lambda tmp: onnx.save_model(proto, str(tmp)))
    # the file against the teacher itself (embedding + torch head), on one seeded noise clip
    clip = (np.random.default_rng(0).standard_normal(window) * 0.1).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(head_logits(head, embedder.embed(clip[None], desc="check"))), -1)
    got = Verifier(out).scores(clip)
    if not np.allclose(got, expected.numpy()[0], atol=1e-3):
        raise KWSError(f"{out}: the verifier file disagrees with the teacher (max difference "
                       f"{np.abs(got - expected.numpy()[0]).max():.2g})")  # fmt: skip
    logger.info("verifier %s: %d labels, window %g ms ending %+g ms from the detection, threshold %g", out,
                len(labels), window_ms, window_end_ms, threshold)  # fmt: skip
    return meta
