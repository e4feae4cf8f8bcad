"""A stand-in second-stage verifier ONNX file, built in the test: the contract of ``kws teacher --export-verifier``
(``audio [1, samples]`` -> ``scores [1, n_labels]``, the ``kws.verifier.*`` metadata) with a tiny graph whose
answer is known: every keyword's probability is ``sigmoid(GAIN * mean(audio))`` (a window that is positive on
average confirms any keyword, a negative one rejects it), ``_silence_`` gets the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.verifier_format import VerifierMetadata

GAIN = 100.0
RATE = 16_000


def stand_in_probability(window: np.ndarray) -> float:
    """What the stand-in says for a keyword, given its window."""
    return float(1 / (1 + np.exp(-GAIN * float(np.mean(window, dtype=np.float64)))))


def make_stand_in_verifier(path: Path, labels: tuple[str, ...], *, threshold: float = 0.5, window_ms: float = 500.0,
                           window_end_ms: float = 0.0, props: dict[str, str | None] | None = None) -> Path:  # fmt: skip
    """Write the stand-in to ``path`` (metadata from :class:`VerifierMetadata`, replaced by ``props``; a None value
    removes the entry)."""
    keyword = np.array([[x not in (SILENCE_LABEL, UNKNOWN_LABEL) for x in labels]], np.float32)
    silence = np.array([[x == SILENCE_LABEL for x in labels]], np.float32)
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("ReduceMean", ["audio"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Mul", ["p", "keyword"], ["a"]),
        helper.make_node("Mul", ["q", "silence"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "stand_in_verifier",
        [helper.make_tensor_value_info("audio", f, [1, "samples"])],
        [helper.make_tensor_value_info("scores", f, [1, len(labels)])],
        [numpy_helper.from_array(np.array(GAIN, np.float32), "gain"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(keyword, "keyword"), numpy_helper.from_array(silence, "silence")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = VerifierMetadata(labels=tuple(labels), sample_rate=RATE, window_ms=window_ms, window_end_ms=window_end_ms,
                            threshold=threshold, min_samples=1)  # fmt: skip
    for key, value in {**meta.to_props(), **(props or {})}.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
