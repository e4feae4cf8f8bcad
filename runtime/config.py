"""Named defaults and the frozen configuration of the streaming keyword spotter (torch-free).

Times are given in milliseconds and converted to whole model hops (frames) once the model is known, so the
same configuration works for any hop size. The state re-synchronisation scheme (``lanes``,
``reset_period_ms``) is described in :mod:`kws.runtime.engine`.

Where the settings come from (:func:`spotter_config`): the built-in defaults below, replaced by what the model's
metadata says (``kws.thresholds``, ``kws.reset_period_ms``, ``kws.patience``, written by ``kws calibrate``),
replaced by what the caller sets explicitly (``kws listen`` options, keyword arguments).
"""

from __future__ import annotations

import math
import numbers
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kws.constants import SILENCE_LABEL, UNKNOWN_LABEL
from kws.errors import ConfigError

PRETRAINED_MODEL_NAME = "kws.stream.int8.onnx"
"""File name of the model shipped inside the package (``kws/pretrained/``), the default of ``kws listen``."""

NON_KEYWORD_LABELS: tuple[str, ...] = (SILENCE_LABEL, UNKNOWN_LABEL)
"""Labels that are scored by the model but never reported as detections."""

DEFAULT_THREADS = 1
"""onnxruntime intra-op threads: one core is plenty for a streaming model and keeps other cores free."""

DEFAULT_CHUNK_MS = 200.0
"""Audio per model call (rounded to whole hops: 10 hops of 20 ms). Larger chunks amortise the per-call
overhead; the detection latency grows by the same amount (``kws bench``, shipped model: median 124 ms after the
end of the word at 200 ms, 76 ms at 100 ms)."""

DEFAULT_LANES = 2
"""Independent LSTM states run over the same audio, reset in turn (staggered re-synchronisation)."""

DEFAULT_RESET_PERIOD_MS = 2000.0
"""Each lane is reset to the zero state this often. With 2 lanes the lane that is read has between half a
period and a whole period of context: 1-2 s, enough for any 1 s word."""

DEFAULT_SMOOTHING_MS = 200.0
"""Moving-average window over the per-frame posteriors (TensorFlow recognize_commands: average window)."""

DEFAULT_THRESHOLD = 0.7
"""Smoothed posterior a keyword must reach to be reported (per-keyword values override it)."""

DEFAULT_REFRACTORY_MS = 1000.0
"""After a detection no keyword is reported for this long (recognize_commands: suppression)."""

DEFAULT_PATIENCE = 1
"""Consecutive frames a keyword's smoothed posterior must stay at or over its threshold before it is reported
(1: the first frame over it)."""

# Ranges of the settings. The upper bounds are far beyond any useful value; they keep an absurd option (a typo
# such as --smoothing-ms 1e12) from becoming a huge allocation, a hang or an overflow deep in the engine.
MAX_CHUNK_MS = 2_000.0
"""Audio per model call: beyond 2 s the latency is useless for live detection and saves no CPU."""
MAX_SMOOTHING_MS = 10_000.0
MAX_REFRACTORY_MS = 3_600_000.0
MAX_RESET_PERIOD_MS = 3_600_000.0
MAX_LANES = 16
MAX_PATIENCE = 1000
"""Frames of patience (20 s at 20 ms hops)."""
MAX_THREADS = 64
"""onnxruntime intra-op threads: a tiny streaming model gains nothing beyond a few."""

MIN_INPUT_RATE = 4_000
MAX_INPUT_RATE = 384_000
"""Sample rates accepted for input audio (files, raw PCM on stdin) and models (Hz)."""
MAX_INPUT_CHANNELS = 1024
"""Interleaved channels accepted for raw PCM on stdin (libsndfile's own limit for files)."""

RANGES: dict[str, tuple[float, float, bool]] = {
    "chunk_ms": (0.0, MAX_CHUNK_MS, True),
    "smoothing_ms": (0.0, MAX_SMOOTHING_MS, False),
    "refractory_ms": (0.0, MAX_REFRACTORY_MS, False),
    "reset_period_ms": (0.0, MAX_RESET_PERIOD_MS, False),
    "lanes": (1, MAX_LANES, False),
    "patience": (1, MAX_PATIENCE, False),
}
"""(low, high, low excluded) of each numeric :class:`SpotterConfig` field; thresholds are in (0, 1]."""


@dataclass(frozen=True)
class SpotterConfig:
    """How audio is fed to the streaming model and how its per-frame posteriors become detections.

    Attributes:
        chunk_ms: audio per model call (rounded to whole hops, at least one).
        lanes: number of LSTM states run side by side (1: a single state, never reset if
            ``reset_period_ms`` is 0).
        reset_period_ms: each lane is reset to zero state once per period; 0 disables resets (1 lane only).
        smoothing_ms: moving-average window of the posteriors (at least one frame).
        threshold: default detection threshold on the smoothed posterior, in (0, 1].
        thresholds: per-keyword thresholds overriding ``threshold``; a mapping or ``(keyword, value)`` pairs,
            stored as a sorted tuple of pairs.
        refractory_ms: dead time after a detection during which nothing is reported.
        patience: consecutive frames at or over its threshold a keyword needs before it is reported.
    """

    chunk_ms: float = DEFAULT_CHUNK_MS
    lanes: int = DEFAULT_LANES
    reset_period_ms: float = DEFAULT_RESET_PERIOD_MS
    smoothing_ms: float = DEFAULT_SMOOTHING_MS
    threshold: float = DEFAULT_THRESHOLD
    thresholds: tuple[tuple[str, float], ...] = field(default=())
    refractory_ms: float = DEFAULT_REFRACTORY_MS
    patience: int = DEFAULT_PATIENCE

    def __post_init__(self) -> None:
        pairs = self.thresholds.items() if isinstance(self.thresholds, Mapping) else self.thresholds
        try:
            thresholds = tuple(sorted((str(k), float(v)) for k, v in pairs))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"thresholds must be (keyword, number) pairs: {exc}") from None
        object.__setattr__(self, "thresholds", thresholds)
        for name in ("lanes", "patience"):
            _check(is_whole(getattr(self, name)), f"{name} must be a whole number, got {getattr(self, name)!r}")
        for name, (low, high, low_excluded) in RANGES.items():
            check_range(name, getattr(self, name), low, high, low_excluded=low_excluded)
        _check(
            self.reset_period_ms > 0 or self.lanes == 1,
            "more than one lane needs a reset period > 0 (lanes only help with periodic resets)",
        )
        for name, value in (("default", self.threshold), *self.thresholds):
            check_range(f"threshold for {name}", value, 0, 1, low_excluded=True)
        names = [k for k, _ in self.thresholds]
        _check(len(set(names)) == len(names), f"a keyword has two thresholds: {names}")

    def threshold_for(self, keyword: str) -> float:
        """The detection threshold of ``keyword``."""
        return dict(self.thresholds).get(keyword, self.threshold)


class ModelSettings(Protocol):
    """What a model's metadata says about running it (:class:`kws.runtime.model.ModelInfo` has these)."""

    thresholds: tuple[tuple[str, float], ...]
    reset_period_ms: float | None
    patience: int | None


def spotter_config(model: ModelSettings | None = None, **explicit: Any) -> SpotterConfig:
    """The settings of a run: the built-in defaults, then the model's metadata, then ``explicit``.

    From the model: its per-keyword thresholds, its reset period (with one lane for 0, else
    :data:`DEFAULT_LANES`) and its patience. Explicit settings (:class:`SpotterConfig` fields) win: an explicit
    default ``threshold`` replaces the model's thresholds (they are all per keyword), explicit ``thresholds``
    replace the model's for those keywords only, and explicit ``lanes`` > 1 on a model calibrated with one lane
    run with :data:`DEFAULT_RESET_PERIOD_MS` unless a reset period is given too. A model without these entries
    (``model`` None) gives ``SpotterConfig(**explicit)``.

    Raises:
        ConfigError: as :class:`SpotterConfig`.
    """
    values: dict[str, Any] = {}
    if model is not None:
        if model.reset_period_ms is not None:
            values["reset_period_ms"] = model.reset_period_ms
            values["lanes"] = 1 if model.reset_period_ms == 0 else DEFAULT_LANES
            lanes = explicit.get("lanes")
            if model.reset_period_ms == 0 and is_whole(lanes) and lanes > 1:
                values["reset_period_ms"] = DEFAULT_RESET_PERIOD_MS
        if model.patience is not None:
            values["patience"] = model.patience
        if model.thresholds and "threshold" not in explicit:
            values["thresholds"] = dict(model.thresholds)
    given = SpotterConfig(thresholds=explicit.get("thresholds", ())).thresholds  # checked and normalised
    thresholds = {**values.get("thresholds", {}), **dict(given)}
    return SpotterConfig(**{**values, **explicit, "thresholds": thresholds})


def frames_for(ms: float, hop_ms: float, minimum: int = 0) -> int:
    """A duration in ms as a whole number of hops (rounded, at least ``minimum``)."""
    return max(minimum, round(ms / hop_ms))


def lane_schedule(lanes: int, period_frames: int, chunk_frames: int) -> tuple[int, tuple[int, ...]]:
    """Reset period and per-lane first-reset offsets, all multiples of ``chunk_frames`` (frames).

    Resets only happen at chunk boundaries, so the period is rounded up to a whole number of chunks and the
    lanes are spread as evenly as the chunk grid allows (lane ``i`` starts ``i * period / lanes`` later).

    Raises:
        ConfigError: the period is too short to give every lane its own offset.
    """
    period = chunk_frames * math.ceil(period_frames / chunk_frames)
    offsets = tuple(chunk_frames * round(i * period / (lanes * chunk_frames)) for i in range(lanes))
    _check(period > 0 and len(set(offsets)) == lanes,
           f"a reset period of {period_frames} frames is too short for {lanes} lanes and chunks of "
           f"{chunk_frames} frames")  # fmt: skip
    return period, offsets


def min_read_context(period: int, offsets: Iterable[int], chunk_frames: int) -> int:
    """Fewest frames of context the read lane (the one reset longest ago) ever has, once every lane has
    been reset at least once (before that, every lane has seen the whole stream)."""
    offsets = tuple(offsets)
    if len(offsets) == 1:
        return 1
    worst = period
    for start in range(0, period, chunk_frames):
        ages = [(start - o) % period for o in offsets]
        worst = min(worst, max(ages) + 1)  # +1: the chunk's first frame is already in the lane's context
    return worst


def parse_thresholds(values: Iterable[str]) -> tuple[float | None, dict[str, float]]:
    """Parse ``--threshold`` values: ``0.8`` (the default) or ``yes=0.9`` (one keyword).

    Returns:
        (default threshold or None if not given, per-keyword thresholds).

    Raises:
        ConfigError: a value is not a number.
    """
    default: float | None = None
    per_keyword: dict[str, float] = {}
    for raw in values:
        name, sep, number = raw.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise ConfigError(f"--threshold {raw!r}: expected VALUE or KEYWORD=VALUE (e.g. 0.8 or yes=0.9)") from None
        if sep:
            _check(bool(name), f"--threshold {raw!r}: missing keyword before '='")
            per_keyword[name] = value
        else:
            default = value
    return default, per_keyword


def check_range(name: str, value: object, low: float, high: float, *, low_excluded: bool = False) -> None:
    """``value`` is a finite number in ``[low, high]`` (``(low, high]`` with ``low_excluded``).

    Raises:
        ConfigError: naming ``name``, the range and the value (nan and inf are always out of range).
    """
    number = _number(name, value)
    inside = (low < number if low_excluded else low <= number) and number <= high
    if not inside:
        bracket = "(" if low_excluded else "["
        raise ConfigError(f"{name} must be in {bracket}{_show(low)}, {_show(high)}], got {value!r}")


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def check_threads(threads: object, name: str = "threads") -> None:
    """``threads`` (onnxruntime intra-op threads) is a whole number in ``1..MAX_THREADS``.

    Raises:
        ConfigError: naming ``name``.
    """
    if not is_whole(threads):
        raise ConfigError(f"{name} must be a whole number, got {threads!r}")
    check_range(name, threads, 1, MAX_THREADS)


def is_whole(value: object) -> bool:
    """``value`` is an integer (``int``, numpy integers), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


def regular_file(path: str | Path, what: str, error: type[Exception] = ConfigError, *,
                 pipe_hint: str = "") -> Path:  # fmt: skip
    """``path`` as a :class:`Path` if it is a readable regular file (or a link to one).

    Named pipes are refused without being opened (opening one blocks until a writer appears).

    Args:
        path: the file.
        what: what it should be, for the message (``"audio file"``, ``"model file"``).
        error: the exception type to raise.
        pipe_hint: appended to the message for a named pipe (what to do instead).

    Raises:
        error: it does not exist, is a folder, a named pipe or another non-regular file, or cannot be read.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:  # permission denied on a parent folder, a loop of links, a name too long...
        raise error(f"{what} {path} cannot be accessed: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} {path} is a folder, not a file")
    if stat.S_ISFIFO(mode):
        raise error(f"{what} {path} is a named pipe, not a regular file{pipe_hint}")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file (a device or a socket?)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    return path


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
