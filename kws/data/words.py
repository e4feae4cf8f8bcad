"""Where the spoken word is in a clip, from its energy envelope (torch-free).

The stream builders (the bench's test streams, :mod:`kws.train.streams`' training streams) place keyword clips with
it (a keyword's word end is what detection latency is measured from, and where a training target starts) and set
each event's level over the noise bed from the word's active speech level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ENVELOPE_FRAME_SECONDS = 0.02
ENVELOPE_HOP_SECONDS = 0.01
WORD_DB_BELOW_PEAK = 30.0
"""A frame belongs to speech if its energy is within this many dB of the loudest frame..."""
WORD_DB_ABOVE_FLOOR = 10.0
"""...and at least this many dB above the clip's noise floor (``FLOOR_PERCENTILE`` of the frame energies)."""
FLOOR_PERCENTILE = 10.0
WORD_MAX_INNER_GAP_SECONDS = 0.15
"""Speech runs closer than this are one word (e.g. the closure before the final /p/ of "stop")."""
ENERGY_EPS = 1e-10


def rms(audio: np.ndarray) -> float:
    """RMS of float ``[samples]`` (0 for an empty signal)."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


@dataclass(frozen=True)
class WordSpan:
    """Where the spoken word is in a clip (s from the clip start), and its level.

    Attributes:
        start, end: first and last speech sample of the word (s).
        active_rms: RMS of every speech frame of the clip (all runs above the threshold, not only the word).
    """

    start: float
    end: float
    active_rms: float


def frame_energies_db(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level of ``ENVELOPE_FRAME_SECONDS`` frames every ``ENVELOPE_HOP_SECONDS`` (dBFS), ``[frames]``."""
    size = max(1, round(ENVELOPE_FRAME_SECONDS * sample_rate))
    hop = max(1, round(ENVELOPE_HOP_SECONDS * sample_rate))
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < size:
        audio = np.pad(audio, (0, size - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, size)[::hop]
    return 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + ENERGY_EPS)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[first, last]`` frame indices of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def word_span(audio: np.ndarray, sample_rate: int) -> WordSpan:
    """The spoken word of a clip from its energy envelope.

    Frames above ``max(peak - WORD_DB_BELOW_PEAK, floor + WORD_DB_ABOVE_FLOOR)`` are speech; runs closer than
    ``WORD_MAX_INNER_GAP_SECONDS`` are merged, and the merged run with the most energy is the word (a click
    or a breath well after the word does not move its end).

    Args:
        audio: float32 mono ``[samples]``.
        sample_rate: Hz.
    """
    db = frame_energies_db(audio, sample_rate)
    hop = round(ENVELOPE_HOP_SECONDS * sample_rate)
    size = round(ENVELOPE_FRAME_SECONDS * sample_rate)
    peak = int(np.argmax(db))
    threshold = max(db[peak] - WORD_DB_BELOW_PEAK, np.percentile(db, FLOOR_PERCENTILE) + WORD_DB_ABOVE_FLOOR)
    speech = db >= threshold
    speech[peak] = True  # a clip of constant level is all one word
    max_gap = round(WORD_MAX_INNER_GAP_SECONDS / ENVELOPE_HOP_SECONDS)
    merged: list[list[int]] = []
    for first, last in _runs(speech):
        if merged and first - merged[-1][1] - 1 <= max_gap:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    power = 10.0 ** (db / 10.0)
    first, last = max(merged, key=lambda run: float(power[run[0] : run[1] + 1].sum()))
    active = float(np.sqrt(np.mean(power[speech])))
    end = min(len(audio), last * hop + size)
    return WordSpan(start=first * hop / sample_rate, end=end / sample_rate, active_rms=active)
