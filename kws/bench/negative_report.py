"""The negative stream's part of the bench report (``bench.json``'s ``negative_stream``; torch-free).

Frozen dataclasses, written and read back by :class:`kws.bench.report.BenchReport` (absent from reports of
runs without ``--negative-hours`` and from reports written before the option existed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kws.bench.scoring import SECONDS_PER_HOUR, poisson_upper


@dataclass(frozen=True)
class FalseAccepts:
    """False accepts over some hours of non-keyword audio, with the rate and its 95% Poisson upper bound
    (per hour; None where there are no hours)."""

    false_accepts: int
    hours: float
    fa_per_hour: float | None
    fa_per_hour_upper95: float | None

    @classmethod
    def of(cls, count: int, seconds: float) -> FalseAccepts:
        """The figures of ``count`` false accepts in ``seconds`` of audio."""
        hours = seconds / SECONDS_PER_HOUR
        if hours <= 0:
            return cls(count, 0.0, None, None)
        return cls(count, hours, count / hours, poisson_upper(count) / hours)


@dataclass(frozen=True)
class NegativePass:
    """One pass of the negative stream: how it was made and its false accepts at the shipped defaults.

    Attributes:
        index: 0, 1, ... (the order in the stream).
        start_s, seconds: where it starts in the negative stream and how long it is (s).
        noise: the background (which noise recordings).
        snr_db, gain_db: the ranges its events' SNR and gain were drawn from (dB).
        reverb: how its reverberation was simulated ("none" without), with the room and its RT60.
        rt60_s: the room's requested RT60 (s), None without reverberation.
        real_speech_events, unknown_events: events played (held-out negative recordings, ``_unknown_`` clips).
        total: every false accept over the whole pass.
        real_speech: false accepts during the negative recordings (or within the tolerance after one), over
            their duration.
        false_accepts_by_context: false accepts by where they happened (``negative``, ``unknown``, ``noise``).
        false_accepts_per_keyword: false accepts by the keyword reported.
        state_max_abs: the largest absolute value in the LSTM states at the end of the pass (None in reports
            written before it was recorded): a state that drifts over hours grows here.
    """

    index: int
    start_s: float
    seconds: float
    noise: str
    snr_db: tuple[float, float]
    gain_db: tuple[float, float]
    reverb: str
    rt60_s: float | None
    real_speech_events: int
    unknown_events: int
    total: FalseAccepts
    real_speech: FalseAccepts
    false_accepts_by_context: dict[str, int]
    false_accepts_per_keyword: dict[str, int]
    state_max_abs: float | None = None


@dataclass(frozen=True)
class NegativeSweepPoint:
    """The negative stream at one threshold of the sweep, and the DET point it gives with the mixed stream.

    Attributes:
        recall: keyword recall at this threshold, from the mixed stream (the negative stream has no keywords).
        negative: false accepts over the negative stream.
        real_speech: those during the negative recordings, over their duration.
        combined: the mixed stream's false accepts and the negative stream's, over both streams' non-keyword
            hours.
    """

    threshold: float
    recall: float | None
    negative: FalseAccepts
    real_speech: FalseAccepts
    combined: FalseAccepts


@dataclass(frozen=True)
class NegativeStream:
    """``kws bench --negative-hours H``: H hours of non-keyword audio through the live path.

    Attributes:
        hours_requested: H.
        seconds: what was streamed (s): H hours to the sample.
        threshold: the shipped default threshold the figures below are at.
        real_speech_files, unknown_clips: the material each pass replays (held-out negative recordings,
            ``_unknown_`` clips of the test split) and its duration per replay (s).
        noise_source: the noise recordings the passes choose from.
        reverb_method: how reverberation was simulated (:mod:`kws.data.reverb`).
        total: every false accept over the whole negative stream.
        real_speech: false accepts during the negative recordings, over their total duration.
        per_keyword: false accepts by the keyword reported, over the whole stream.
        passes: each pass, labelled.
        sweep: the threshold sweep (ascending), with the combined DET points.
        stats: the runtime's StreamStats over all passes (``audio_seconds``, ``cpu_seconds``: process CPU time
            while streaming, including making the audio; ``model_seconds``: inside onnxruntime; ...).
        wall_seconds: wall time of the whole negative stream: making the audio, the runs and the sweep (s).
        kept: the stream as a WAV file (``--keep-stream``), else None.
        carried: the spotter was never reset between passes (``--carry-state``): one stream of H hours.
    """

    hours_requested: float
    seconds: float
    threshold: float
    real_speech_files: int
    real_speech_seconds: float
    unknown_clips: int
    unknown_seconds: float
    noise_source: str
    reverb_method: str
    total: FalseAccepts
    real_speech: FalseAccepts
    per_keyword: dict[str, FalseAccepts]
    passes: tuple[NegativePass, ...]
    sweep: tuple[NegativeSweepPoint, ...]
    stats: dict[str, Any]
    wall_seconds: float
    kept: str | None = None
    notes: tuple[str, ...] = ()
    carried: bool = False
