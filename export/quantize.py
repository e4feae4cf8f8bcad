"""int8 versions of the exported models, made with onnxruntime's quantization tools.

Two variants, both leaving the MFCC front end's arithmetic in float (its power spectrum spans many decades; a
per-tensor 8-bit activation scale would wipe out quiet frames, which the log then turns into large errors):

* ``dynamic`` (:func:`quantize_dynamic_model`): ``quantize_dynamic`` turns every ONNX ``LSTM`` into
  ``com.microsoft.DynamicQuantizeLSTM`` (int8 weights, per-call 8-bit activations) and the classifier's
  MatMul/Gemm into ``MatMulInteger``. No calibration data.
* ``static-qdq`` (:func:`quantize_static_model`): ``quantize_static`` in QDQ format, activation ranges
  calibrated on real clips (:class:`ClipCalibrationReader`, :class:`StreamCalibrationReader`). onnxruntime's
  QDQ quantizer has no LSTM support, so it quantizes the classifier (MatMul/Gemm) only; the LSTM weights are
  then stored as int8 with a ``DequantizeLinear`` in front (weight-only), which keeps the file small but runs
  the recurrence in float.

In both variants the constant front-end matrices (mel filterbank, DCT) are stored as float16 (see
:func:`compress_frontend_weights`), which keeps the file near a quarter of the float one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kws.export.onnx_export import ExportError, save_model, set_metadata
from kws.export.streaming import stream_chunks, stream_model
from kws.format import INPUT_AUDIO, META_QUANTIZATION, QUANT_DYNAMIC, QUANT_STATIC

logger = logging.getLogger(__name__)

INT8_MAX = 127
WEIGHT_ONLY_MIN_ELEMENTS = 256
"""LSTM weight matrices smaller than this stay float in the static variant (the scales would not pay off)."""

STREAM_CALIBRATION_HOPS = 10
"""Hops per streaming call when calibrating the streaming model (the runtime's typical call)."""


# --------------------------------------------------------------------------------------------- graph helpers


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


RECURRENT_OPS = ("LSTM", "DynamicQuantizeLSTM")


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a name (in place): the quantizers select nodes by name."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"kws_node_{i}"


def _downstream_of_recurrence(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that read (directly or not) an output of an LSTM node."""
    reached: set[str] = set()
    names: set[str] = set()
    for node in model.graph.node:  # nodes are stored in topological order
        if node.op_type in RECURRENT_OPS:
            reached.update(node.output)
        elif any(i in reached for i in node.input):
            reached.update(node.output)
            names.add(node.name)
    return names


def classifier_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Names of the LSTM nodes and of the MatMul/Gemm nodes downstream of an LSTM (the classifier head).

    Everything else (STFT or the streaming step's DFT MatMuls, mel and DCT MatMuls, normalisation) is the front
    end, which stays float. A query:
    the nodes must have names already (:func:`name_nodes`).
    """
    unnamed = sum(not n.name for n in model.graph.node)
    if unnamed:
        raise ExportError(f"{unnamed} node(s) of the graph have no name; call name_nodes() first")
    lstm = [n.name for n in model.graph.node if n.op_type == "LSTM"]
    if not lstm:
        raise ExportError("the exported graph has no LSTM node; cannot quantize it")
    after = _downstream_of_recurrence(model)
    head = [n.name for n in model.graph.node if n.name in after and n.op_type in ("MatMul", "Gemm")]
    return lstm, head


def _weight_only_int8(model: onnx.ModelProto, name: str, axis: int, consumers: Sequence[onnx.NodeProto]) -> bool:
    """Store the float initializer ``name`` as int8 (symmetric, one scale per slice along ``axis``).

    A ``DequantizeLinear`` node recreates the float tensor under a new name, which ``consumers`` then read.
    Returns False (and changes nothing) for small or non-float tensors.
    """
    inits = _initializers(model)
    tensor = inits.get(name)
    if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
        return False
    weight = numpy_helper.to_array(tensor)
    if weight.size < WEIGHT_ONLY_MIN_ELEMENTS:
        return False
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    scale = (np.abs(weight).max(axis=reduce_axes) / INT8_MAX).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * weight.ndim
    shape[axis] = -1
    quantized = np.clip(np.round(weight / scale.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    model.graph.initializer.remove(tensor)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(quantized, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero_point"),
        ]
    )
    restored = f"{name}_dequantized"
    dq = helper.make_node(
        "DequantizeLinear",
        [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
        [restored],
        name=f"{name}_DequantizeLinear",
        axis=axis,
    )
    for node in consumers:
        for i, inp in enumerate(node.input):
            if inp == name:
                node.input[i] = restored
    model.graph.node.insert(0, dq)  # initializers only: topologically first
    return True


def compress_frontend_weights(model: onnx.ModelProto) -> int:
    """Store the constant right-hand matrices of the front end's MatMuls (mel filterbank, DCT) as float16.

    A ``Cast`` back to float32 follows each (onnxruntime folds it when the session loads, so the arithmetic is
    unchanged and costs nothing per call). The streaming step's DFT bases are computed in the graph (no
    initializer), so they stay float32. float16 rather than int8: the narrow low-frequency mel filters have
    a few small weights each, and 8-bit steps changed their energies enough to flip a trained model's top-1
    class on ~40% of real test clips (float16: ~1%, the same as float weights with the int8 LSTM).

    Returns the number of matrices converted.
    """
    name_nodes(model)
    after = _downstream_of_recurrence(model)
    inits = _initializers(model)
    count = 0
    for node in list(model.graph.node):
        if node.op_type != "MatMul" or node.name in after or node.input[1] not in inits:
            continue
        tensor = inits.pop(node.input[1])
        if tensor.data_type != onnx.TensorProto.FLOAT or len(tensor.dims) != 2:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}_fp16")
        model.graph.initializer.remove(tensor)
        model.graph.initializer.append(half)
        cast = helper.make_node(
            "Cast", [half.name], [tensor.name], name=f"{tensor.name}_Cast", to=onnx.TensorProto.FLOAT
        )
        model.graph.node.insert(0, cast)  # reads an initializer only: topologically first
        count += 1
    return count


def compress_lstm_weights(model: onnx.ModelProto) -> int:
    """Weight-only int8 for the W and R inputs of every float ``LSTM`` node (one scale per gate row)."""
    count = 0
    inits = _initializers(model)
    for node in list(model.graph.node):
        if node.op_type != "LSTM":
            continue
        for name in node.input[1:3]:
            if name in inits:
                users = [n for n in model.graph.node if name in n.input]
                count += _weight_only_int8(model, name, axis=1, consumers=users)  # [dirs, 4*hidden, in]
    return count


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime's quantizer logs through the root logger: a generic pre-processing hint (a warning) and
    per-tensor INFO lines. Hide those while it runs; everything else still gets through."""

    class _Hint(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.name != "root":
                return True
            return record.levelno >= logging.WARNING and "pre-processing before quantization" not in record.getMessage()

    hint = _Hint()
    root = logging.getLogger()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def _finish(model: onnx.ModelProto, quantization: str, out_path: Path) -> onnx.ModelProto:
    set_metadata(model, {META_QUANTIZATION: quantization})
    onnx.checker.check_model(model)
    save_model(model, out_path)
    return model


# ---------------------------------------------------------------------------------------------- dynamic


def quantize_dynamic_model(fp32_path: Path, out_path: Path, per_channel: bool = False) -> onnx.ModelProto:
    """Dynamic int8 quantization of an exported model (clip or stream), written atomically to ``out_path``.

    Args:
        fp32_path: the float model written by :mod:`kws.export.onnx_export`.
        per_channel: one weight scale per gate row instead of per tensor (larger file, rarely more accurate
            for LSTMs).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    name_nodes(model)
    lstm, head = classifier_nodes(model)
    with tempfile.TemporaryDirectory(prefix="kws-quant-") as tmp, _quiet_quantizer():
        named = Path(tmp) / "named.onnx"
        onnx.save_model(model, str(named))  # with the node names the quantizer selects by
        raw = Path(tmp) / "dynamic.onnx"
        quantize_dynamic(
            named,
            raw,
            op_types_to_quantize=["LSTM", "MatMul", "Gemm"],
            nodes_to_quantize=lstm + head,
            per_channel=per_channel,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
        quantized = onnx.load(str(raw))
    left = [n.name for n in quantized.graph.node if n.op_type == "LSTM"]
    if left:
        raise ExportError(f"dynamic quantization left float LSTM node(s) {left}")
    compress_frontend_weights(quantized)
    return _finish(quantized, QUANT_DYNAMIC, out_path)


# ----------------------------------------------------------------------------------------------- static


class ClipCalibrationReader:
    """Calibration feeds for the whole-clip model: one clip per call (``audio [1, clip_samples]``)."""

    def __init__(self, clips: np.ndarray) -> None:
        self._clips = np.asarray(clips, np.float32)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._clips):
            return None
        clip = self._clips[self._next : self._next + 1]
        self._next += 1
        return {INPUT_AUDIO: clip}

    def rewind(self) -> None:
        self._next = 0


class StreamCalibrationReader:
    """Calibration feeds for the streaming model: each clip streamed in calls of ``hops`` frames.

    The calls are the runtime's streaming steps (:meth:`kws.runtime.model.StreamingModel.calls`): the LSTM
    states fed with each call are the ones the float streaming model returned for the previous call of the
    same clip, so the calibrated ranges are those of real streaming.
    """

    def __init__(self, fp32_stream_path: Path, clips: np.ndarray, *, hops: int = STREAM_CALIBRATION_HOPS) -> None:
        model = stream_model(fp32_stream_path)
        context, hop = model.info.context_samples, model.info.hop_samples
        self._feeds: list[dict[str, np.ndarray]] = [
            feeds
            for clip in np.asarray(clips, np.float32)
            for feeds, _ in model.calls(stream_chunks(clip, context, hop, hops))
        ]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return self._feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def quantize_static_model(fp32_path: Path, out_path: Path, reader: object) -> onnx.ModelProto:
    """Static QDQ int8 quantization of an exported model, calibrated with ``reader``.

    Args:
        reader: a :class:`ClipCalibrationReader` or :class:`StreamCalibrationReader` matching the model.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    name_nodes(model)
    _, head = classifier_nodes(model)
    with tempfile.TemporaryDirectory(prefix="kws-quant-") as tmp, _quiet_quantizer():
        named = Path(tmp) / "named.onnx"
        onnx.save_model(model, str(named))
        raw = Path(tmp) / "static.onnx"
        quantize_static(
            named,
            raw,
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_quantize=head,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True},
        )
        quantized = onnx.load(str(raw))
    compress_lstm_weights(quantized)
    compress_frontend_weights(quantized)
    return _finish(quantized, QUANT_STATIC, out_path)
