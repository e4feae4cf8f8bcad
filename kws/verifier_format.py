"""The second-stage verifier's ONNX file format (torch-free: json only), as :mod:`kws.format` is the detector's.

A verifier file is one ONNX graph ``audio [1, samples]`` (float32 in [-1, 1], any length of at least
:attr:`VerifierMetadata.min_samples`, or exactly ``input_samples`` when that is not 0) -> ``scores [1, n_labels]``
(class probabilities). It is written by ``kws teacher --export-verifier`` (:mod:`kws.teacher.verifier_export`)
and read by :mod:`kws.runtime.verifier`: the teacher (openWakeWord's port of Google's ``speech_embedding``,
melspectrogram + embedding, and the trained head) composed into one graph, the padding and the 80 ms windowing
inside it. Its ``metadata_props`` hold the entries below (string values).

How the runtime uses it: for a detection at stream time ``t`` it takes the ``window_ms`` of audio that end at
``t + window_end_ms`` and accepts the detection when the detected keyword's probability reaches ``threshold``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kws.format import (
    META_FORMAT,
    META_FORMAT_VERSION,
    META_KIND,
    META_LABELS,
    META_SAMPLE_RATE,
    META_VERSION,
    UNKNOWN,
    ModelError,
    _informational,
    _integer,
    _labels,
    _short,
)

KIND_VERIFIER = "verifier"
"""``kws.kind`` of a verifier file."""
META_WINDOW_MS = "kws.verifier.window_ms"  # audio per check (ms)
META_WINDOW_END_MS = "kws.verifier.window_end_ms"  # where the window ends, relative to the detection time (ms)
META_THRESHOLD = "kws.verifier.threshold"  # probability of the detected keyword needed to accept it
META_PAD_MS = "kws.verifier.pad_ms"  # zeros the graph adds on each side (informational: done in the graph)
META_MIN_SAMPLES = "kws.verifier.min_samples"  # shortest input the graph accepts
META_INPUT_SAMPLES = "kws.verifier.input_samples"  # 0: any length >= min_samples; else exactly this many
META_TEACHER = "kws.verifier.teacher"  # JSON: the teacher's config, labels, reports (informational)
META_ATTRIBUTION = "kws.verifier.attribution"  # text: where the pretrained parts come from and their licence
VERIFIER_REQUIRED: tuple[str, ...] = (
    META_FORMAT, META_KIND, META_LABELS, META_SAMPLE_RATE, META_WINDOW_MS, META_WINDOW_END_MS, META_THRESHOLD,
    META_MIN_SAMPLES,
)  # fmt: skip

ATTRIBUTION = (
    "Google speech_embedding (https://tfhub.dev/google/speech_embedding/1), ONNX port by openWakeWord "
    "(melspectrogram.onnx, embedding_model.onnx), Apache-2.0; head trained by kws teacher"
)
MAX_WINDOW_MS = 10_000.0
"""A check reads at most 10 s of audio."""
MAX_WINDOW_END_MS = 2_000.0
"""The window ends at most 2 s before or after the detection."""


@dataclass(frozen=True)
class VerifierMetadata:
    """Everything a verifier file says about itself.

    Attributes:
        labels: the output classes, in score order.
        sample_rate: audio rate of the input (Hz).
        window_ms: audio per check (ms).
        window_end_ms: end of that window relative to the detection time (ms; > 0: after it, which delays the
            detection by as much).
        threshold: probability of the detected keyword needed to accept a detection, in [0, 1].
        min_samples: shortest input the graph accepts (samples).
        input_samples: 0 (any length from ``min_samples``) or the only length the graph accepts.
        pad_ms: zeros the graph adds before and after the input (informational).
        teacher: the teacher's config, labels and reports (informational).
        attribution: origin and licence of the pretrained parts.
        version: kws version that exported it.
    """

    labels: tuple[str, ...]
    sample_rate: int
    window_ms: float
    window_end_ms: float
    threshold: float
    min_samples: int
    input_samples: int = 0
    pad_ms: float = 0.0
    teacher: Mapping[str, Any] = field(default_factory=dict)
    attribution: str = ATTRIBUTION
    version: str = UNKNOWN

    @property
    def window_samples(self) -> int:
        return round(self.window_ms * self.sample_rate / 1000)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (the writer)."""
        return {
            META_FORMAT: META_FORMAT_VERSION,
            META_KIND: KIND_VERIFIER,
            META_LABELS: json.dumps(list(self.labels)),
            META_SAMPLE_RATE: str(self.sample_rate),
            META_WINDOW_MS: repr(float(self.window_ms)),
            META_WINDOW_END_MS: repr(float(self.window_end_ms)),
            META_THRESHOLD: repr(float(self.threshold)),
            META_MIN_SAMPLES: str(self.min_samples),
            META_INPUT_SAMPLES: str(self.input_samples),
            META_PAD_MS: repr(float(self.pad_ms)),
            META_TEACHER: json.dumps(dict(self.teacher), sort_keys=True, default=str),
            META_ATTRIBUTION: self.attribution,
            META_VERSION: self.version,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str | Path = "verifier") -> VerifierMetadata:
        """Parse and check ``metadata_props`` (the parser).

        Raises:
            ModelError: one line naming the missing or invalid entry (a detector model passed as a verifier
                says so).
        """
        from kws.runtime.config import MAX_INPUT_RATE, MIN_INPUT_RATE

        meta = dict(props)
        if meta.get(META_KIND) not in (None, KIND_VERIFIER):
            raise ModelError(f"{source} is a kws {_short(meta[META_KIND])} model, not a verifier "
                             "(make one with `kws teacher --export-verifier`)")  # fmt: skip
        problem = ""
        if missing := [k for k in VERIFIER_REQUIRED if k not in meta]:
            problem = f" is not a kws verifier: metadata {', '.join(missing)} missing"
        elif (version := meta[META_FORMAT]) != META_FORMAT_VERSION:
            problem = (
                f": metadata format {_short(version)} is not supported (this runtime reads {META_FORMAT_VERSION!r})"
            )
        if problem:
            raise ModelError(f"{source}{problem} (make one with `kws teacher --export-verifier`)")
        rate = _integer(source, meta, META_SAMPLE_RATE, MIN_INPUT_RATE, MAX_INPUT_RATE)
        window = _float(source, meta, META_WINDOW_MS, 1.0, MAX_WINDOW_MS)
        limit = round(MAX_WINDOW_MS * rate / 1000)
        min_samples = _integer(source, meta, META_MIN_SAMPLES, 1, limit)
        input_samples = _integer(source, meta, META_INPUT_SAMPLES, 0, limit, 0)
        result = cls(
            labels=_labels(source, meta[META_LABELS]),
            sample_rate=rate,
            window_ms=window,
            window_end_ms=_float(source, meta, META_WINDOW_END_MS, -MAX_WINDOW_END_MS, MAX_WINDOW_END_MS),
            threshold=_float(source, meta, META_THRESHOLD, 0.0, 1.0),
            min_samples=min_samples,
            input_samples=input_samples,
            pad_ms=_float(source, meta, META_PAD_MS, 0.0, MAX_WINDOW_MS) if META_PAD_MS in meta else 0.0,
            teacher=_informational(meta.get(META_TEACHER)),
            attribution=meta.get(META_ATTRIBUTION, ""),
            version=meta.get(META_VERSION, UNKNOWN),
        )
        check_window(result, result.window_samples, source)
        return result


def check_window(meta: VerifierMetadata, samples: int, source: str | Path = "verifier") -> None:
    """A window of ``samples`` fits the graph.

    Raises:
        ModelError: shorter than ``min_samples`` or, for a fixed-length graph, not ``input_samples``.
    """
    if samples < meta.min_samples or (meta.input_samples and samples != meta.input_samples):
        need = f"exactly {meta.input_samples}" if meta.input_samples else f"at least {meta.min_samples}"
        raise ModelError(f"{source}: a verifier window of {samples} samples does not fit the graph "
                         f"(it takes {need} samples)")  # fmt: skip


def _float(source: str | Path, meta: Mapping[str, str], key: str, low: float, high: float) -> float:
    """Metadata ``key`` as a finite number in ``[low, high]``."""
    raw = meta.get(key)
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ModelError(f"{source}: metadata {key} must be a number, got {_short(raw)}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ModelError(f"{source}: metadata {key}={value:g} is out of range [{low:g}, {high:g}]")
    return value
