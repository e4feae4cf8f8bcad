"""Torch-free onnxruntime keyword-spotting runtime (installed as ``kws.runtime``).

Dependencies: numpy, onnxruntime, soundfile, soxr; sounddevice only for the microphone (imported lazily).

Library API::

    from kws.runtime import KeywordSpotter, SpotterConfig, detect_file, stream_scores, detections_from_scores

    spotter = KeywordSpotter("kws.stream.int8.onnx")   # the model's own settings (spotter_config), else defaults
    spotter = KeywordSpotter("kws.stream.int8.onnx", SpotterConfig(threshold=0.8))   # exactly these
    for chunk in chunks:                      # mono int16 or float32 at spotter.sample_rate, any length
        for d in spotter.process(chunk):
            print(d.time, d.keyword, d.confidence)

    detections, stats = detect_file("kws.stream.int8.onnx", "recording.wav", thresholds={"yes": 0.9})
    trace = stream_scores("kws.stream.int8.onnx", "long.wav")      # per-frame posteriors, run once
    for t in (0.5, 0.7, 0.9):
        hits = detections_from_scores(trace, SpotterConfig(threshold=t))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names are imported on first use (PEP 562), not with the package: `kws listen` imports
# kws.runtime.listen, which must import in milliseconds so that a Ctrl-C during start-up reaches a handler
# instead of interrupting numpy's or onnxruntime's initialisation with a traceback.
_EXPORTS: dict[str, str] = {
    "SpotterConfig": "config", "spotter_config": "config",
    "Detection": "detect", "KeywordSpotter": "detect", "ScoreTrace": "detect", "detections_from_scores": "detect",
    "StreamEngine": "engine",
    "ModelError": "model", "ModelInfo": "model", "StreamingModel": "model", "load_model": "model",
    "make_session": "model", "session_options": "model",
    "ArraySource": "sources", "AudioSource": "sources", "SourceError": "sources",
    "FileSource": "files", "StdinSource": "files",
    "DeviceError": "microphone", "DeviceLostError": "microphone", "MicrophoneSource": "microphone",
    "list_input_devices": "microphone",
    "StreamRunner": "stream", "StreamStats": "stream", "detect_audio": "stream", "detect_file": "stream",
    "stream_scores": "stream",
}  # fmt: skip

if TYPE_CHECKING:
    from kws.runtime.config import SpotterConfig, spotter_config
    from kws.runtime.detect import Detection, KeywordSpotter, ScoreTrace, detections_from_scores
    from kws.runtime.engine import StreamEngine
    from kws.runtime.files import FileSource, StdinSource
    from kws.runtime.microphone import DeviceError, DeviceLostError, MicrophoneSource, list_input_devices
    from kws.runtime.model import ModelError, ModelInfo, StreamingModel, load_model, make_session, session_options
    from kws.runtime.sources import ArraySource, AudioSource, SourceError
    from kws.runtime.stream import StreamRunner, StreamStats, detect_audio, detect_file, stream_scores


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "ArraySource", "AudioSource", "Detection", "DeviceError", "DeviceLostError", "FileSource",
    "KeywordSpotter", "MicrophoneSource", "ModelError", "ModelInfo", "ScoreTrace", "SourceError",
    "SpotterConfig", "StdinSource", "StreamEngine", "StreamRunner", "StreamStats", "StreamingModel",
    "detect_audio", "detect_file", "detections_from_scores", "list_input_devices", "load_model",
    "make_session", "session_options", "spotter_config", "stream_scores",
]  # fmt: skip
