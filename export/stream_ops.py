"""Building blocks of the exported streaming step that keep a call's ONNX graph short and cheap.

onnxruntime's ``STFT`` recomputes its twiddle factors for every frame of every call (about 10 µs per 512-point
frame on one x86 core, half of a 100 ms streaming call), and the exporter's generic ``nn.LSTM`` translation
reshapes each layer's output through a dozen shape nodes. This module provides the cheaper equivalents that
:class:`kws.export.onnx_export.StreamFrontend` and :func:`kws.export.onnx_export.export_stream_model` use:

* :func:`frame_pieces`: the frames of a call as column ranges of ``[k, hop]`` reshapes of its audio (no gather).
* :func:`dft_bases`: a real DFT restricted to the window's support and to the bins the mel filterbank reads,
  folded on the DFT's symmetry (``x[n] ± x[N - n]``), so it is two small MatMuls: about a quarter of the
  multiply-adds of the full ``n_fft x (n_fft + 2)`` matrix product.
* :func:`basis_nodes`: the nodes that compute those bases from ``n`` and ``bin`` index vectors when the
  session loads (onnxruntime folds them once), so the file stores a few hundred integers instead of the
  matrices (the int8 file must stay <= 30% of the float one).
* :func:`lstm_translation`: ``aten.lstm`` as one ONNX ``LSTM`` per layer, time-major, states split with one
  ``Split`` and each layer's output squeezed (no Transpose/Shape/Slice/Reshape chains).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

BASIS_TOLERANCE = 1e-5
"""Largest allowed difference between a basis computed in the graph (float32 ``Cos``/``Sin``) and the float64
basis the PyTorch module holds."""


def frame_pieces(n_fft: int, hop: int, start: int, stop: int) -> list[tuple[int, int, int]]:
    """How frame samples ``[start, stop)`` of every frame of a call are cut from its audio.

    A call's audio has ``context + k*hop`` samples (``context = n_fft - hop``); ``audio[o : o + k*hop]``
    reshaped to ``[k, hop]`` holds frame samples ``[o, o + hop)`` of frame ``t`` in row ``t`` for every offset
    ``o <= context``. Each piece ``(o, c0, c1)`` takes columns ``[c0, c1)`` of the reshape at offset ``o``;
    the pieces' columns, concatenated, are frame samples ``start .. stop - 1`` in order.
    """
    context = n_fft - hop
    if not 0 <= start < stop <= n_fft:
        raise ValueError(f"frame samples [{start}, {stop}) are not inside a {n_fft}-sample frame")
    pieces, pos = [], start
    while pos < stop:
        offset = min(pos // hop * hop, context)
        c0, c1 = pos - offset, min(stop - offset, hop)
        pieces.append((offset, c0, c1))
        pos = offset + c1
    return pieces


def window_support(window: np.ndarray) -> int:
    """First sample ``a`` of the symmetric support ``[a, n_fft - a]`` holding every non-zero window sample.

    Raises:
        ValueError: the window is zero everywhere, or non-zero at sample 0 (which has no mirror sample).
    """
    nonzero = np.flatnonzero(np.asarray(window) != 0)
    if len(nonzero) == 0:
        raise ValueError("the analysis window is zero everywhere")
    n_fft = len(window)
    a = int(min(nonzero[0], n_fft - nonzero[-1]))
    if a < 1:
        raise ValueError("the analysis window is non-zero at sample 0; the folded DFT needs it to be 0")
    return a


def used_bins(mel_fb: np.ndarray) -> tuple[int, int]:
    """``[b0, b1)``: the smallest range of frequency bins holding every non-zero mel filterbank weight
    (``mel_fb [bins, n_mels]``)."""
    rows = np.flatnonzero(np.abs(np.asarray(mel_fb)).sum(axis=1) > 0)
    if len(rows) == 0:
        raise ValueError("the mel filterbank is zero everywhere")
    return int(rows[0]), int(rows[-1]) + 1


def basis_indices(n_fft: int, support: int, bins: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index vectors of the folded DFT: samples ``n = support .. n_fft/2`` ``[half, 1]``, bins ``[1, nb]``,
    and the row weights ``[half, 1]`` (1, and 1/2 for ``n = n_fft/2``, which folding counts twice)."""
    n = np.arange(support, n_fft // 2 + 1, dtype=np.int64)[:, None]
    b = np.arange(*bins, dtype=np.int64)[None, :]
    weights = np.ones((len(n), 1), dtype=np.float32)
    weights[-1] = 0.5
    return n, b, weights


def dft_bases(n_fft: int, support: int, bins: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The folded real DFT: ``cos`` and ``sin`` bases, float32 ``[n_fft/2 - support + 1, b1 - b0]``.

    With ``s[n] = x[n] + x[N-n]`` and ``d[n] = x[n] - x[N-n]`` (``N = n_fft``, ``x`` the windowed frame, zero
    outside ``[support, N - support]``, ``n = support .. N/2``), bin ``b`` of the DFT is
    ``Re = s @ cos[:, b]`` and ``-Im = d @ sin[:, b]``; the power ``Re² + Im²`` is exactly ``|X_b|²``.
    """
    if n_fft % 2:
        raise ValueError(f"the folded DFT needs an even n_fft, got {n_fft}")
    n, b, weights = basis_indices(n_fft, support, bins)
    angle = 2.0 * np.pi * ((n * b) % n_fft) / n_fft
    return (np.cos(angle) * weights).astype(np.float32), np.sin(angle).astype(np.float32)


def basis_nodes(prefix: str, n_fft: int, support: int, bins: tuple[int, int], outputs: tuple[str, str]) -> tuple[
    list[onnx.NodeProto], list[onnx.TensorProto]]:  # fmt: skip
    """Nodes (and their small initializers) computing :func:`dft_bases` as tensors named ``outputs``
    (cos, sin): ``angle = ((n * b) mod N) * 2π/N`` from int64 index vectors, then ``Cos`` (times the row
    weights) and ``Sin``. Every input is constant, so onnxruntime computes them once when a session loads."""
    n, b, weights = basis_indices(n_fft, support, bins)

    def name(part: str) -> str:
        return f"{prefix}_{part}"

    inits = [
        numpy_helper.from_array(n, name("n")),
        numpy_helper.from_array(b, name("bins")),
        numpy_helper.from_array(np.array(n_fft, np.int64), name("n_fft")),
        numpy_helper.from_array(np.array(2.0 * np.pi / n_fft, np.float32), name("step")),
        numpy_helper.from_array(weights, name("weights")),
    ]
    cos_out, sin_out = outputs
    nodes = [
        helper.make_node("Mul", [name("n"), name("bins")], [name("nb")], name=name("nb")),
        helper.make_node("Mod", [name("nb"), name("n_fft")], [name("phase")], name=name("phase")),
        helper.make_node("Cast", [name("phase")], [name("phase_f")], name=name("phase_f"), to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [name("phase_f"), name("step")], [name("angle")], name=name("angle")),
        helper.make_node("Cos", [name("angle")], [name("cos")], name=name("cos")),
        helper.make_node("Mul", [name("cos"), name("weights")], [cos_out], name=name("cos_weighted")),
        helper.make_node("Sin", [name("angle")], [sin_out], name=name("sin")),
    ]
    return nodes, inits


def compute_in_graph(
    proto: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], inits: Sequence[onnx.TensorProto]
) -> None:
    """Replace the initializers that ``nodes`` produce by those nodes (in place, first in the graph).

    The values the nodes compute (evaluated with onnx's reference evaluator) must match the initializers
    they replace within :data:`BASIS_TOLERANCE`.

    Raises:
        ValueError: an output of ``nodes`` is not an initializer of ``proto``, or its value differs.
    """
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    stored = {t.name: t for t in graph.initializer}
    produced = [o for node in nodes for o in node.output if o in stored]
    missing = {o for node in nodes for o in node.output} - set(produced)
    missing -= {i for node in nodes for i in node.input}  # intermediate values
    if missing or not produced:
        raise ValueError(f"no initializer to replace for {sorted(missing) or 'any output'}")
    values_info = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in produced]
    sub = helper.make_model(
        helper.make_graph(list(nodes), "basis", [], values_info, initializer=list(inits)),
        opset_imports=[o for o in proto.opset_import if o.domain in ("", "ai.onnx")],
    )
    computed = ReferenceEvaluator(sub).run(None, {})
    for name, value in zip(produced, computed, strict=True):
        want = numpy_helper.to_array(stored[name])
        if value.shape != want.shape or float(np.abs(value - want).max()) > BASIS_TOLERANCE:
            raise ValueError(f"the nodes computing {name!r} do not reproduce it")
        graph.initializer.remove(stored[name])
    graph.initializer.extend(inits)
    for node in reversed(list(nodes)):
        graph.node.insert(0, node)


# ------------------------------------------------------------------------------------------------ LSTM


def _reorder_gates(op: Any, weight: Any, hidden: int) -> Any:
    """PyTorch's gate order ``i, f, g, o`` (along axis 0, ``hidden`` rows each) -> ONNX's ``i, o, f, c``
    (Slices rather than a Split: the constant folder folds single-output nodes only)."""
    i, f, g, o = (op.Slice(weight, [j * hidden], [(j + 1) * hidden], [0]) for j in range(4))
    return op.Concat(i, o, f, g, axis=0)


def lstm_translation(
    input: Any, hx: Sequence[Any], params: Sequence[Any], has_biases: bool, num_layers: int, dropout: float,
    train: bool, bidirectional: bool, batch_first: bool,
) -> tuple[Any, Any, Any]:  # fmt: skip
    """``aten.lstm.input`` -> ONNX for the streaming step (a ``custom_translation_table`` entry).

    Time-major input ``[k, lanes, n_in]``, states ``[layers, lanes, hidden]``: each layer is one ONNX
    ``LSTM`` whose ``Y [k, 1, lanes, hidden]`` is squeezed to the next layer's input; the states are split
    with one ``Split`` per tensor and the new ones joined with one ``Concat``. The gate reordering reads only
    weights, so the export's constant folding turns it into initializers.

    Raises:
        ValueError: a bidirectional, batch-first, bias-free or training-mode LSTM (the streaming step has none).
    """
    from onnxscript.onnx_opset import opset18 as op

    if bidirectional or batch_first or not has_biases or (train and dropout > 0):
        raise ValueError("the streaming LSTM translation handles unidirectional, time-major LSTMs with biases")
    h0, c0 = hx
    hidden = h0.shape[2]
    hs = op.Split(h0, axis=0, num_outputs=num_layers) if num_layers > 1 else (h0,)
    cs = op.Split(c0, axis=0, num_outputs=num_layers) if num_layers > 1 else (c0,)
    x, h_out, c_out = input, [], []
    for layer in range(num_layers):
        w_ih, w_hh, b_ih, b_hh = params[4 * layer : 4 * layer + 4]
        w = op.Unsqueeze(_reorder_gates(op, w_ih, hidden), [0])
        r = op.Unsqueeze(_reorder_gates(op, w_hh, hidden), [0])
        b = op.Unsqueeze(op.Concat(_reorder_gates(op, b_ih, hidden), _reorder_gates(op, b_hh, hidden), axis=0), [0])
        y, y_h, y_c = op.LSTM(x, w, r, b, initial_h=hs[layer], initial_c=cs[layer], direction="forward",
                              hidden_size=hidden)  # fmt: skip
        x = op.Squeeze(y, [1])
        h_out.append(y_h)
        c_out.append(y_c)
    join = (lambda parts: op.Concat(*parts, axis=0)) if num_layers > 1 else (lambda parts: parts[0])
    return x, join(h_out), join(c_out)
