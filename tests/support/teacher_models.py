"""Stand-ins for openWakeWord's two speech-embedding ONNX files (same names, inputs, outputs and frame counts),
built in the test: shared by the teacher's tests and the verifier export's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import kws.teacher.embedding as embedding

SR = 16_000
N_FFT, HOP = 512, 160  # the real melspectrogram.onnx: 512-sample frames every 10 ms


def _onnx(nodes, inputs, outputs, initializers, path: Path) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def make_stand_in_models(folder: Path) -> Path:
    """``melspectrogram.onnx``: ``input`` [batch, samples] -> ``output`` [batch, 1, frames, 32] (log power of 32
    windowed cos/sin filters, 512 samples every 160: the real frame count); ``embedding_model.onnx``: ``input_1``
    [n, 76, 32, 1] -> ``conv2d_19`` [n, 1, 1, 96] (the mean of each bin over 3 blocks of the window)."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(N_FFT) / SR
    freqs = np.linspace(200, 4000, 32)
    window = np.hanning(N_FFT)
    filters = np.concatenate([np.cos(2 * np.pi * freqs[:, None] * t), np.sin(2 * np.pi * freqs[:, None] * t)])
    filters = (filters * window / N_FFT).astype(np.float32)[:, None, :]  # [64, 1, 512]
    pairs = np.concatenate([np.eye(32), np.eye(32)]).astype(np.float32)  # [64, 32]: cos^2 + sin^2
    f = TensorProto.FLOAT
    _onnx(
        [
            helper.make_node("Unsqueeze", ["input", "axis1"], ["x3"]),
            helper.make_node("Conv", ["x3", "filters"], ["bands"], kernel_shape=[N_FFT], strides=[HOP]),
            helper.make_node("Mul", ["bands", "bands"], ["power2"]),
            helper.make_node("Transpose", ["power2"], ["frames2"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["frames2", "pairs"], ["power"]),
            helper.make_node("Add", ["power", "floor"], ["safe"]),
            helper.make_node("Log", ["safe"], ["log"]),
            helper.make_node("Mul", ["log", "ten"], ["db"]),
            helper.make_node("Unsqueeze", ["db", "axis1"], ["output"]),
        ],
        [helper.make_tensor_value_info("input", f, ["batch_size", "samples"])],
        [helper.make_tensor_value_info("output", f, ["time", 1, "frames", 32])],
        [
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(filters, "filters"),
            numpy_helper.from_array(pairs, "pairs"),
            numpy_helper.from_array(np.array(1e-3, np.float32), "floor"),
            numpy_helper.from_array(np.array(10.0, np.float32), "ten"),
        ],
        folder / embedding.MEL_FILE,
    )
    pool = np.zeros((76 * 32, 96), np.float32)
    for frame in range(76):
        block = min(frame * 3 // 76, 2)
        for m in range(32):
            pool[frame * 32 + m, block * 32 + m] = 1.0 / 25
    _onnx(
        [
            helper.make_node("Reshape", ["input_1", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "pool"], ["pooled"]),
            helper.make_node("Reshape", ["pooled", "out_shape"], ["conv2d_19"]),
        ],
        [helper.make_tensor_value_info("input_1", f, ["n", 76, 32, 1])],
        [helper.make_tensor_value_info("conv2d_19", f, ["n", 1, 1, 96])],
        [
            numpy_helper.from_array(np.array([-1, 76 * 32], np.int64), "flat_shape"),
            numpy_helper.from_array(pool, "pool"),
            numpy_helper.from_array(np.array([-1, 1, 1, 96], np.int64), "out_shape"),
        ],
        folder / embedding.EMBEDDING_FILE,
    )
    return folder
