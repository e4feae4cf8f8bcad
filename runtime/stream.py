"""Running a source through a spotter, with statistics; the offline API shares this exact path.

``kws listen``, :func:`detect_file`, :func:`detect_audio` and :func:`stream_scores` all use
:class:`StreamRunner`: source chunks -> :meth:`KeywordSpotter.process` -> detections, then
:meth:`KeywordSpotter.flush` at the end of the input.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kws.runtime.config import DEFAULT_THREADS, SpotterConfig, spotter_config
from kws.runtime.detect import Detection, KeywordSpotter, ScoreTrace
from kws.runtime.files import FileSource
from kws.runtime.model import StreamingModel, load_model
from kws.runtime.sources import ArraySource, AudioSource

MS_PER_S = 1000.0


@dataclass
class StreamStats:
    """What a run cost.

    Attributes:
        audio_seconds: audio processed (s).
        wall_seconds: wall time of the run (s), including waiting for live audio.
        cpu_seconds: CPU time of the whole process during the run (``time.process_time``, all threads:
            reading, resampling, inference).
        model_seconds: wall time inside onnxruntime (s).
        model_calls: onnxruntime calls.
        overflows: input overflows (audio lost before the engine).
        detections: keywords reported.
        interrupted: stopped by Ctrl-C / SIGTERM before the end of the input.
    """

    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    model_seconds: float = 0.0
    model_calls: int = 0
    overflows: int = 0
    detections: int = 0
    interrupted: bool = False

    @property
    def real_time_factor(self) -> float:
        """Wall time per audio second (< 1: faster than real time; about 1 for live input)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def cpu_ms_per_audio_second(self) -> float:
        return MS_PER_S * self.cpu_seconds / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def model_ms_per_call(self) -> float:
        return MS_PER_S * self.model_seconds / self.model_calls if self.model_calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "real_time_factor": self.real_time_factor,
                "cpu_ms_per_audio_second": self.cpu_ms_per_audio_second,
                "model_ms_per_call": self.model_ms_per_call}  # fmt: skip

    def summary(self) -> str:
        """One line for the end of ``kws listen``."""
        return (
            f"{self.audio_seconds:.1f} s of audio, real-time factor {self.real_time_factor:.3f}, "
            f"{self.cpu_ms_per_audio_second:.2f} ms CPU per audio second "
            f"({self.model_calls} model calls, {self.model_ms_per_call:.3f} ms each), "
            f"{self.overflows} input overflow{'s' if self.overflows != 1 else ''}, "
            f"{self.detections} detection{'s' if self.detections != 1 else ''}"
            + (" (interrupted)" if self.interrupted else "")
        )


class StreamRunner:
    """Feeds every chunk of ``source`` to ``spotter`` and calls ``on_detection`` for each detection.

    ``stats`` is kept up to date even when :meth:`run` is left by an exception (Ctrl-C, a lost device), so
    the caller can always print a summary. The source is closed when the run ends.
    """

    def __init__(
        self, spotter: KeywordSpotter, source: AudioSource,
        on_detection: Callable[[Detection], None] | None = None,
    ) -> None:  # fmt: skip
        if source.sample_rate != spotter.sample_rate:
            raise ValueError(f"source gives {source.sample_rate} Hz, model needs {spotter.sample_rate} Hz")
        self.spotter = spotter
        self.source = source
        self.on_detection = on_detection
        self.stats = StreamStats()

    def run(self) -> StreamStats:
        """Process the whole source (until it ends or an exception); return the statistics."""
        spotter, emit = self.spotter, self.on_detection
        wall0, cpu0 = time.perf_counter(), time.process_time()
        engine = spotter.engine
        samples0, calls0, model0 = engine.samples, engine.model_calls, engine.model_seconds
        detections0 = spotter.detections
        try:
            for chunk in self.source:
                for detection in spotter.process(chunk):
                    if emit is not None:
                        emit(detection)
            for detection in spotter.flush():
                if emit is not None:
                    emit(detection)
        except KeyboardInterrupt:
            self.stats.interrupted = True
            raise
        finally:
            self.source.close()
            self.stats.audio_seconds = (engine.samples - samples0) / spotter.sample_rate
            self.stats.wall_seconds = time.perf_counter() - wall0
            self.stats.cpu_seconds = time.process_time() - cpu0
            self.stats.model_seconds = engine.model_seconds - model0
            self.stats.model_calls = engine.model_calls - calls0
            self.stats.overflows = self.source.overflows
            self.stats.detections = spotter.detections - detections0
        return self.stats


def _spotter(model: StreamingModel | str | Path | None, config: SpotterConfig | None, threads: int,
             options: dict[str, Any], record: bool = False) -> KeywordSpotter:  # fmt: skip
    if config is not None and options:
        raise TypeError("pass either config or keyword options, not both")
    model = load_model(model, threads)
    config = config if config is not None else spotter_config(model.info, **options)
    return KeywordSpotter(model, config, threads=threads, record_scores=record)


def _source(spotter: KeywordSpotter, audio: str | Path | np.ndarray, sample_rate: int | None,
            realtime: bool = False) -> AudioSource:  # fmt: skip
    chunk_seconds = spotter.engine.chunk_frames * spotter.info.hop_samples / spotter.sample_rate
    if isinstance(audio, np.ndarray):
        rate = sample_rate if sample_rate is not None else spotter.sample_rate
        return ArraySource(audio, rate, spotter.sample_rate, chunk_seconds)
    return FileSource(audio, spotter.sample_rate, chunk_seconds, realtime=realtime)


def detect_file(
    model: StreamingModel | str | Path | None, path: str | Path, *, config: SpotterConfig | None = None,
    realtime: bool = False, threads: int = DEFAULT_THREADS, **options: Any,
) -> tuple[list[Detection], StreamStats]:  # fmt: skip
    """Detections in an audio file, through exactly the path of ``kws listen --input FILE``.

    Args:
        model: streaming model (loaded, a path, or None for the shipped model).
        path: audio file (any rate, channels, bit depth).
        config: settings, used as they are; or give :class:`SpotterConfig` fields as keyword ``options``
            (e.g. ``threshold=0.8, thresholds={"yes": 0.9}, lanes=2``) over the model's own settings
            (:func:`kws.runtime.config.spotter_config`).
        realtime: pace the file at real-time speed.

    Raises:
        ModelError, AudioError, ConfigError.
    """
    spotter = _spotter(model, config, threads, options)
    found: list[Detection] = []
    stats = StreamRunner(spotter, _source(spotter, path, None, realtime), found.append).run()
    return found, stats


def detect_audio(
    model: StreamingModel | str | Path | None, audio: np.ndarray, sample_rate: int | None = None, *,
    config: SpotterConfig | None = None, threads: int = DEFAULT_THREADS, **options: Any,
) -> tuple[list[Detection], StreamStats]:  # fmt: skip
    """As :func:`detect_file` for an in-memory signal (``[n]`` or ``[n, channels]``, int16 or float, at
    ``sample_rate``, default the model rate)."""
    spotter = _spotter(model, config, threads, options)
    found: list[Detection] = []
    stats = StreamRunner(spotter, _source(spotter, audio, sample_rate), found.append).run()
    return found, stats


def stream_scores(
    model: StreamingModel | str | Path | None, audio: str | Path | np.ndarray, sample_rate: int | None = None,
    *, config: SpotterConfig | None = None, threads: int = DEFAULT_THREADS, **options: Any,
) -> ScoreTrace:  # fmt: skip
    """Per-frame posteriors (raw and smoothed) and times of a file or signal, through the live path.

    Sweep thresholds / refractory / smoothing over the result with
    :func:`kws.runtime.detect.detections_from_scores` without running the model again.
    """
    spotter = _spotter(model, config, threads, options, record=True)
    StreamRunner(spotter, _source(spotter, audio, sample_rate)).run()
    return spotter.trace()
