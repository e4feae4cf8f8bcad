"""The tiny model's ONNX exports for the runtime tests: odd or broken variants derived from a real export by
editing the ONNX file by name, and the torch model's per-frame outputs as the reference for the streaming
engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from support.synthetic import SAMPLE_RATE


def derive_model(
    source: Path,
    out: Path,
    metadata: Mapping[str, str | None] | None = None,
    rename_input: tuple[str, str] | None = None,
) -> Path:
    """Write a copy of the ONNX file ``source`` to ``out`` with some changes, all by name.

    Args:
        metadata: metadata entries to set (``None``: to delete); each deleted key must exist.
        rename_input: ``(old, new)``: the graph input ``old`` and every use of it are renamed ``new``.
    """
    import onnx

    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in (metadata or {}).items():
        if value is None:
            del props[key]
        else:
            props[key] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    if rename_input is not None:
        old, new = rename_input
        (value,) = [i for i in model.graph.input if i.name == old]
        value.name = new
        for node in _nodes(model.graph):
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def _nodes(graph) -> Iterator:
    """Every node of ``graph``, those of subgraphs (If/Loop/Scan bodies) included."""
    import onnx

    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for sub in attribute.graphs:
                    yield from _nodes(sub)


def noise(seconds: float, seed: int = 0, scale: float = 0.3) -> np.ndarray:
    """White noise, float32 at 16 kHz."""
    return (np.random.default_rng(seed).standard_normal(round(seconds * SAMPLE_RATE)) * scale).astype(np.float32)


class TorchReference:
    """The checkpoint's torch model (torchaudio MFCC + LSTM, not the exported graph): per-frame logits of a
    zero-state run, frame ``t`` covering samples ``[t * hop, t * hop + window)``."""

    def __init__(self, checkpoint: Path) -> None:
        from kws.model.checkpoint import model_from_checkpoint

        model, _, _ = model_from_checkpoint(checkpoint)
        self.model = model.eval()

    def logits(self, audio: np.ndarray) -> np.ndarray:
        """float64 ``[frames, n_labels]`` of float32 ``audio`` ``[n]``."""
        import torch

        with torch.no_grad():
            logits, _ = self.model(self.model.frontend(torch.from_numpy(audio)[None]))
        return logits[0].double().numpy()


def pooled_posteriors(logits: np.ndarray, pooling: str, pool_frames: int) -> np.ndarray:
    """What the engine must output for each frame of a zero-state run whose per-frame logits are ``logits``
    ``[frames, n_labels]``: softmax of each frame's logits (``last``) or of the mean of the last
    ``pool_frames`` frames' logits (fewer at the start; ``mean``)."""
    if pooling == "mean":
        sums = np.concatenate([np.zeros((1, logits.shape[1])), np.cumsum(logits, axis=0)])
        ends = np.arange(1, len(logits) + 1)
        counts = np.minimum(ends, pool_frames)
        logits = (sums[ends] - sums[ends - counts]) / counts[:, None]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
