"""kws export's files: ONNX round trip, PyTorch parity, streaming = whole clip, metadata, int8, atomic writes.

The models are untrained (tests/support/export_models.py), exported with ``export_files``. Real Speech Commands
clips are used when ../shared/data is present. The command itself (errors, checks, the int8 choice):
test_export_command.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from kws import __version__  # noqa: E402
from kws.config import FeatureConfig, ModelConfig, from_dict  # noqa: E402
from kws.export import checks  # noqa: E402
from kws.export.clips import synthetic_clips  # noqa: E402
from kws.export.onnx_export import read_metadata, save_model  # noqa: E402
from kws.export.quantize import ClipCalibrationReader, StreamCalibrationReader, quantize_static_model  # noqa: E402
from kws.export.streaming import (  # noqa: E402
    StreamBuffer,
    pool_scores,
    run_stream,
    stream_chunks,
    zero_states,
)
from kws.format import (  # noqa: E402
    INPUT_AUDIO,
    META_CLIP_SAMPLES,
    META_EVALUATION,
    META_FEATURE_CONFIG,
    META_FORMAT,
    META_FORMAT_VERSION,
    META_HOP_SAMPLES,
    META_KIND,
    META_LABELS,
    META_MODEL_CONFIG,
    META_POOL_FRAMES,
    META_POOLING,
    META_QUANTIZATION,
    META_SAMPLE_RATE,
    META_STATE,
    META_VERSION,
    META_WINDOW_SAMPLES,
    OUTPUT_LOGITS,
    OUTPUT_SCORES,
    QUANT_STATIC,
    STATE_C_IN,
    STATE_C_OUT,
    STATE_H_IN,
    STATE_H_OUT,
)
from support.export_models import EVALUATION, LABELS, export_model, make_model, torch_scores, word_clips  # noqa: E402

TOL = checks.PARITY_TOLERANCE
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech_commands_test_set_v0.02"


def real_clips(count: int) -> np.ndarray:
    import soundfile as sf

    from kws.data.audio import fit_length

    files = sorted(REAL_DATA.glob("*/*.wav"))
    files = files[:: max(1, len(files) // count)][:count]
    return np.stack([fit_length(sf.read(f, dtype="float32")[0], 16000) for f in files])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model, its float ONNX files and a dynamic int8 streaming + clip model (``export_files``)."""
    model, config = make_model()
    return model, config, export_model(model, config, tmp_path_factory.mktemp("tiny"))


# ------------------------------------------------------------------------------------------- round trip


class TestRoundTrip:
    def test_whole_clip_model_signature(self, tiny):
        _, config, files = tiny
        sess = ort.InferenceSession(str(files["clip"]))
        (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
        assert (inp.name, inp.type, out.name) == (INPUT_AUDIO, "tensor(float)", OUTPUT_SCORES)
        assert isinstance(inp.shape[0], str) and inp.shape[1] == config.features.clip_samples
        assert isinstance(out.shape[0], str) and out.shape[1] == len(LABELS)
        for batch in (1, 3):
            scores = sess.run(None, {INPUT_AUDIO: word_clips(batch)})[0]
            assert scores.shape == (batch, len(LABELS))
            np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)

    def test_streaming_model_signature(self, tiny):
        _, config, files = tiny
        sess = ort.InferenceSession(str(files["stream"]))
        inputs = {i.name: i.shape for i in sess.get_inputs()}
        outputs = {o.name: o.shape for o in sess.get_outputs()}
        layers, hidden = config.model.num_layers, config.model.hidden_size
        assert set(inputs) == {INPUT_AUDIO, STATE_H_IN, STATE_C_IN}
        assert set(outputs) == {OUTPUT_LOGITS, STATE_H_OUT, STATE_C_OUT}
        assert inputs[STATE_H_IN] == [layers, "lanes", hidden] == outputs[STATE_H_OUT]
        assert outputs[OUTPUT_LOGITS] == ["lanes", "k", len(LABELS)]

    @pytest.mark.parametrize("hops,lanes", [(1, 1), (3, 2), (10, 5)])
    def test_each_call_computes_only_the_new_frames(self, tiny, hops, lanes):
        _, config, files = tiny
        f = config.features
        sess = ort.InferenceSession(str(files["stream"]))
        audio = word_clips(1)[:, : f.context_samples + hops * f.hop_samples]
        logits, h, c = sess.run(None, {INPUT_AUDIO: audio, **zero_states(sess, lanes)})
        assert logits.shape == (lanes, hops, len(LABELS))
        assert h.shape[1] == c.shape[1] == lanes

    def test_the_graphs_use_the_onnx_lstm_op_and_a_float_front_end(self, tiny):
        _, config, files = tiny
        ops = {key: [n.op_type for n in onnx.load(str(files[key])).graph.node] for key in ("clip", "stream")}
        for key in ("clip", "stream"):
            assert ops[key].count("LSTM") == config.model.num_layers, key
        assert ops["clip"].count("STFT") == 1
        assert config.features.n_fft & (config.features.n_fft - 1) == 0  # a power of two: ORT uses its FFT
        # the streaming step's DFT is two MatMuls on bases computed at load (test_export_stream_graph.py)
        assert "STFT" not in ops["stream"] and {"Cos", "Sin"} <= set(ops["stream"])

    def test_checker_and_shape_inference_pass(self, tiny):
        _, _, files = tiny
        results = [c for path in files.values() for c in checks.check_structure(path)]
        assert results and all(c.passed for c in results), results

    def test_files_carry_no_local_paths(self, tiny):
        _, _, files = tiny
        data = files["stream"].read_bytes()
        assert b"stack_trace" not in data and str(Path(__file__).parent).encode() not in data


# ----------------------------------------------------------------------------------------------- parity


def clip_sources() -> list:
    sources = [
        pytest.param(lambda: word_clips(12, seed=5), id="synthetic-words"),
        pytest.param(lambda: synthetic_clips(16000, 16000, 10), id="noise-tones-silence"),
    ]
    real = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="no real Speech Commands clips (../shared/data)")
    sources.append(pytest.param(lambda: real_clips(12), id="real-speech", marks=real))
    return sources


class TestParity:
    @pytest.mark.parametrize("source", clip_sources())
    def test_onnx_matches_pytorch(self, tiny, source):
        model, _, files = tiny
        clips = source()
        onnx_scores = checks.onnx_clip_scores(ort.InferenceSession(str(files["clip"])), clips)
        reference = torch_scores(model, clips)
        assert np.abs(onnx_scores - reference).max() <= TOL
        assert (onnx_scores.argmax(1) == reference.argmax(1)).all()

    def test_parity_check_reports_a_difference(self):
        reference = np.array([[0.6, 0.4], [0.3, 0.7]], np.float32)
        ok = checks.compare_scores("p", "x", reference + 5e-5, reference)
        bad = checks.compare_scores("p", "x", reference[:, ::-1], reference)
        assert [c.passed for c in ok] == [True, True]
        assert [c.passed for c in bad] == [False, False]

    def test_reference_evaluator_agrees_with_onnxruntime(self, tiny):
        _, config, files = tiny
        f = config.features
        clip_check = checks.check_reference(files["clip"], {INPUT_AUDIO: word_clips(2)})
        feeds = checks.stream_feeds(files["stream"], word_clips(1)[0], f.context_samples, f.hop_samples)
        stream_check = checks.check_reference(files["stream"], feeds)
        assert clip_check.passed and stream_check.passed, (clip_check, stream_check)


# -------------------------------------------------------------------------------------------- streaming


def streamed_scores(sess, clip, f: FeatureConfig, hops: int, pooling: str, lanes: int = 1) -> np.ndarray:
    logits = run_stream(sess, stream_chunks(clip, f.context_samples, f.hop_samples, hops), lanes)
    return pool_scores(logits, pooling)


class TestStreaming:
    @pytest.mark.parametrize("hops", [1, 3, 7, 49])
    @pytest.mark.parametrize("source", clip_sources())
    def test_streaming_equals_whole_clip(self, tiny, hops, source):
        _, config, files = tiny
        clips = source()[:4]
        clip_sess, stream_sess = (ort.InferenceSession(str(files[k])) for k in ("clip", "stream"))
        whole = checks.onnx_clip_scores(clip_sess, clips)
        for clip, reference in zip(clips, whole, strict=True):
            scores = streamed_scores(stream_sess, clip, config.features, hops, config.model.pooling)[0]
            assert np.abs(scores - reference).max() <= TOL

    @pytest.mark.parametrize("pieces", [[1], [123, 4001], [160, 7, 2500], [16000]])
    def test_odd_piece_sizes_through_the_buffer(self, tiny, pieces):
        _, config, files = tiny
        f = config.features
        clip = word_clips(1, seed=3)[0]
        sess = ort.InferenceSession(str(files["stream"]))
        buffer, chunks, start, i = StreamBuffer(f.context_samples, f.hop_samples, max_hops=4), [], 0, 0
        while start < len(clip):
            size = pieces[i % len(pieces)] if pieces != [1] else 97  # 97: prime, never a multiple of the hop
            chunks += buffer.push(clip[start : start + size])
            start, i = start + size, i + 1
        assert all(1 <= (len(c) - f.context_samples) // f.hop_samples <= 4 for c in chunks)
        assert sum((len(c) - f.context_samples) // f.hop_samples for c in chunks) == f.num_frames(len(clip))
        scores = pool_scores(run_stream(sess, chunks)[0], config.model.pooling)
        reference = checks.onnx_clip_scores(ort.InferenceSession(str(files["clip"])), clip[None])[0]
        assert np.abs(scores - reference).max() <= TOL

    def test_lanes_over_the_same_audio_are_independent_states(self, tiny):
        _, config, files = tiny
        f = config.features
        sess = ort.InferenceSession(str(files["stream"]))
        audio = word_clips(1)[:, : f.context_samples + 5 * f.hop_samples]
        states = zero_states(sess, 3)
        rng = np.random.default_rng(0)
        states = {k: v.copy() for k, v in states.items()}
        states[STATE_H_IN][:, 1] = rng.standard_normal(states[STATE_H_IN][:, 1].shape)
        logits, h, _ = sess.run(None, {INPUT_AUDIO: audio, **states})
        np.testing.assert_allclose(logits[0], logits[2], atol=1e-6)  # same state, same audio
        assert np.abs(logits[1] - logits[0]).max() > 1e-4  # a different state gives different logits
        single, _, _ = sess.run(None, {INPUT_AUDIO: audio, **zero_states(sess, 1)})
        np.testing.assert_allclose(single[0], logits[0], atol=1e-6)

    def test_last_frame_pooling(self, tmp_path):
        model, config = make_model(hidden=8, layers=1, pooling="last")
        files = export_model(model, config, tmp_path, evaluation=None, quantization="none")
        clip_path, stream_path = files["clip"], files["stream"]
        clips = word_clips(3)
        whole = checks.onnx_clip_scores(ort.InferenceSession(str(clip_path)), clips)
        assert np.abs(whole - torch_scores(model, clips)).max() <= TOL
        sess = ort.InferenceSession(str(stream_path))
        for clip, reference in zip(clips, whole, strict=True):
            assert np.abs(streamed_scores(sess, clip, config.features, 3, "last")[0] - reference).max() <= TOL
        assert read_metadata(stream_path)[META_POOLING] == "last"

    def test_stream_chunks_cover_every_frame_once(self):
        f = FeatureConfig()
        for n in (f.n_fft - 1, f.n_fft, f.n_fft + f.hop_samples - 1, 16000, 16321):
            audio = np.arange(n, dtype=np.float32)
            for hops in (1, 3, 10):
                chunks = list(stream_chunks(audio, f.context_samples, f.hop_samples, hops))
                frames = [(len(c) - f.context_samples) // f.hop_samples for c in chunks]
                assert sum(frames) == f.num_frames(n)
                assert all((len(c) - f.context_samples) % f.hop_samples == 0 for c in chunks)
                starts = [int(c[0]) for c in chunks]
                assert starts == [f.hop_samples * sum(frames[:i]) for i in range(len(chunks))]


# --------------------------------------------------------------------------------------------- metadata


class TestMetadata:
    @pytest.mark.parametrize("key,kind,quant", [("clip", "clip", "none"), ("stream", "stream", "none"),
                                                ("clip_int8", "clip", "dynamic"),
                                                ("stream_int8", "stream", "dynamic")])  # fmt: skip
    def test_metadata_round_trip(self, tiny, key, kind, quant):
        _, config, files = tiny
        meta = read_metadata(files[key])
        f = config.features
        assert meta[META_FORMAT] == META_FORMAT_VERSION
        assert (meta[META_KIND], meta[META_QUANTIZATION], meta[META_VERSION]) == (kind, quant, __version__)
        assert json.loads(meta[META_LABELS]) == LABELS
        assert [int(meta[k]) for k in (META_SAMPLE_RATE, META_CLIP_SAMPLES, META_WINDOW_SAMPLES,
                                       META_HOP_SAMPLES)] == [f.sample_rate, f.clip_samples, f.n_fft,
                                                              f.hop_samples]  # fmt: skip
        assert from_dict(FeatureConfig, json.loads(meta[META_FEATURE_CONFIG])) == f
        assert from_dict(ModelConfig, json.loads(meta[META_MODEL_CONFIG])) == config.model
        assert json.loads(meta[META_EVALUATION]) == EVALUATION
        assert (meta[META_POOLING], int(meta[META_POOL_FRAMES])) == ("mean", f.num_frames(f.clip_samples))
        state = json.loads(meta[META_STATE])
        if kind == "clip":
            assert state == []
        else:
            m = config.model
            assert state == [
                {"input": STATE_H_IN, "output": STATE_H_OUT, "shape": [m.num_layers, "lanes", m.output_size]},
                {"input": STATE_C_IN, "output": STATE_C_OUT, "shape": [m.num_layers, "lanes", m.hidden_size]},
            ]

    def test_onnxruntime_sees_the_metadata(self, tiny):
        _, _, files = tiny
        meta = ort.InferenceSession(str(files["stream_int8"])).get_modelmeta().custom_metadata_map
        assert meta == read_metadata(files["stream_int8"])


# ------------------------------------------------------------------------------------------------- int8


class TestInt8:
    def test_dynamic_quantization_makes_int8_lstms(self, tiny):
        _, config, files = tiny
        for key in ("clip_int8", "stream_int8"):
            model = onnx.load(str(files[key]))
            ops = [n.op_type for n in model.graph.node]
            assert "LSTM" not in ops and ops.count("DynamicQuantizeLSTM") == config.model.num_layers
            inits = {t.name: t for t in model.graph.initializer}
            for node in (n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM"):
                assert inits[node.input[1]].data_type == onnx.TensorProto.INT8  # W
                assert inits[node.input[2]].data_type == onnx.TensorProto.INT8  # R
            assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops  # the classifier head
            assert ("STFT" if key == "clip_int8" else "Cos") in ops  # the front end stays float

    @pytest.mark.parametrize("source", clip_sources())
    def test_dynamic_int8_scores_close_to_fp32(self, tiny, source):
        _, _, files = tiny
        clips = source()
        fp32 = checks.onnx_clip_scores(ort.InferenceSession(str(files["clip"])), clips)
        int8 = checks.onnx_clip_scores(ort.InferenceSession(str(files["clip_int8"])), clips)
        assert np.abs(int8 - fp32).mean() < 0.02
        assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.75

    def test_streaming_int8_close_to_fp32(self, tiny):
        _, config, files = tiny
        clips = word_clips(8, seed=9)
        fp32, int8 = (ort.InferenceSession(str(files[k])) for k in ("stream", "stream_int8"))
        a = np.concatenate([streamed_scores(fp32, c, config.features, 10, "mean") for c in clips])
        b = np.concatenate([streamed_scores(int8, c, config.features, 10, "mean") for c in clips])
        assert np.abs(a - b).mean() < 0.02 and (a.argmax(1) == b.argmax(1)).mean() >= 0.75

    def test_static_qdq_is_calibrated_and_close(self, tiny, tmp_path):
        _, config, files = tiny
        calibration = word_clips(6, seed=11)
        clip_out, stream_out = tmp_path / "c.int8.onnx", tmp_path / "s.int8.onnx"
        quantize_static_model(files["clip"], clip_out, ClipCalibrationReader(calibration))
        reader = StreamCalibrationReader(files["stream"], calibration)
        quantize_static_model(files["stream"], stream_out, reader)
        for path in (clip_out, stream_out):
            model = onnx.load(str(path))
            ops = [n.op_type for n in model.graph.node]
            assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
            assert read_metadata(path)[META_QUANTIZATION] == QUANT_STATIC
            inits = {t.name: t for t in model.graph.initializer}
            lstm_weights = [inits.get(n.input[1]) for n in model.graph.node if n.op_type == "LSTM"]
            assert not any(w is not None and w.data_type == onnx.TensorProto.FLOAT for w in lstm_weights)
        clips = word_clips(12, seed=5)
        fp32 = checks.onnx_clip_scores(ort.InferenceSession(str(files["clip"])), clips)
        int8 = checks.onnx_clip_scores(ort.InferenceSession(str(clip_out)), clips)
        assert np.abs(int8 - fp32).mean() < 0.02 and (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.75

    def test_size_check(self, tiny, tmp_path):
        _, _, files = tiny
        small = tmp_path / "small.onnx"
        small.write_bytes(b"x" * int(files["clip"].stat().st_size * 0.2))
        big = tmp_path / "big.onnx"
        big.write_bytes(b"x" * int(files["clip"].stat().st_size * 0.5))
        assert checks.check_int8("q", files["clip"], small, 0.9, 0.897)[0].passed
        assert not checks.check_int8("q", files["clip"], big, 0.9, 0.9)[0].passed

    @pytest.mark.parametrize("fp32,int8,ok", [(0.90, 0.896, True), (0.90, 0.894, False), (0.90, 0.95, True)])
    def test_accuracy_check(self, tiny, fp32, int8, ok):
        _, _, files = tiny
        assert checks.check_int8("q", files["clip"], files["clip_int8"], fp32, int8)[1].passed is ok
        assert checks.check_int8("q", files["clip"], files["clip_int8"], None, None)[1].passed is None


# ------------------------------------------------------------------------------------------- atomicity


class TestAtomicWrites:
    def test_a_failed_write_keeps_the_old_file(self, tiny, tmp_path, monkeypatch):
        _, _, files = tiny
        target = tmp_path / "kws.onnx"
        target.write_bytes(files["clip"].read_bytes())
        good = target.read_bytes()

        def broken_save(proto, path, *args, **kwargs):
            Path(path).write_bytes(b"half a model")
            raise KeyboardInterrupt  # the user pressed ^C in the middle of the write

        monkeypatch.setattr(onnx, "save_model", broken_save)
        with pytest.raises(KeyboardInterrupt):
            save_model(onnx.load(str(files["stream"])), target)
        assert target.read_bytes() == good
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kws.onnx"]  # no temporary file left

    def test_written_files_are_readable_by_others(self, tiny):
        _, _, files = tiny
        assert all(os.stat(p).st_mode & 0o044 for p in files.values())
