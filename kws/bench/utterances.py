"""What a test stream can play: recordings with their kind, label and duration (torch-free).

The bench's streams (:mod:`kws.bench.streams`, :mod:`kws.bench.negative_passes`) are planned from these:
test-split keyword and ``_unknown_`` clips, and the held-out half of the ``--negatives`` recordings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kws.bench.events import KIND_NEGATIVE
from kws.constants import AUDIO_EXTENSIONS
from kws.data.audio import int16_to_float, load_audio
from kws.errors import KWSError

logger = logging.getLogger(__name__)


class StreamSetError(KWSError):
    """The stream cannot be built (no keyword clips, no readable negatives, ...)."""


# ----------------------------------------------------------------------------------------- utterances


@dataclass(frozen=True)
class Utterance:
    """One recording the stream can play.

    Attributes:
        kind: :data:`KIND_KEYWORD`, :data:`KIND_UNKNOWN` or :data:`KIND_NEGATIVE`.
        label: the keyword (keyword events), the word (unknown events) or the negative's folder name.
        source: where it comes from (a path, for the report).
        seconds: its duration (s), for planning.
        audio: float32 or int16 ``[samples]`` at the stream rate if already in memory, else read from ``source``.
    """

    kind: str
    label: str
    source: str
    seconds: float
    audio: np.ndarray | None = field(default=None, repr=False, compare=False)

    def load(self, sample_rate: int) -> np.ndarray:
        """float32 ``[samples]`` at ``sample_rate`` (Hz)."""
        if self.audio is not None and self.audio.dtype == np.int16:
            return int16_to_float(self.audio)
        if self.audio is not None:
            return np.asarray(self.audio, dtype=np.float32)
        return load_audio(self.source, sample_rate)


def file_utterances(paths: Sequence[str | Path], kind: str, label_of: Callable[[Path], str]) -> list[Utterance]:
    """Utterances of audio files, their durations read from the headers (unreadable files skipped, logged)."""
    import soundfile as sf

    out = []
    for path in map(Path, paths):
        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises several types for non-audio data
            logger.warning("skipping %s: %s", path, exc)
            continue
        if info.frames > 0:
            out.append(Utterance(kind, label_of(path), str(path), info.frames / info.samplerate))
    return out


def negative_utterances(folder: str | Path) -> list[Utterance]:
    """The held-out negatives of a folder (any layout; the label is the file's parent folder name).

    Only the half of the files that `kws train --negatives` never uses (:func:`kws.data.layout.negative_split`) is
    returned, so the stream's non-keyword speech is unseen in training whatever the model was trained with.

    Raises:
        DataError: the folder does not exist or holds no audio files.
        StreamSetError: none of its held-out files is readable audio.
    """
    from kws.data.layout import negative_files, negative_split

    held_out = [p for p in negative_files(folder) if negative_split(p) == "held-out"]
    found = file_utterances(held_out, KIND_NEGATIVE, lambda p: p.parent.name)
    if not found:
        raise StreamSetError(f"no readable audio files ({', '.join(AUDIO_EXTENSIONS)}) under {folder}")
    return found
