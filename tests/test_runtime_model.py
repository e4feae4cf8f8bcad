"""The model file (kws.runtime.model): everything comes from its metadata; bad files give one clear error.

The models are the tiny checkpoint's real exports (``tiny_exports``); odd or broken ones are derived from them
by editing the ONNX file by name (``support.exports.derive_model``).
"""

from __future__ import annotations

import pytest

from kws import constants as C
from kws import format as F
from kws.runtime import KeywordSpotter, ModelError, SpotterConfig, StreamingModel, load_model
from kws.runtime import model as runtime_model
from support.exports import derive_model
from support.synthetic import SAMPLE_RATE
from support.tiny import HOP_SAMPLES, TINY_HIDDEN, TINY_LABELS, TINY_LAYERS, WINDOW_SAMPLES

RATE, WINDOW, HOP = SAMPLE_RATE, WINDOW_SAMPLES, HOP_SAMPLES
KEYWORDS = tuple(TINY_LABELS.split(","))
LABELS = (C.SILENCE_LABEL, C.UNKNOWN_LABEL, *KEYWORDS)


class TestModelContract:
    @pytest.mark.parametrize(("precision", "quantization"), [("stream", "none"), ("stream_int8", "dynamic")])
    def test_everything_is_read_from_the_metadata(self, tiny_exports, precision, quantization):
        info = StreamingModel(getattr(tiny_exports, precision)).info
        assert info.labels == LABELS and info.keywords == KEYWORDS
        assert (info.sample_rate, info.window_samples, info.hop_samples) == (RATE, WINDOW, HOP)
        assert info.context_samples == WINDOW - HOP
        assert [(s.input, s.output, s.shape) for s in info.states] == [
            (F.STATE_H_IN, F.STATE_H_OUT, (TINY_LAYERS, "lanes", TINY_HIDDEN)),
            (F.STATE_C_IN, F.STATE_C_OUT, (TINY_LAYERS, "lanes", TINY_HIDDEN)),
        ]
        assert (info.output, info.pooling, info.pool_frames) == (F.OUTPUT_LOGITS, "mean", 1 + (RATE - WINDOW) // HOP)
        assert info.quantization == quantization

    def test_other_rates_and_hops_are_followed(self, tiny_exports, tmp_path):
        meta = {F.META_SAMPLE_RATE: "8000", F.META_FEATURE_CONFIG: None}  # the feature config says 16 kHz
        path = derive_model(tiny_exports.stream, tmp_path / "m.onnx", meta)
        spotter = KeywordSpotter(path, SpotterConfig(chunk_ms=200))
        assert spotter.sample_rate == 8000
        assert spotter.engine.chunk_frames == 5  # 200 ms of 40 ms hops (320 samples at 8 kHz)

    @pytest.mark.parametrize("key", [F.META_LABELS, F.META_HOP_SAMPLES, F.META_STATE, F.META_FORMAT])
    def test_missing_metadata_is_named(self, tiny_exports, tmp_path, key):
        path = derive_model(tiny_exports.stream, tmp_path / "m.onnx", {key: None})
        with pytest.raises(ModelError, match=key.replace(".", r"\.")):
            StreamingModel(path)

    def test_missing_state_input_is_named(self, tiny_exports, tmp_path):
        path = derive_model(tiny_exports.stream, tmp_path / "m.onnx", rename_input=(F.STATE_H_IN, "hidden_in"))
        with pytest.raises(ModelError, match="input 'h_in'"):
            StreamingModel(path)

    @pytest.mark.parametrize("pooling", ["median", None])
    def test_logits_without_pooling_metadata_is_named(self, tiny_exports, tmp_path, pooling):
        path = derive_model(tiny_exports.stream, tmp_path / "m.onnx", {F.META_POOLING: pooling})
        with pytest.raises(ModelError, match=r"kws\.pooling"):
            StreamingModel(path)

    def test_whole_clip_model_is_refused_with_a_hint(self, tiny_exports):
        with pytest.raises(ModelError, match="stream"):
            StreamingModel(tiny_exports.clip)

    def test_missing_and_non_onnx_files(self, tmp_path):
        with pytest.raises(ModelError, match="does not exist"):
            StreamingModel(tmp_path / "nope.onnx")
        bad = tmp_path / "bad.onnx"
        bad.write_text("this is not a protobuf")
        with pytest.raises(ModelError, match="not a loadable ONNX model"):
            StreamingModel(bad)

    def test_absent_shipped_model_tells_to_pass_model(self, tmp_path, monkeypatch):
        monkeypatch.setattr(runtime_model, "default_model_path", lambda: tmp_path / "kws.stream.int8.onnx")
        with pytest.raises(ModelError, match="--model"):
            load_model(None)

    def test_session_is_tuned_for_tiny_models(self):
        import onnxruntime as ort

        options = runtime_model.session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
        assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
