"""What an export is asked to do (:class:`ExportOptions`) and the files it makes (:class:`ExportPaths`).

Shared by :func:`kws.export.pipeline.export_files` (write the four files) and
:func:`kws.export.pipeline.export_checkpoint` (write them, check them, choose the int8 variant).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kws.config import RunConfig
from kws.export.onnx_export import ExportError
from kws.format import QUANT_DYNAMIC, QUANT_NONE, QUANT_STATIC

DEFAULT_NAME = "kws"
QUANT_AUTO, QUANT_BOTH = "auto", "both"
QUANT_STATIC_CHOICE = "static"
"""``--quantization static`` (the files it makes say :data:`kws.export.quantize.QUANT_STATIC`)."""
QUANTIZATION_CHOICES: tuple[str, ...] = (QUANT_AUTO, QUANT_DYNAMIC, QUANT_STATIC_CHOICE, QUANT_BOTH, QUANT_NONE)

CALIBRATION_CLIPS = 200
"""Default number of real clips calibrating the static quantization (spread over the classes)."""

Roots = str | Path | Sequence[str | Path] | None
"""One Speech Commands folder, several, or none."""


def as_roots(value: Roots) -> tuple[Path, ...]:
    """``--data``/``--calibration`` as a tuple of folders (one folder, several, or none)."""
    if value is None:
        return ()
    if isinstance(value, (str, Path)):
        value = [value]
    return tuple(Path(v).expanduser() for v in value)


@dataclass(frozen=True)
class ExportOptions:
    """Every knob of an export (the options of ``kws export``), checked when made.

    Attributes:
        name: file stem: ``NAME.onnx``, ``NAME.stream.onnx``, ``NAME.int8.onnx``, ``NAME.stream.int8.onnx``.
        quantization: ``auto`` (both when ``calibration`` is given, else dynamic), ``dynamic``, ``static``,
            ``both`` (make both, ship the better one) or ``none`` (float files only).
        calibration: Speech Commands folder(s) whose training clips calibrate the static quantization (and
            serve as real parity clips when ``data`` is not given). One path, several, or none; kept as a tuple.
        calibration_clips: calibration clips, spread over the classes.
        data: Speech Commands folder(s) whose ``split`` clips measure accuracy (PyTorch, fp32, int8).
        split: ``train``, ``validation``, ``test`` or ``all``: the clips of ``data`` that measure accuracy.
        split_mode: how ``data`` and ``calibration`` are split: ``auto`` is the rule of the checkpoint's
            training; a mode that contradicts it is refused (:func:`kws.train.evaluation_data.resolve_split_mode`).
        eval_clips: at most this many clips of ``data``, spread over the classes (0: the whole split).
        threads: intra-op threads for the latency measurements.
        timing: measure latencies (the tests turn this off).
        per_channel: dynamic quantization with one weight scale per LSTM gate row (a little closer to float,
            ~4% larger file) instead of one per matrix.

    Raises:
        ExportError: an unknown quantization, static without calibration, a bad count or file stem.
    """

    name: str = DEFAULT_NAME
    quantization: str = QUANT_AUTO
    calibration: tuple[Path, ...] = ()
    calibration_clips: int = CALIBRATION_CLIPS
    data: tuple[Path, ...] = ()
    split: str = "test"
    split_mode: str = "auto"
    eval_clips: int = 0
    threads: int = 1
    timing: bool = True
    per_channel: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "calibration", as_roots(self.calibration))
        object.__setattr__(self, "data", as_roots(self.data))
        if self.quantization not in QUANTIZATION_CHOICES:
            raise ExportError(
                f"unknown quantization {self.quantization!r} (choose from {', '.join(QUANTIZATION_CHOICES)})"
            )
        if self.quantization == QUANT_STATIC_CHOICE and not self.calibration:
            raise ExportError("static quantization needs calibration clips: add --calibration DATA")
        if self.quantization == QUANT_BOTH and not self.calibration:
            raise ExportError("--quantization both makes a static variant, which needs --calibration DATA")
        if self.threads < 1 or self.calibration_clips < 1 or self.eval_clips < 0:
            raise ExportError("need threads >= 1, calibration clips >= 1 and eval clips >= 0")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ExportError(f"invalid file name stem {self.name!r}")

    @property
    def variants(self) -> tuple[str, ...]:
        """The int8 variants the checked export makes (``auto``: both with calibration clips, else dynamic)."""
        quantization = self.quantization
        if quantization == QUANT_AUTO:
            quantization = QUANT_BOTH if self.calibration else QUANT_DYNAMIC
        return {
            QUANT_BOTH: (QUANT_DYNAMIC, QUANT_STATIC),
            QUANT_DYNAMIC: (QUANT_DYNAMIC,),
            QUANT_STATIC_CHOICE: (QUANT_STATIC,),
            QUANT_NONE: (),
        }[quantization]

    @property
    def files_variant(self) -> str | None:
        """The one int8 variant :func:`kws.export.pipeline.export_files` makes (nothing measured, nothing to
        choose): static QDQ only when asked for by name, none for ``none``, else dynamic."""
        if self.quantization == QUANT_NONE:
            return None
        return QUANT_STATIC if self.quantization == QUANT_STATIC_CHOICE else QUANT_DYNAMIC


@dataclass(frozen=True)
class ExportPaths:
    """The four files of an export (``NAME.onnx``, ``NAME.stream.onnx``, ``NAME.int8.onnx``, ...)."""

    clip: Path
    stream: Path
    clip_int8: Path
    stream_int8: Path

    @classmethod
    def under(cls, folder: Path, name: str) -> ExportPaths:
        return cls(
            folder / f"{name}.onnx",
            folder / f"{name}.stream.onnx",
            folder / f"{name}.int8.onnx",
            folder / f"{name}.stream.int8.onnx",
        )

    def all(self) -> tuple[Path, Path, Path, Path]:
        """The four paths, in the order clip, stream, clip int8, stream int8."""
        return self.clip, self.stream, self.clip_int8, self.stream_int8

    def existing(self) -> list[Path]:
        return [p for p in self.all() if p.exists()]


@dataclass(frozen=True)
class Source:
    """A checkpoint, loaded and known to be exportable (:func:`kws.export.files.open_checkpoint`).

    Attributes:
        model: the :class:`kws.model.network.KWSModel`, in eval mode.
        labels: its labels, in score order.
        payload: the whole checkpoint.
        config: its run configuration.
    """

    model: Any
    labels: list[str]
    payload: dict[str, Any]
    config: RunConfig

    @property
    def evaluation(self) -> Any:
        """The evaluation the training recorded (copied into the models' metadata), or None."""
        return self.payload.get("evaluation")

    @property
    def seed(self) -> int:
        """The seed the checkpoint's training split its data with (also the seed choosing subsets of clips)."""
        return self.config.train.seed
