"""Named constants of the data sets, shared by training, export and the runtime (torch-free).

The ONNX file format (metadata keys, graph input and output names) is :mod:`kws.format`.
"""

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
