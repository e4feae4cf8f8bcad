"""Named constants shared by training, export and the runtime (torch-free)."""

from __future__ import annotations

SAMPLE_RATE = 16_000
"""Sample rate of Speech Commands and of every model (Hz)."""

CLIP_SECONDS = 1.0
"""Length of one Speech Commands utterance (s); clips are padded/cropped to this."""

SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
BACKGROUND_NOISE_DIR = "_background_noise_"

STANDARD_KEYWORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
"""The ten keywords of the standard 12-class Speech Commands task."""

V1_WORDS: tuple[str, ...] = (
    "bed",
    "bird",
    "cat",
    "dog",
    "down",
    "eight",
    "five",
    "four",
    "go",
    "happy",
    "house",
    "left",
    "marvin",
    "nine",
    "no",
    "off",
    "on",
    "one",
    "right",
    "seven",
    "sheila",
    "six",
    "stop",
    "three",
    "tree",
    "two",
    "up",
    "wow",
    "yes",
    "zero",
)
"""The 30 words of Speech Commands v0.01."""

V2_WORDS: tuple[str, ...] = tuple(sorted(V1_WORDS + ("backward", "follow", "forward", "learn", "visual")))
"""The 35 words of Speech Commands v0.02."""

VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
SPLITS: tuple[str, ...] = ("train", "validation", "test")

MAX_CLIPS_PER_SPEAKER_BITS = 2**27 - 1
"""Constant of the official split hashing rule (``which_set`` in TensorFlow's speech_commands/input_data.py)."""

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")

# Keys of the metadata stored in every exported ONNX file (``metadata_props``), read back by the runtime.
META_FORMAT = "kws.format"
META_FORMAT_VERSION = "1"
META_KIND = "kws.kind"  # "clip" or "stream"
META_LABELS = "kws.labels"  # JSON list
META_SAMPLE_RATE = "kws.sample_rate"
META_CLIP_SAMPLES = "kws.clip_samples"
META_WINDOW_SAMPLES = "kws.window_samples"  # samples per analysis frame (FFT size)
META_HOP_SAMPLES = "kws.hop_samples"
META_FEATURE_CONFIG = "kws.feature_config"  # JSON
META_MODEL_CONFIG = "kws.model_config"  # JSON
META_STATE = "kws.state"  # JSON: [{"input": ..., "output": ..., "shape": [layers, "lanes", size]}, ...]
META_EVALUATION = "kws.evaluation"  # JSON
META_QUANTIZATION = "kws.quantization"  # "none", "dynamic" or "static-qdq"
META_VERSION = "kws.version"

# Names of the ONNX graph inputs and outputs.
INPUT_AUDIO = "audio"
OUTPUT_SCORES = "scores"
STATE_H_IN, STATE_C_IN = "h_in", "c_in"
STATE_H_OUT, STATE_C_OUT = "h_out", "c_out"
OUTPUT_LOGITS = "logits"  # streaming model: per-frame logits [lanes, frames, n_labels]
META_POOLING = "kws.pooling"  # "mean" (mean of the per-frame logits over a clip) or "last"
META_POOL_FRAMES = "kws.pool_frames"  # frames per clip, over which a stream pools its logits
