"""The streaming step's cheap graph (kws.export.stream_ops): framing by reshapes, the folded DFT, bases computed
at load, the time-major LSTM translation; and that the exported step keeps few per-call nodes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from kws.config import FeatureConfig  # noqa: E402
from kws.export import stream_ops as so  # noqa: E402
from kws.export.onnx_export import StreamFrontend  # noqa: E402
from kws.model.features import MFCCFrontend  # noqa: E402
from support.export_models import export_model, make_model, word_clips  # noqa: E402

MAX_CALL_NODES = 40
"""Nodes a streaming call may run (the exporter's STFT + generic LSTM graph ran 50; this one runs 38)."""


def hann_in_frame(n_fft: int, width: int) -> np.ndarray:
    """A periodic Hann window of ``width`` samples centred in ``n_fft`` samples, as torch.stft pads it."""
    window = np.zeros(n_fft)
    left = (n_fft - width) // 2
    window[left : left + width] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(width) / width)
    return window


def cut_frames(audio: np.ndarray, n_fft: int, hop: int, start: int, stop: int) -> np.ndarray:
    """Frame samples ``[start, stop)`` of every frame of ``audio [context + k*hop]``, through the pieces."""
    context = n_fft - hop
    return np.concatenate(
        [audio[o : len(audio) - (context - o)].reshape(-1, hop)[:, c0:c1] for o, c0, c1 in
         so.frame_pieces(n_fft, hop, start, stop)], axis=1,
    )  # fmt: skip


@pytest.mark.parametrize("n_fft,hop", [(512, 320), (512, 160), (512, 512), (256, 100), (1024, 160)])
def test_frame_pieces_give_every_frames_samples_in_order(n_fft, hop):
    rng = np.random.default_rng(n_fft + hop)
    for k in (1, 4):
        audio = np.arange(n_fft - hop + k * hop)
        for _ in range(5):
            start = int(rng.integers(0, n_fft - 1))
            stop = int(rng.integers(start + 1, n_fft + 1))
            want = np.stack([audio[t * hop + start : t * hop + stop] for t in range(k)])
            np.testing.assert_array_equal(cut_frames(audio, n_fft, hop, start, stop), want)
            assert all(o <= n_fft - hop for o, _, _ in so.frame_pieces(n_fft, hop, start, stop))


@pytest.mark.parametrize("width", [480, 400, 401, 511])
def test_the_folded_dft_is_the_power_spectrum(width):
    n_fft = 512
    window = hann_in_frame(n_fft, width)
    support = so.window_support(window)
    assert not window[:support].any() and not window[n_fft - support + 1 :].any()
    bins = (3, 230)
    cos, sin = so.dft_bases(n_fft, support, bins)
    frames = np.random.default_rng(width).standard_normal((6, n_fft)) * window
    first = frames[:, support : n_fft // 2 + 1]
    mirror = frames[:, n_fft - support : n_fft // 2 - 1 : -1]
    power = (first + mirror) @ cos.astype(np.float64)
    power = power**2 + ((first - mirror) @ sin.astype(np.float64)) ** 2
    want = np.abs(np.fft.rfft(frames, axis=1)[:, bins[0] : bins[1]]) ** 2
    np.testing.assert_allclose(power, want, rtol=1e-5, atol=1e-4)


def test_window_support_needs_a_zero_first_sample():
    with pytest.raises(ValueError, match="sample 0"):
        so.window_support(np.ones(16))
    with pytest.raises(ValueError, match="zero everywhere"):
        so.window_support(np.zeros(16))


def test_basis_nodes_compute_the_bases_and_replace_them():
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    n_fft, support, bins = 512, 17, (1, 244)
    cos, sin = so.dft_bases(n_fft, support, bins)

    def graph(cos_value: np.ndarray) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, len(cos)])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
        z = helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)
        nodes = [helper.make_node("MatMul", ["x", "c"], ["y"]), helper.make_node("MatMul", ["x", "s"], ["z"])]
        inits = [numpy_helper.from_array(cos_value, "c"), numpy_helper.from_array(sin, "s")]
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y, z], initializer=inits),
                                 opset_imports=[helper.make_opsetid("", 20)])  # fmt: skip

    proto = graph(cos)
    so.compute_in_graph(proto, *so.basis_nodes("dft", n_fft, support, bins, ("c", "s")))
    assert {t.name for t in proto.graph.initializer}.isdisjoint({"c", "s"})
    assert sum(t.ByteSize() for t in proto.graph.initializer) < cos.nbytes / 20
    x = np.random.default_rng(0).standard_normal((1, len(cos))).astype(np.float32)
    y, z = ReferenceEvaluator(proto).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ cos, atol=1e-4)
    np.testing.assert_allclose(z, x @ sin, atol=1e-4)
    with pytest.raises(ValueError, match="do not reproduce"):  # nodes for another basis are refused
        so.compute_in_graph(graph(cos * 0.5), *so.basis_nodes("dft", n_fft, support, bins, ("c", "s")))


def test_the_lstm_translation_refuses_what_it_does_not_handle():
    with pytest.raises(ValueError, match="unidirectional"):
        so.lstm_translation(None, (None, None), [], True, 1, 0.0, False, True, False)


@pytest.mark.parametrize("window_ms,hop_ms", [(30.0, 20.0), (25.0, 10.0), (32.0, 32.0)])
def test_stream_frontend_matches_the_torchaudio_mfcc(window_ms, hop_ms):
    features = FeatureConfig(window_ms=window_ms, hop_ms=hop_ms)
    frontend = MFCCFrontend(features)
    frontend.fit_normalization(torch.from_numpy(word_clips(4)))
    stream = StreamFrontend(frontend)
    clip = torch.from_numpy(word_clips(1, seed=2))
    with torch.no_grad():
        whole = frontend(clip)[0]
        for k in (1, 5, 11):
            audio = clip[:, : features.context_samples + k * features.hop_samples]
            torch.testing.assert_close(stream(audio), whole[:k], rtol=1e-4, atol=2e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, config = make_model()
    return export_model(model, config, tmp_path_factory.mktemp("graph"))


@pytest.mark.parametrize("key", ["stream", "stream_int8"])
def test_the_streaming_step_runs_few_nodes_and_stores_no_dft_basis(exported, key, tmp_path):
    proto = onnx.load(str(exported[key]))
    ops = [n.op_type for n in proto.graph.node]
    assert "STFT" not in ops and ops.count("Transpose") == 1 and "Shape" in ops
    assert not {"frontend.cos_basis", "frontend.sin_basis"} & {t.name for t in proto.graph.initializer}
    # onnxruntime computes the bases when the session loads: the per-call graph has no Cos/Sin/Mod left
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(exported[key]), options, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert not {"Cos", "Sin", "Mod", "STFT"} & set(optimized)
    assert len(optimized) <= MAX_CALL_NODES, optimized
