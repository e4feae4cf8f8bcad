"""Torch-free onnxruntime keyword-spotting runtime (installed as ``kws.runtime``).

Dependencies: numpy, onnxruntime, soundfile, soxr; sounddevice only for the microphone (imported lazily).

Library API::

    from kws.runtime import KeywordSpotter, SpotterConfig, detect_file, stream_scores, detections_from_scores

    spotter = KeywordSpotter("kws.stream.int8.onnx", SpotterConfig(threshold=0.8))
    for chunk in chunks:                      # mono int16 or float32 at spotter.sample_rate, any length
        for d in spotter.process(chunk):
            print(d.time, d.keyword, d.confidence)

    detections, stats = detect_file("kws.stream.int8.onnx", "recording.wav", thresholds={"yes": 0.9})
    trace = stream_scores("kws.stream.int8.onnx", "long.wav")      # per-frame posteriors, run once
    for t in (0.5, 0.7, 0.9):
        hits = detections_from_scores(trace, SpotterConfig(threshold=t))
"""

from kws.runtime.config import SpotterConfig
from kws.runtime.detect import Detection, KeywordSpotter, ScoreTrace, detections_from_scores
from kws.runtime.engine import StreamEngine
from kws.runtime.model import ModelError, ModelInfo, StreamingModel, load_model, make_session, session_options
from kws.runtime.sources import (
    ArraySource,
    AudioSource,
    DeviceError,
    DeviceLostError,
    FileSource,
    MicrophoneSource,
    SourceError,
    StdinSource,
    list_input_devices,
)
from kws.runtime.stream import StreamRunner, StreamStats, detect_audio, detect_file, stream_scores

__all__ = [
    "ArraySource", "AudioSource", "Detection", "DeviceError", "DeviceLostError", "FileSource",
    "KeywordSpotter", "MicrophoneSource", "ModelError", "ModelInfo", "ScoreTrace", "SourceError",
    "SpotterConfig", "StdinSource", "StreamEngine", "StreamRunner", "StreamStats", "StreamingModel",
    "detect_audio", "detect_file", "detections_from_scores", "list_input_devices", "load_model",
    "make_session", "session_options", "stream_scores",
]  # fmt: skip
