"""The ONNX file format (kws.format): the writer and the parser agree, the shipped models parse, and the module
works without torch.

Everything here runs on plain dictionaries and the shipped files' metadata (read with onnxruntime, a runtime
dependency), so none of it needs torch or an export.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kws import format as F
from kws.format import ModelError, ModelMetadata, StateSpec, frames_in, lstm_state_specs

PRETRAINED = Path(__file__).resolve().parents[1] / "kws" / "pretrained"
SHIPPED = sorted(PRETRAINED.glob("*.onnx"))

LABELS = ("_silence_", "_unknown_", "yes", "no")


def stream_metadata(**changes) -> ModelMetadata:
    """A streaming model's metadata as the exporter writes it (a 1 s clip at 16 kHz, 512/320 framing)."""
    fields = dict(
        kind=F.KIND_STREAM, labels=LABELS, sample_rate=16_000, clip_samples=16_000, window_samples=512,
        hop_samples=320, pooling=F.POOL_MEAN, pool_frames=49, states=lstm_state_specs(2, 8, 8),
        feature_config={"sample_rate": 16_000, "hop_ms": 20.0}, model_config={"hidden_size": 8, "pooling": "mean"},
        evaluation={"test": {"accuracy": 0.75, "clips": 40}}, quantization=F.QUANT_DYNAMIC, version="0.1.0",
    )  # fmt: skip
    fields.update(changes)
    return ModelMetadata(**fields)


def shipped_props(path: Path) -> dict[str, str]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


class TestRoundTrip:
    @pytest.mark.parametrize("kind", [F.KIND_STREAM, F.KIND_CLIP])
    def test_parse_of_write_is_identity(self, kind):
        meta = stream_metadata(kind=kind, states=() if kind == F.KIND_CLIP else lstm_state_specs(2, 8, 8))
        props = meta.to_props()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
        assert ModelMetadata.from_props(props) == meta
        assert ModelMetadata.from_props(props).to_props() == props

    def test_written_entries(self):
        props = stream_metadata().to_props()
        assert list(props)[:3] == [F.META_FORMAT, F.META_KIND, F.META_LABELS]
        assert props[F.META_FORMAT] == F.META_FORMAT_VERSION == "1"
        assert json.loads(props[F.META_LABELS]) == list(LABELS)
        assert json.loads(props[F.META_STATE]) == [
            {"input": F.STATE_H_IN, "output": F.STATE_H_OUT, "shape": [2, F.LANES_DIM, 8]},
            {"input": F.STATE_C_IN, "output": F.STATE_C_OUT, "shape": [2, F.LANES_DIM, 8]},
        ]
        assert props[F.META_EVALUATION] == '{"test": {"accuracy": 0.75, "clips": 40}}'  # sorted keys
        assert (props[F.META_POOLING], props[F.META_POOL_FRAMES]) == ("mean", "49")
        assert (props[F.META_QUANTIZATION], props[F.META_VERSION]) == ("dynamic", "0.1.0")

    @pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
    def test_shipped_models_parse_and_rewrite_identically(self, path):
        props = shipped_props(path)
        meta = ModelMetadata.from_props(props, path)
        assert meta.quantization in (F.QUANT_NONE, F.QUANT_DYNAMIC, F.QUANT_STATIC)
        assert meta.pooling in F.POOLINGS and meta.pool_frames == meta.clip_frames
        assert meta.kind == (F.KIND_STREAM if ".stream." in path.name else F.KIND_CLIP)
        assert bool(meta.states) == (meta.kind == F.KIND_STREAM)
        assert meta.to_props() == {k: v for k, v in props.items() if k.startswith("kws.")}

    def test_state_spec(self):
        spec = StateSpec(F.STATE_H_IN, F.STATE_H_OUT, (2, F.LANES_DIM, 5))
        assert spec.lane_axis == 1 and spec.zeros(3).shape == (2, 3, 5) and spec.zeros(3).dtype == "float32"


class TestRunSettings:
    """The optional run settings written by `kws calibrate`: round trip, absent by default, checked."""

    SETTINGS = {"thresholds": {"yes": 0.55, "no": 1.0}, "reset_period_ms": 0.0, "patience": 3}

    def test_round_trip(self):
        meta = stream_metadata(**self.SETTINGS)
        props = meta.to_props()
        assert json.loads(props[F.META_THRESHOLDS]) == {"no": 1.0, "yes": 0.55}
        assert (props[F.META_RESET_PERIOD_MS], props[F.META_PATIENCE]) == ("0.0", "3")
        parsed = ModelMetadata.from_props(props)
        assert parsed == meta and parsed.to_props() == props
        assert dict(parsed.thresholds) == {"yes": 0.55, "no": 1.0} and parsed.reset_period_ms == 0.0

    def test_absent_by_default_and_not_written(self):
        props = stream_metadata().to_props()
        assert not {F.META_THRESHOLDS, F.META_RESET_PERIOD_MS, F.META_PATIENCE} & set(props)
        meta = ModelMetadata.from_props(props)
        assert (meta.thresholds, meta.reset_period_ms, meta.patience) == ({}, None, None)

    def test_run_settings_props_writes_only_what_is_set(self):
        assert F.run_settings_props({}) == {}
        assert F.run_settings_props({"yes": 0.5}, 2000) == {F.META_THRESHOLDS: '{"yes": 0.5}',
                                                            F.META_RESET_PERIOD_MS: "2000.0"}  # fmt: skip


class TestFrames:
    @pytest.mark.parametrize(
        ("samples", "frames"), [(0, 0), (511, 0), (512, 1), (831, 1), (832, 2), (16_000, 49), (16_031, 49)]
    )
    def test_frames_in(self, samples, frames):
        assert frames_in(samples, 512, 320) == frames

    def test_clip_frames_and_context(self):
        meta = stream_metadata()
        assert (meta.clip_frames, meta.context_samples) == (49, 192)


class TestParserErrors:
    """Missing or bad entries: one line that names the entry (the runtime shows it as is)."""

    @pytest.mark.parametrize("key", F.REQUIRED_METADATA)
    def test_missing_required_entry_is_named(self, key):
        props = stream_metadata().to_props()
        del props[key]
        with pytest.raises(ModelError, match=rf"m\.onnx is not a kws model: metadata {key} missing"):
            ModelMetadata.from_props(props, "m.onnx")

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            (F.META_FORMAT, "2", "metadata format '2' is not supported"),
            (F.META_LABELS, "[yes, no", r"kws\.labels is not valid JSON"),
            (F.META_LABELS, '["yes", "yes"]', r"kws\.labels must list 2 to 1000 distinct labels"),
            (F.META_LABELS, "[1, 2]", r"kws\.labels must be a JSON list of label names"),
            (F.META_SAMPLE_RATE, "sixteen k", r"kws\.sample_rate must be a whole number"),
            (F.META_SAMPLE_RATE, "0", r"kws\.sample_rate=0 is out of range"),
            (F.META_HOP_SAMPLES, "1000", r"kws\.hop_samples=1000 is out of range \[16, 512\]"),
            (F.META_SAMPLE_RATE, "8000", r"kws\.sample_rate=8000 contradicts kws\.feature_config"),
            (F.META_POOL_FRAMES, "0", r"kws\.pool_frames=0 is out of range \[1, 49\]"),
            (F.META_STATE, '{"a": 1}', r"kws\.state must be a JSON list"),
            (F.META_STATE, '[{"input": "h_in", "output": "h_out", "shape": [2, 2]}]', r"invalid metadata kws\.state"),
            # the optional run settings
            (F.META_THRESHOLDS, "[0.5]", r"kws\.thresholds must be a JSON object"),
            (F.META_THRESHOLDS, "{yes: 0.5", r"kws\.thresholds is not valid JSON"),
            (F.META_THRESHOLDS, '{"maybe": 0.5}', r"names 'maybe', not a keyword of the model \(keywords: yes, no\)"),
            (F.META_THRESHOLDS, '{"_silence_": 0.5}', r"names '_silence_', not a keyword"),
            (F.META_THRESHOLDS, '{"yes": 0}', r"the threshold of yes must be a number in \(0, 1\], got 0"),
            (F.META_THRESHOLDS, '{"yes": 1.5}', r"the threshold of yes must be a number in \(0, 1\]"),
            (F.META_THRESHOLDS, '{"yes": "high"}', r"the threshold of yes must be a number"),
            (F.META_THRESHOLDS, '{"yes": true}', r"the threshold of yes must be a number"),
            (F.META_THRESHOLDS, '{"yes": NaN}', r"the threshold of yes must be a number"),
            (F.META_RESET_PERIOD_MS, "soon", r"kws\.reset_period_ms must be a number, got 'soon'"),
            (F.META_RESET_PERIOD_MS, "-1", r"kws\.reset_period_ms=-1 is out of range \[0, 3.6e\+06\]"),
            (F.META_RESET_PERIOD_MS, "nan", r"kws\.reset_period_ms=nan is out of range"),
            (F.META_RESET_PERIOD_MS, "1e12", r"kws\.reset_period_ms=1e\+12 is out of range"),
            (F.META_PATIENCE, "0", r"kws\.patience=0 is out of range \[1, 1000\]"),
            (F.META_PATIENCE, "2.5", r"kws\.patience must be a whole number"),
        ],
    )
    def test_bad_entry_is_named(self, key, value, message):
        props = stream_metadata().to_props()
        props[key] = value
        with pytest.raises(ModelError, match=message) as caught:
            ModelMetadata.from_props(props, "m.onnx")
        assert str(caught.value).startswith("m.onnx: ") and "\n" not in str(caught.value)

    def test_informational_entries_may_be_unreadable(self):
        props = stream_metadata().to_props()
        props[F.META_FEATURE_CONFIG] = props[F.META_EVALUATION] = "not json"
        del props[F.META_MODEL_CONFIG], props[F.META_QUANTIZATION], props[F.META_VERSION]
        meta = ModelMetadata.from_props(props)
        assert (meta.feature_config, meta.model_config, meta.evaluation) == ({}, {}, {})
        assert (meta.quantization, meta.version) == (F.UNKNOWN, F.UNKNOWN)

    def test_pool_frames_is_read_only_with_a_pooling(self):
        props = stream_metadata().to_props()
        del props[F.META_POOLING]
        props[F.META_POOL_FRAMES] = "nonsense"
        assert ModelMetadata.from_props(props).pooling == ""


NO_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import json
from kws.format import KIND_STREAM, POOL_LAST, ModelMetadata, lstm_state_specs
meta = ModelMetadata(kind=KIND_STREAM, labels=("a", "b"), sample_rate=16000, clip_samples=16000,
                     window_samples=512, hop_samples=320, pooling=POOL_LAST, pool_frames=49,
                     states=lstm_state_specs(1, 4, 4), evaluation={"x": 1})
assert ModelMetadata.from_props(meta.to_props()) == meta
for path in sys.argv[1:]:
    import onnxruntime as ort
    props = dict(ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)
    assert ModelMetadata.from_props(props, path).to_props() == {k: v for k, v in props.items() if k.startswith("kws.")}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchaudio"))))
"""


def test_round_trip_needs_no_torch():
    pytest.importorskip("onnxruntime")
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, SHIPPED)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == ["torch"]  # only the blocking entry itself
