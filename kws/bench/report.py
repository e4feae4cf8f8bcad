"""The bench report: frozen dataclasses, what ``bench.json`` is written from and read back into (torch-free).

``BenchReport.to_json()`` writes every figure (NaN and infinities as ``null``: strict JSON);
``BenchReport.from_json()`` reads it back, including reports written before the report was typed (the key
names are the same; a key added since, such as ``streaming.tolerance_s``, takes its default). The markdown
(:mod:`kws.bench.markdown`), the plots and ``scripts/model_card.py`` read the typed report only.

The project's targets and the published figures shown beside ours are data (``anchors.json``), read by
:func:`targets` and :func:`anchors`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from kws.bench.events import StreamComposition, StreamEvent
from kws.bench.negative_report import NegativeStream
from kws.bench.scoring import MATCH_TOLERANCE_SECONDS
from kws.bench.verification import VerifierReport

ANCHORS_FILE = "anchors.json"
"""The targets and published anchors, next to this module."""
MODEL_TORCH, MODEL_FP32, MODEL_INT8, MODEL_STREAM_INT8 = (
    "PyTorch",
    "ONNX fp32",
    "ONNX int8",
    "ONNX int8 streaming",
)
"""The models' names in the report (keys of ``accuracy`` and ``latency``), in its order."""


# ---------------------------------------------------------------------------------------------- machine


@dataclass(frozen=True)
class Machine:
    """The machine a bench ran on.

    Attributes:
        cores, usable_cores: CPU cores, and those this process may use (affinity).
        memory_bytes: total memory (None where unknown).
        load_average, load_average_end: 1, 5 and 15 min load at the start and at the end (None where unknown).
        versions: library versions (python, numpy, onnxruntime, kws, torch).
    """

    cpu: str
    cores: int | None
    usable_cores: int | None
    memory_bytes: int | None
    platform: str
    machine: str
    load_average: tuple[float, ...] | None
    versions: dict[str, str]
    load_average_end: tuple[float, ...] | None = None


# -------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class CheckpointInfo:
    """The benchmarked checkpoint: file size (with optimizer state) and float32 weight bytes.

    Attributes:
        evaluation: the checkpoint's own evaluation at the end of training (as ``kws train`` saved it).
    """

    path: str
    size_bytes: int
    weights_bytes: int
    labels: tuple[str, ...]
    evaluation: dict[str, Any] | None = None


@dataclass(frozen=True)
class ModelFileInfo:
    """One benchmarked ONNX file (size in bytes; quantization from its metadata)."""

    path: str
    size_bytes: int
    quantization: str


@dataclass(frozen=True)
class ModelsInfo:
    """Where the four ONNX files came from, warnings about them, and each file (keys: ``clip``, ``stream``,
    ``clip_int8``, ``stream_int8``)."""

    origin: str
    notes: tuple[str, ...]
    files: dict[str, ModelFileInfo]


@dataclass(frozen=True)
class DataInfo:
    """The test data: folders, split, split mode and how it was chosen, clips and speakers.

    Attributes:
        per_class: clips per class of the split.
        skipped: unreadable files skipped.
        training_speaker_overlap: test speakers also in the training split (None: not checkable here).
    """

    roots: tuple[str, ...]
    split: str
    split_mode: str
    split_mode_how: str
    clips: int
    speakers: int
    per_class: dict[str, int]
    skipped: int
    training_speaker_overlap: int | None


# ------------------------------------------------------------------------------------ accuracy, speed


@dataclass(frozen=True)
class ClassFigures:
    """Precision, recall, F1 and support of one class, with 95% Wilson intervals (``[low, high]``)."""

    precision: float
    precision_ci95: tuple[float, float]
    recall: float
    recall_ci95: tuple[float, float]
    f1: float
    support: int


@dataclass(frozen=True)
class AccuracyFigures:
    """Accuracy of one model on the test clips (from :func:`kws.train.evaluate.classification_report`).

    Attributes:
        confusion_matrix: ``[true][predicted]`` clip counts.
        agreement_with_pytorch: share of clips whose top-1 class is the PyTorch model's.
    """

    accuracy: float
    accuracy_ci95: tuple[float, float]
    clips: int
    per_class: dict[str, ClassFigures]
    agreement_with_pytorch: float
    confusion_matrix: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Latency:
    """Single-clip wall time of one model over ``runs`` calls (ms)."""

    median_ms: float
    p95_ms: float
    runs: int


# ------------------------------------------------------------------------------------------ streaming


@dataclass(frozen=True)
class StreamInfo:
    """The stream: its composition, where it was kept (``--keep-stream``, else None) and its events."""

    composition: StreamComposition
    kept: str | None
    events: tuple[StreamEvent, ...]


@dataclass(frozen=True)
class KeywordFigures:
    """Detection figures of one keyword (latency in s; NaN/None without hits)."""

    events: int
    hits: int
    recall: float | None
    false_accepts: int
    latency_median_s: float | None


@dataclass(frozen=True)
class DetectionFigures:
    """Detection quality at one threshold (:meth:`kws.bench.scoring.DetectionScore.to_dict`): counts, rates
    per hour, hours and latencies (s); NaN (None in JSON) where undefined."""

    threshold: float | None
    keyword_events: int
    hits: int
    recall: float | None
    miss_rate: float | None
    false_accepts: int
    false_accepts_in_keyword_windows: int
    false_accepts_by_context: dict[str, int]
    fa_per_hour: float | None
    fa_per_hour_upper95: float | None
    fa_per_hour_stream: float | None
    fa_per_hour_nonkeyword: float | None
    stream_hours: float
    nonkeyword_hours: float
    latency_median_s: float | None
    latency_p90_s: float | None
    per_keyword: dict[str, KeywordFigures]

    @classmethod
    def from_score(cls, score: Any, **extra: Any) -> Any:
        """The figures of a :class:`~kws.bench.scoring.DetectionScore` (``extra``: the fields of a subclass)."""
        return _build(cls, {**score.to_dict(), **extra})


@dataclass(frozen=True)
class OperatingPoint(DetectionFigures):
    """The figures at the shipped defaults, with the latencies including the runtime's chunk buffering (s)."""

    latency_buffered_median_s: float | None = None
    latency_buffered_p90_s: float | None = None


@dataclass(frozen=True)
class Detection:
    """One detection of the live run (s from the stream start)."""

    time: float
    keyword: str
    confidence: float


@dataclass(frozen=True)
class Streaming:
    """The int8 streaming model over the stream.

    Attributes:
        config: the runtime's :class:`~kws.runtime.config.SpotterConfig` (as a dict) of the live run.
        stats: the runtime's StreamStats (``to_dict``) of the live run.
        replay_matches_live: the recorded score trace reproduces the live detections.
        sweep: the figures at every threshold of the sweep, ascending.
        tolerance_s: a detection up to this long after the word's end is a hit (s).
    """

    model: str
    quantization: str
    config: dict[str, Any]
    stats: dict[str, Any]
    default: OperatingPoint
    replay_matches_live: bool
    sweep: tuple[DetectionFigures, ...]
    detections: tuple[Detection, ...]
    tolerance_s: float = MATCH_TOLERANCE_SECONDS


# ---------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Targets:
    """The project's requirements: accuracy and recall (shares), false accepts per hour, median latency (s)."""

    accuracy: float
    recall: float
    fa_per_hour: float
    latency_s: float


@dataclass(frozen=True)
class Anchor:
    """A published figure, shown beside ours for orientation only (other data, other training sets)."""

    source: str
    data: str
    figure: str


@dataclass(frozen=True)
class BenchReport:
    """Every figure of one bench run (``bench.json``).

    Attributes:
        date: ISO 8601 with the time zone, to the second.
        command: the command line that reproduces the run (every option explicit).
        cwd: the name (only) of the folder it ran in.
        accuracy, latency: per model name (:mod:`kws.bench.accuracy`).
        timing_s: seconds per stage, and ``total``.
        negative_stream: ``--negative-hours`` (None without it: then bench.json has no such key).
        verifier: ``--verifier`` (None without it: then bench.json has no such key).
    """

    kws_version: str
    date: str
    command: str
    cwd: str
    machine: Machine
    checkpoint: CheckpointInfo
    models: ModelsInfo
    data: DataInfo
    accuracy: dict[str, AccuracyFigures]
    latency: dict[str, Latency]
    stream: StreamInfo
    streaming: Streaming
    targets: Targets
    anchors: tuple[Anchor, ...]
    timing_s: dict[str, float] = field(default_factory=dict)
    negative_stream: NegativeStream | None = None
    verifier: VerifierReport | None = None

    def to_json(self) -> str:
        """Strict JSON (NaN and infinities as null), one space of indent, the fields in declaration order
        (without ``negative_stream`` / ``verifier`` when there is none: such a report is what it was before the
        option)."""
        value = dataclasses.asdict(self)
        for name in ("negative_stream", "verifier"):
            if getattr(self, name) is None:
                del value[name]
        return json.dumps(_finite(value), indent=1)

    @classmethod
    def from_json(cls, text: str) -> BenchReport:
        """The report of a ``bench.json`` (also one written before a field was added: it takes its default).

        Raises:
            KeyError, TypeError, ValueError: not a bench report.
        """
        return _build(cls, json.loads(text))

    @classmethod
    def read(cls, path: str | Path) -> BenchReport:
        return cls.from_json(Path(path).read_text())


# --------------------------------------------------------------------------------------- targets, anchors


@cache
def _published() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath(ANCHORS_FILE).read_text(encoding="utf-8"))


def targets() -> Targets:
    """The project's requirements (issue 5), from ``anchors.json``."""
    return _build(Targets, _published()["targets"])


def anchors() -> tuple[Anchor, ...]:
    """Published figures (other data: orientation only), from ``anchors.json``."""
    return _build(tuple[Anchor, ...], _published()["anchors"])


# ----------------------------------------------------------------------------------------------- JSON


def _finite(value: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON); tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _build(kind: Any, value: Any) -> Any:
    """``value`` (parsed JSON) as ``kind``: dataclasses from dicts (a missing field takes its default),
    tuples from lists, ``X | None`` as ``X`` or None, dict values converted; anything else as it is."""
    if value is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _build(inner, value)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        fields = [f for f in dataclasses.fields(kind) if f.name in value]
        return kind(**{f.name: _build(hints[f.name], value[f.name]) for f in fields})
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v) for v in value)
        return tuple(_build(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        return {k: _build(args[1], v) for k, v in value.items()}
    return value


def write_output(path: Path, write: Callable[[Path], Any]) -> None:
    """Atomic write of an output file, readable as any new file (temporary files are private)."""
    from kws.io import atomic_write, make_readable

    atomic_write(path, lambda tmp: (write(tmp), make_readable(tmp)))
