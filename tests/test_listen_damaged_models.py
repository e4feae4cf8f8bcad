"""Damaged models (issue 12): random bytes, truncated copies and tampered metadata of the shipped model are a
one-line ModelError (a KWSError), from the library and from `kws listen`, never a crash or a huge allocation.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from kws.errors import KWSError
from kws.runtime import KeywordSpotter, StreamingModel
from support.listen import DEMO, MODEL, one_line_error, run_cli

# ---------------------------------------------------------------------------------------------------------
# Damaged models: random bytes, truncated copies, tampered metadata -> ModelError (one line from the CLI)


def _truncations(size: int) -> list[int]:
    return [0, 1, 2, 10, 100, 1000, 10_000, size // 3, size // 2, size - 5000, size - 500, size - 50, size - 1]


def _tampered(**changes: str | None) -> bytes:
    model = onnx.load(str(MODEL))
    meta = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        key = "kws." + key
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


LABELS = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
STATE = [{"input": "h_in", "output": "h_out", "shape": [2, "lanes", 192]},
         {"input": "c_in", "output": "c_out", "shape": [2, "lanes", 192]}]  # fmt: skip


def _state(**first: object) -> str:
    return json.dumps([{**STATE[0], **first}, STATE[1]])


TAMPERED = {
    "labels not JSON": {"labels": "[yes, no"},
    "labels an object": {"labels": '{"yes": 1}'},
    "labels a string": {"labels": '"abcdefghijkl"'},
    "labels numbers": {"labels": json.dumps(list(range(12)))},
    "labels too few for the output": {"labels": json.dumps(LABELS[:5])},
    "labels too many for the output": {"labels": json.dumps([*LABELS, "x", "y"])},
    "labels repeated": {"labels": json.dumps([*LABELS[:11], "yes"])},
    "labels with a newline": {"labels": json.dumps([*LABELS[:11], "go\nstop"])},
    "labels nested 100000 deep": {"labels": "[" * 100_000 + "]" * 100_000},
    "labels 200000 of them": {"labels": json.dumps([f"w{i}" for i in range(200_000)])},
    "labels missing": {"labels": None},
    "hop negative": {"hop_samples": "-320"},
    "hop zero": {"hop_samples": "0"},
    "hop not a whole number": {"hop_samples": "320.5"},
    "hop above the window": {"hop_samples": "100000"},
    "hop of another model": {"hop_samples": "160"},
    "window of 10^12 samples": {"window_samples": str(10**12)},
    "window of another model": {"window_samples": "400"},
    "sample rate zero": {"sample_rate": "0"},
    "sample rate 10^15": {"sample_rate": str(10**15)},
    "sample rate text": {"sample_rate": "sixteen k"},
    "sample rate contradicting the features": {"sample_rate": "8000"},
    "clip negative": {"clip_samples": "-1"},
    "clip of 10^12 samples": {"clip_samples": str(10**12)},
    "pool frames 10^9": {"pool_frames": str(10**9)},
    "pool frames zero": {"pool_frames": "0"},
    "pooling unknown": {"pooling": "median"},
    "pooling missing": {"pooling": None},
    "state not JSON": {"state": "nope"},
    "state an object": {"state": '{"a": 1}'},
    "state names only": {"state": '["h_in"]'},
    "state of 10^9 values per lane": {"state": _state(shape=[2, "lanes", 10**9])},
    "state of the wrong size": {"state": _state(shape=[2, "lanes", 100])},
    "state without a lanes axis": {"state": _state(shape=[2, 2, 192])},
    "state with a boolean size": {"state": _state(shape=[True, "lanes", 192])},
    "state name a number": {"state": _state(input=5)},
    "state one of two": {"state": json.dumps(STATE[:1])},
    "state empty": {"state": "[]"},
    "kind clip": {"kind": "clip"},
    "kind garbage": {"kind": "\x00\n"},
    "format 2": {"format": "2"},
    "format missing": {"format": None},
}


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return MODEL.read_bytes()


@pytest.mark.parametrize("size", [0, 1, 16, 1000, 100_000])
def test_random_bytes_are_a_model_error(tmp_path, size):
    path = tmp_path / "m.onnx"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    with pytest.raises(KWSError, match="not a loadable ONNX model"):
        StreamingModel(path)


def test_every_truncated_copy_is_a_model_error(tmp_path, model_bytes):
    for length in _truncations(len(model_bytes)):
        path = tmp_path / f"cut{length}.onnx"
        path.write_bytes(model_bytes[:length])
        with pytest.raises(KWSError) as caught:
            KeywordSpotter(path)
        assert "\n" not in str(caught.value), length


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_metadata_is_a_model_error(tmp_path, case):
    path = tmp_path / "m.onnx"
    path.write_bytes(_tampered(**TAMPERED[case]))
    with pytest.raises(KWSError) as caught:
        KeywordSpotter(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message


def test_metadata_shown_to_the_user_is_one_line(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_tampered(quantization="dyn\namic", version="0.1\r\n0"))
    info = StreamingModel(path).info
    assert info.quantization.isprintable() and info.version.isprintable()


def test_damaged_models_through_the_cli_are_one_line(capsys, tmp_path, model_bytes):
    damaged = {
        "random.onnx": np.random.default_rng(0).bytes(4096),
        "cut.onnx": model_bytes[: len(model_bytes) // 2],
        "labels.onnx": _tampered(labels="[[[[" * 50_000),
        "state.onnx": _tampered(state=_state(shape=[2, "lanes", 10**9])),
    }
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        rc, _, err = run_cli(capsys, "--model", str(tmp_path / name), "--input", str(DEMO))
        assert rc == 2, name
        one_line_error(err, name)
