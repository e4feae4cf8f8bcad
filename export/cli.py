"""Export a checkpoint to ONNX: whole-clip and streaming models, float and int8, checked before writing.

Writes DIR/NAME.onnx (whole clip: audio [batch, samples] -> scores [batch, labels]), DIR/NAME.stream.onnx
(streaming step: newest hops + LSTM state -> per-frame logits + new state), their int8 versions
DIR/NAME.int8.onnx and DIR/NAME.stream.int8.onnx, and DIR/NAME.export.json (the report).

Checks (printed as one table): onnx.checker and strict shape inference; fp32 ONNX vs PyTorch scores on real
clips (--data/--calibration, else synthetic speech-like clips: words over a recording noise floor, background
noise); streaming = whole clip for several chunk sizes; onnx's ReferenceEvaluator vs onnxruntime; int8 file
size and (with --data) accuracy against fp32. A failed check exits with status 1 and installs nothing: the
files and the report go to DIR/NAME.rejected/. Staging folders left by a killed export are removed (and
listed in a log line) at the next export into DIR.

examples:
  kws export runs/v2/best.pt -o models/
  kws export runs/v2/best.pt -o models/ --calibration speech_commands_v0.02 \\
      --data speech_commands_test_set_v0.02
  kws export runs/v2/best.pt -o models/ --quantization none    # float files only

The int8 variant shipped as NAME.int8.onnx / NAME.stream.int8.onnx is dynamic quantization unless static QDQ
(made when --calibration is given) is measurably better: more accurate in a sign test over the clips, or as
accurate and faster per streaming call. The report says which was shipped and why.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from kws.export.options import (
    CALIBRATION_CLIPS,
    DEFAULT_NAME,
    QUANT_AUTO,
    QUANTIZATION_CHOICES,
    ExportOptions,
    as_roots,
)
from kws.export.pipeline import export_checkpoint

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by `kws train` (e.g. runs/v2/best.pt)")
    parser.add_argument(
        "-o", "--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)"
    )
    parser.add_argument(
        "--name",
        default=DEFAULT_NAME,
        help="file name stem: NAME.onnx, NAME.stream.onnx, ... (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        nargs="+",
        action="extend",
        metavar="DATA",
        help="Speech Commands folder(s) whose training clips calibrate static int8 quantization "
        "(and give real clips for the parity checks); repeatable",
    )
    parser.add_argument(
        "--calibration-clips",
        type=int,
        default=CALIBRATION_CLIPS,
        metavar="N",
        help="calibration clips, spread over the classes (default: %(default)s)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        action="extend",
        metavar="DATA",
        help="Speech Commands folder(s) for the accuracy columns (their --split clips, split as the "
        "checkpoint's training split them); repeatable",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "validation", "test", "all"),
        help="which clips of --data measure accuracy (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-clips",
        type=int,
        default=0,
        metavar="N",
        help="use at most N clips of --data, spread over the classes (default: 0 = all)",
    )
    parser.add_argument(
        "--quantization",
        default=QUANT_AUTO,
        choices=QUANTIZATION_CHOICES,
        help="int8 variant(s) to make: auto = both when --calibration is given, else dynamic; "
        "both = make dynamic and static QDQ, ship the better one as NAME.int8.onnx; "
        "none = float only (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="onnxruntime/PyTorch threads for the latency columns (default: %(default)s)",
    )
    parser.add_argument(
        "--per-channel",
        action="store_true",
        help="dynamic int8 with one weight scale per LSTM gate row: closer to float, ~4%% larger file",
    )
    parser.add_argument("--no-timing", action="store_true", help="skip the latency measurements")


def run(args: argparse.Namespace) -> int:
    options = ExportOptions(
        name=args.name,
        quantization=args.quantization,
        calibration=as_roots(args.calibration),
        calibration_clips=args.calibration_clips,
        data=as_roots(args.data),
        split=args.split,
        eval_clips=args.eval_clips,
        threads=args.threads,
        timing=not args.no_timing,
        per_channel=args.per_channel,
    )
    result = export_checkpoint(args.checkpoint, args.out, options)
    print(result.format())
    print(f"report: {result.report_path}")
    return 0 if result.passed else 1
