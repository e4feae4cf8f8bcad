"""PyTorch -> ONNX: the whole-clip model and the streaming step, with the MFCC front end inside the graph.

Both graphs come from the dynamo exporter (``torch.onnx.export(..., dynamo=True)``): in the whole-clip model
torchaudio's MFCC becomes an ONNX ``STFT`` (``n_fft`` is a power of two) followed by two MatMuls (mel
filterbank, DCT); the streaming step computes the same features with cheaper nodes (:class:`StreamFrontend`).
``nn.LSTM`` becomes one ONNX ``LSTM`` per layer (the streaming step's through
:func:`kws.export.stream_ops.lstm_translation`, without the generic reshaping chains). The exported graph is
then constant-folded (the exporter reorders the LSTM gate weights from PyTorch's ``i,f,g,o`` to ONNX's
``i,o,f,c`` at run time; folding turns them into plain initializers, which onnxruntime's quantizer needs),
stripped of the exporter's per-node debug metadata (stack traces with local paths) and stamped with the kws
metadata (:func:`model_metadata`).

Streaming step, frame alignment: frame ``t`` of a stream covers samples ``[t*hop, t*hop + n_fft)``. A call
with ``k`` new frames gets ``context + k*hop`` samples (``context = n_fft - hop``): the newest ``k`` hops
preceded by the ``context`` samples before them, and computes exactly those ``k`` frames (frame step = hop),
so nothing is computed twice.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from kws import __version__
from kws.config import FeatureConfig, ModelConfig, to_dict
from kws.errors import KWSError
from kws.export import stream_ops as so
from kws.format import (
    BATCH_DIM,
    FRAMES_DIM,
    INPUT_AUDIO,
    KIND_CLIP,
    KIND_STREAM,
    LANES_DIM,
    OUTPUT_LOGITS,
    OUTPUT_SCORES,
    QUANT_NONE,
    ModelMetadata,
    StateSpec,
    lstm_state_specs,
)
from kws.io import atomic_write
from kws.model.features import MFCCFrontend
from kws.model.network import KWSModel

logger = logging.getLogger(__name__)

ONNX_OPSET = 20
"""Opset of the exported graphs (STFT needs 17+, the dynamo exporter's torchlib targets 18+)."""

FOLD_SIZE_LIMIT = 1 << 26
"""Largest tensor (elements) the constant folder may read or write: every LSTM weight must be folded."""

LOG_MEL_OFFSET = 1e-6
"""torchaudio's MFCC with ``log_mels=True`` takes ``log(mel + 1e-6)``."""


class ExportError(KWSError):
    """A checkpoint cannot be exported (e.g. an LSTM with projections, which ONNX's LSTM op lacks)."""


class ClipScores(nn.Module):
    """Whole-clip model: raw audio ``[batch, clip_samples]`` -> class probabilities ``[batch, n_labels]``.

    The probabilities are the softmax of the clip's pooled logits (:meth:`KWSModel.classify`: the mean of the
    per-frame logits, or the last frame's, per ``ModelConfig.pooling``).
    """

    def __init__(self, model: KWSModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model.classify(audio), dim=-1)


class StreamFrontend(nn.Module):
    """The model's MFCC front end for a streaming call: ``audio [1, context + k*hop]`` -> ``[k, n_mfcc]``.

    The same arithmetic as the model's torchaudio MFCC (power spectrum, mel filterbank, ``log(mel + 1e-6)``,
    DCT, then the fixed normalisation), written so that a call runs few, cheap ONNX nodes
    (:mod:`kws.export.stream_ops`): the frames are column ranges of ``[k, hop]`` reshapes of the audio, cut to
    the window's support; the power spectrum is a DFT folded on its symmetry, restricted to the bins the mel
    filterbank reads, as two MatMuls (onnxruntime's ``STFT`` costs twice as much); the normalisation is folded
    into the DCT matrix. The equivalence (to float rounding) is checked on every export: streaming scores vs
    whole-clip scores, and ONNX vs PyTorch.
    """

    def __init__(self, frontend: MFCCFrontend) -> None:
        super().__init__()
        mfcc = frontend.mfcc
        spectrogram = mfcc.MelSpectrogram.spectrogram
        assumptions = {
            "log_mels": mfcc.log_mels,
            "power": spectrogram.power == 2.0,
            "center": not spectrogram.center,
            "pad": spectrogram.pad == 0,
            "normalized": not spectrogram.normalized,
            "onesided": spectrogram.onesided in (None, True),
            "even n_fft": spectrogram.n_fft % 2 == 0,
        }
        broken = [name for name, ok in assumptions.items() if not ok]
        if broken:
            raise ExportError(
                f"the model's MFCC front end changed ({', '.join(broken)}); the streaming export "
                "in kws.export.onnx_export must be updated to match it"
            )
        self.n_fft, self.hop = spectrogram.n_fft, spectrogram.hop_length
        window = torch.zeros(self.n_fft, dtype=torch.float64)  # torch.stft centres a shorter window
        left = (self.n_fft - spectrogram.win_length) // 2
        window[left : left + spectrogram.win_length] = spectrogram.window.detach().double()
        mel_fb = mfcc.MelSpectrogram.mel_scale.fb.detach()  # [bins, n_mels]
        try:
            self.support = so.window_support(window.numpy())
            self.bins = so.used_bins(mel_fb.numpy())
        except ValueError as exc:
            raise ExportError(f"the model's MFCC front end cannot be streamed: {exc}") from None
        self.pieces = so.frame_pieces(self.n_fft, self.hop, self.support, self.n_fft - self.support + 1)
        self.half = self.n_fft // 2 - self.support + 1  # samples n = support .. n_fft/2
        cos, sin = so.dft_bases(self.n_fft, self.support, self.bins)
        self.register_buffer("window", window[self.support : self.n_fft - self.support + 1].float())
        self.register_buffer("cos_basis", torch.from_numpy(cos))  # [half, used bins]
        self.register_buffer("sin_basis", torch.from_numpy(sin))
        self.register_buffer("mel_fb", mel_fb[self.bins[0] : self.bins[1]].clone())  # [used bins, n_mels]
        # The normalisation folded into the DCT: (log_mel @ dct - mean) / std = log_mel @ (dct / std) + bias.
        std = frontend.std.detach()
        self.register_buffer("dct_scaled", (mfcc.dct_mat.detach() / std).clone())  # [n_mels, n_mfcc]
        self.register_buffer("bias", (-frontend.mean.detach() / std).clone())

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        context = self.n_fft - self.hop
        frames = torch.cat(
            [audio[:, o : (o - context) or None].reshape(-1, self.hop)[:, c0:c1] for o, c0, c1 in self.pieces], 1
        ) * self.window  # fmt: skip
        first = frames[:, : self.half]  # windowed samples n = support .. n_fft/2 of each frame
        mirror = frames[:, self.half - 1 :].flip(1)  # samples n_fft - n
        re = torch.matmul(first + mirror, self.cos_basis)
        im = torch.matmul(first - mirror, self.sin_basis)
        mel = torch.matmul(re * re + im * im, self.mel_fb)  # power [k, bins] -> [k, n_mels]
        return torch.matmul(torch.log(mel + LOG_MEL_OFFSET), self.dct_scaled) + self.bias

    def basis_nodes(self, prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
        """Nodes computing :attr:`cos_basis` and :attr:`sin_basis` (named ``prefix.cos_basis`` ...) at load."""
        outputs = (f"{prefix}.cos_basis", f"{prefix}.sin_basis")
        return so.basis_nodes(f"{prefix}.dft", self.n_fft, self.support, self.bins, outputs)


class StreamStep(nn.Module):
    """One streaming call: the newest ``k`` hops of audio (plus context) and the LSTM state of every lane.

    Shapes:
        audio: float32 ``[1, context_samples + k*hop_samples]`` (``k >= 1``): the ``k`` new frames are the
            ones that end in these samples.
        h_in: ``[layers, lanes, output_size]``; c_in: ``[layers, lanes, hidden_size]``. Lanes are independent
            LSTM states over the same audio; the features are computed once and broadcast to every lane.
        returns: logits ``[lanes, k, n_labels]`` (raw per-frame logits of the new frames; a clip's scores are
            the softmax of their pool over the clip's frames, see ``META_POOLING``), h_out, c_out (shapes of
            h_in, c_in).

    The LSTM runs time-major (a copy of the model's batch-first ``nn.LSTM``, same weights), so the graph
    needs one transpose, of the logits.
    """

    def __init__(self, model: KWSModel) -> None:
        super().__init__()
        self.frontend = StreamFrontend(model.frontend)
        self.lstm = copy.deepcopy(model.lstm)
        self.lstm.batch_first = False
        self.head = model.head

    def forward(
        self, audio: torch.Tensor, h_in: torch.Tensor, c_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.frontend(audio).unsqueeze(1).expand(-1, h_in.shape[1], -1)  # [k, lanes, n_mfcc]
        out, (h_out, c_out) = self.lstm(feats, (h_in, c_in))
        return self.head(out).transpose(0, 1), h_out, c_out


def check_exportable(config: ModelConfig) -> None:
    """Raise ExportError for models the ONNX LSTM op cannot express."""
    if config.proj_size:
        raise ExportError(
            f"this checkpoint's LSTM has proj_size={config.proj_size}; ONNX's LSTM op has no projection, "
            "so it cannot be exported (train with proj_size=0)"
        )


def state_spec(config: ModelConfig) -> tuple[StateSpec, ...]:
    """The streaming model's recurrent state (the ``kws.state`` entry)."""
    return lstm_state_specs(config.num_layers, config.output_size, config.hidden_size)


def model_metadata(
    features: FeatureConfig,
    model: ModelConfig,
    labels: list[str],
    kind: str,
    evaluation: Mapping[str, Any] | None = None,
    quantization: str = QUANT_NONE,
) -> dict[str, str]:
    """The kws ``metadata_props`` of an exported file (:class:`kws.format.ModelMetadata`)."""
    return ModelMetadata(
        kind=kind,
        labels=tuple(labels),
        sample_rate=features.sample_rate,
        clip_samples=features.clip_samples,
        window_samples=features.n_fft,
        hop_samples=features.hop_samples,
        pooling=model.pooling,
        pool_frames=features.num_frames(features.clip_samples),
        states=state_spec(model) if kind == KIND_STREAM else (),
        feature_config=to_dict(features),
        model_config=to_dict(model),
        evaluation=dict(evaluation or {}),
        quantization=quantization,
        version=__version__,
    ).to_props()


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace the model-level ``metadata_props`` entries named in ``metadata`` (others are kept)."""
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=str(value))


def read_metadata(source: str | Path | onnx.ModelProto) -> dict[str, str]:
    """The model-level ``metadata_props`` of an ONNX file (weights not loaded) or model."""
    proto = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Atomically write ``proto`` to ``path`` (a temporary file in the same folder, then ``os.replace``), with
    the permissions of a new file."""
    atomic_write(Path(path), lambda tmp: onnx.save_model(proto, str(tmp)))


def _strip_debug_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node/per-value metadata (FX node text, stack traces with local paths)."""
    graph = proto.graph
    for node in graph.node:
        del node.metadata_props[:]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        del value.metadata_props[:]
    del graph.metadata_props[:]


def _set_dims(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, str):
            shape.dim.add().dim_param = d
        else:
            shape.dim.add().dim_value = d


def _finish(proto: onnx.ModelProto, outputs: Mapping[str, list[int | str]]) -> onnx.ModelProto:
    """Constant-fold, strip debug metadata, declare the output shapes and re-infer the inner ones.

    The declared shapes matter for the streaming step: PyTorch's meta kernel of ``aten.lstm`` gives its output
    the example's frame count, so the exporter would declare ``logits`` with a fixed ``k``. The inner
    ``value_info`` is dropped and recomputed by ONNX shape inference, which derives it from the LSTM op.
    """
    import onnxscript.optimizer

    proto = onnxscript.optimizer.optimize(proto, input_size_limit=FOLD_SIZE_LIMIT, output_size_limit=FOLD_SIZE_LIMIT)
    _strip_debug_metadata(proto)
    del proto.graph.value_info[:]
    for value in proto.graph.output:
        if value.name in outputs:
            _set_dims(value, outputs[value.name])
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    proto.producer_name, proto.producer_version = "kws", __version__
    return proto


def _reset_lstm_dispatch_cache() -> None:
    """Work around stale dispatch caching in PyTorch's exporter (seen with torch 2.14).

    For dynamic shapes the ONNX exporter swaps a while_loop decomposition into ``aten.lstm.input``'s Python
    kernels and restores the original afterwards, but the operator's ``_dispatch_cache`` keeps the kernel
    resolved during the previous export. A second export with a symbolic frame count in the same process then
    traces the Python-loop LSTM decomposition and fails ("stack expects each tensor to be equal size").
    Clearing the cache makes every export behave like the first one.
    """
    cache = getattr(torch.ops.aten.lstm.input, "_dispatch_cache", None)
    if isinstance(cache, dict):
        cache.clear()


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic_shapes: dict[str, Any],
    input_names: list[str],
    output_names: list[str],
    translations: Mapping[Any, Any] | None = None,
) -> onnx.ModelProto:
    module.eval()
    _reset_lstm_dispatch_cache()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=ONNX_OPSET,
            custom_translation_table=dict(translations or {}),
            optimize=True,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns an ONNXProgram
        raise ExportError("the ONNX exporter returned no program")
    return program.model_proto


def _quiet_exporter() -> None:
    """The dynamo exporter prints progress lines through the ``torch.onnx`` loggers; keep them at WARNING."""
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir"):
        if logging.getLogger(name).level < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)


def export_clip_model(
    model: KWSModel,
    labels: list[str],
    evaluation: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """The whole-clip ONNX model (in memory): ``audio [batch, clip_samples]`` -> ``scores [batch, C]``."""
    check_exportable(model.config)
    _quiet_exporter()
    features = model.feature_config
    example = torch.zeros(2, features.clip_samples)
    batch = torch.export.Dim(BATCH_DIM, min=1)
    proto = _export(ClipScores(model), (example,), {"audio": {0: batch}}, [INPUT_AUDIO], [OUTPUT_SCORES])
    proto = _finish(proto, {OUTPUT_SCORES: [BATCH_DIM, model.config.n_labels]})
    set_metadata(proto, model_metadata(features, model.config, labels, KIND_CLIP, evaluation))
    return proto


def export_stream_model(
    model: KWSModel,
    labels: list[str],
    evaluation: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """The streaming-step ONNX model (in memory), see :class:`StreamStep` for its inputs and outputs."""
    check_exportable(model.config)
    _quiet_exporter()
    features, config = model.feature_config, model.config
    example_k, example_lanes = 3, 2  # any values > 1 (1 would be specialised as a constant)
    audio = torch.zeros(1, features.context_samples + example_k * features.hop_samples)
    h, c = model.initial_state(example_lanes)
    k = torch.export.Dim(FRAMES_DIM, min=1)
    lanes = torch.export.Dim(LANES_DIM, min=1)
    dynamic = {
        "audio": {1: features.hop_samples * k + features.context_samples},
        "h_in": {1: lanes},
        "c_in": {1: lanes},
    }
    states = state_spec(config)  # h, c: the order of StreamStep's arguments and results
    step = StreamStep(model)
    proto = _export(
        step,
        (audio, h, c),
        dynamic,
        [INPUT_AUDIO, *(s.input for s in states)],
        [OUTPUT_LOGITS, *(s.output for s in states)],
        {torch.ops.aten.lstm.input: so.lstm_translation},
    )
    proto = _finish(
        proto, {OUTPUT_LOGITS: [LANES_DIM, FRAMES_DIM, config.n_labels], **{s.output: list(s.shape) for s in states}}
    )
    try:  # the DFT bases are computed when a session loads instead of stored (file size)
        so.compute_in_graph(proto, *step.frontend.basis_nodes("frontend"))
    except ValueError as exc:
        raise ExportError(f"streaming export: {exc}") from None
    set_metadata(proto, model_metadata(features, config, labels, KIND_STREAM, evaluation))
    return proto
