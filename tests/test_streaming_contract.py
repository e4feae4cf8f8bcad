"""The streaming contract has one implementation, the runtime's step (kws.runtime.model.StreamingModel), and
everything that streams drives it: the export's checks and calibration (kws.export.streaming, checks,
quantize) and the live engine (kws.runtime.engine). These tests tie them together on a real (untrained,
tiny) export; the whole-clip model is the independent reference.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from kws.export import checks  # noqa: E402
from kws.export.onnx_export import ExportError, export_clip_model, export_stream_model, save_model  # noqa: E402
from kws.export.quantize import StreamCalibrationReader, classifier_nodes, name_nodes  # noqa: E402
from kws.export.streaming import stream_chunks  # noqa: E402
from kws.format import POOL_LAST, POOL_MEAN, frames_in  # noqa: E402
from kws.runtime import SpotterConfig, StreamEngine, StreamingModel  # noqa: E402
from kws.runtime.model import ModelError  # noqa: E402
from support.export_models import LABELS, make_model, word_clips  # noqa: E402

TOL = checks.PARITY_TOLERANCE


@pytest.fixture(scope="module", params=[POOL_MEAN, POOL_LAST])
def exported(request, tmp_path_factory):
    """A tiny model's whole-clip and streaming files (float), for each pooling."""
    model, _ = make_model(hidden=8, layers=2, pooling=request.param)
    out = tmp_path_factory.mktemp(f"contract-{request.param}")
    clip, stream = out / "kws.onnx", out / "kws.stream.onnx"
    save_model(export_clip_model(model, LABELS), clip)
    save_model(export_stream_model(model, LABELS), stream)
    return clip, stream


class TestRuntimeStep:
    def test_calls_carry_the_state_from_call_to_call(self, exported):
        model = StreamingModel(exported[1])
        info = model.info
        clip = word_clips(1, seed=3)[0]
        calls = list(model.calls(stream_chunks(clip, info.context_samples, info.hop_samples, 4), lanes=2))
        assert len(calls) == -(-frames_in(len(clip), info.window_samples, info.hop_samples) // 4)
        states = model.initial_states(2)
        for feeds, outputs in calls:
            for spec, state in zip(info.states, states, strict=True):
                np.testing.assert_array_equal(feeds[spec.input], state)
            expected, states = model.run(feeds["audio"], states)
            np.testing.assert_array_equal(outputs, expected)
        assert not np.allclose(calls[-1][0][info.states[0].input], 0.0)

    @pytest.mark.parametrize("hops", [1, 3, 49])
    def test_frame_outputs_do_not_depend_on_the_call_size(self, exported, hops):
        model = StreamingModel(exported[1])
        info = model.info
        clip = word_clips(1, seed=4)[0]
        one = model.frame_outputs(stream_chunks(clip, info.context_samples, info.hop_samples, 1))
        other = model.frame_outputs(stream_chunks(clip, info.context_samples, info.hop_samples, hops), lanes=3)
        assert one.shape == (1, info.clip_frames, len(LABELS)) and other.shape[0] == 3
        np.testing.assert_allclose(other, np.broadcast_to(one, other.shape), atol=1e-4)

    def test_a_whole_clip_model_is_refused(self, exported):
        with pytest.raises(ModelError, match="without recurrent state"):
            StreamingModel(exported[0])


class TestEveryStreamerDrivesTheStep:
    def test_streamed_clip_scores_are_the_whole_clip_scores(self, exported):
        clips = word_clips(4, seed=6)
        whole = checks.onnx_clip_scores(checks.session(exported[0]), clips)
        streamed = checks.streamed_clip_scores(StreamingModel(exported[1]), clips)
        assert np.abs(streamed - whole).max() <= TOL

    def test_the_engine_ends_a_clip_on_its_clip_scores(self, exported):
        """The live path (engine buffer, odd pieces, pooling in numpy) gives the clip's scores at its last frame."""
        model = StreamingModel(exported[1])
        engine = StreamEngine(model, SpotterConfig(lanes=1, reset_period_ms=0, chunk_ms=60))
        for clip in word_clips(3, seed=7):
            engine.reset()
            blocks = [b for start in range(0, len(clip), 1237) for b in engine.process(clip[start : start + 1237])]
            blocks += engine.flush()
            last = blocks[-1][1][-1]
            assert engine.frames == model.info.clip_frames
            assert np.abs(last - checks.streamed_clip_scores(model, clip[None])[0]).max() <= TOL

    def test_calibration_feeds_are_the_runtime_calls(self, exported):
        model = StreamingModel(exported[1])
        info = model.info
        clips = word_clips(2, seed=8)
        reader = StreamCalibrationReader(exported[1], clips, hops=5)
        expected = [
            feeds
            for clip in clips
            for feeds, _ in model.calls(stream_chunks(clip, info.context_samples, info.hop_samples, 5))
        ]
        got = list(iter(reader.get_next, None))
        assert len(got) == len(expected) > len(clips)
        for a, b in zip(got, expected, strict=True):
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        reader.rewind()
        assert reader.get_next() is not None


class TestQuantizerQueries:
    def test_classifier_nodes_is_a_query(self, exported):
        proto = onnx.load(str(exported[1]))
        for node in proto.graph.node:
            node.name = ""
        with pytest.raises(ExportError, match="name_nodes"):
            classifier_nodes(proto)
        name_nodes(proto)
        before = proto.SerializeToString()
        lstm, head = classifier_nodes(proto)
        assert proto.SerializeToString() == before
        assert len(lstm) == 2 and head
