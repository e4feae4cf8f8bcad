"""``kws teacher --export-verifier OUT.onnx``: the teacher as a second-stage verifier file, and the choice of its
settings by measurement.

examples:
  kws teacher --out runs/teacher --export-verifier verifier.onnx        # the settings given (or the defaults)
  kws teacher --out runs/teacher --export-verifier verifier.onnx --calibrate-with kws.stream.int8.onnx \\
      --data speech_commands_v0.02 --negatives wake_word_negatives
  kws teacher --out runs/teacher --export-verifier verifier.onnx --train-verifier-with kws.stream.int8.onnx \\
      --calibrate-with kws.stream.int8.onnx --verifier-window-ms 1300 --verifier-window-end-ms 100 \\
      --data speech_commands_v0.02 --negatives wake_word_negatives     # the head trained for the job first

With ``--calibrate-with MODEL`` the window (length and end) and the threshold are chosen on the same audio
``kws calibrate`` uses (:func:`kws.export.calibrate.build_calibration_stream`: the data's ``validation`` split and
the calibration third of the negatives; never the streams ``kws bench`` reports on): the stream runs through
``MODEL`` and the verifier once per window candidate (:data:`WINDOW_CANDIDATES`, the runtime's own path,
:mod:`kws.bench.verification`), and the chosen candidate and threshold are those that remove the most false
accepts for at most 1 point of recall (ties: the earlier window end, i.e. less latency, then the shorter
window). The table of every candidate is printed and written beside the file (``OUT.calibration.json``).

With ``--train-verifier-with MODEL`` the teacher's head is first fine-tuned on windows where ``MODEL`` fires in
training streams (:mod:`kws.teacher.verifier_train`; written as ``OUT.head.pt``) and exported from there; the head
is trained for the window given, so ``--calibrate-with`` then chooses only its threshold.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from kws.errors import KWSError
from kws.teacher.verifier_export import DEFAULT_THRESHOLD, DEFAULT_WINDOW_END_MS, DEFAULT_WINDOW_MS, export_verifier

logger = logging.getLogger(__name__)

PROG = "kws teacher"
WINDOW_CANDIDATES: tuple[tuple[float, float], ...] = (
    (1000.0, 0.0), (1000.0, 100.0), (1300.0, -100.0), (1300.0, 0.0), (1300.0, 100.0), (1300.0, 200.0),
    (1600.0, 100.0),
)  # fmt: skip
"""(window ms, window end ms after the detection) tried by ``--calibrate-with``."""
CALIBRATION_MINUTES = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The verifier options of ``kws teacher``."""
    g = parser.add_argument_group("second-stage verifier (export the teacher in --out as one ONNX file)")
    g.add_argument("--export-verifier", type=Path, metavar="OUT.onnx",
                   help="write the teacher of --out (teacher.pt) as a verifier file for `kws listen --verifier` "
                        "and exit (needs the embedding files: --embedding-models or the kws[teacher] "
                        "extra)")  # fmt: skip
    numbers = (
        ("--verifier-window-ms", DEFAULT_WINDOW_MS, "MS", "audio per check"),
        ("--verifier-window-end-ms", DEFAULT_WINDOW_END_MS, "MS", "where that audio ends, after the detection time"),
        ("--verifier-threshold", DEFAULT_THRESHOLD, "P", "probability of the detected keyword needed to confirm it"),
        ("--calibration-minutes", CALIBRATION_MINUTES, "M", "length of the --calibrate-with stream"),
    )
    for flag, default, metavar, text in numbers:
        g.add_argument(flag, type=float, default=default, metavar=metavar, help=f"{text} (default: %(default)g)")
    g.add_argument("--train-verifier-with", type=Path, metavar="MODEL",
                   help="first fine-tune the teacher's head for verification: on windows where this streaming "
                        "model fires (or nearly) in training streams of --data (training split) and --negatives "
                        "(training half), and on windows of the keywords it should confirm; the head is written "
                        "beside OUT (OUT.head.pt). With --calibrate-with, only the window given is "
                        "calibrated")  # fmt: skip
    from kws.teacher.verifier_train import VerifierTrainConfig

    t = VerifierTrainConfig()
    training = (
        ("--verifier-keyword-minutes", t.keyword_minutes, "M", "keyword-rich training streams"),
        ("--verifier-negative-minutes", t.negative_minutes, "M", "negative-rich training streams"),
        ("--verifier-first-threshold", t.first_stage_threshold, "P", "the first stage's threshold while collecting"),
    )
    for flag, default, metavar, text in training:
        g.add_argument(flag, type=float, default=default, metavar=metavar, help=f"{text} (default: %(default)g)")
    g.add_argument("--calibrate-with", type=Path, metavar="MODEL",
                   help="choose the window and the threshold by measurement with this streaming model on the "
                        "calibration audio of --data (validation split) and --negatives (calibration "
                        "third)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Export (and with ``--calibrate-with``, choose the settings first); errors raise KWSError."""
    teacher = Path(args.out) / "teacher.pt"
    if not teacher.is_file():
        raise KWSError(f"no teacher at {teacher} (train one with `kws teacher --data ... --out {args.out}`)")
    out = Path(args.export_verifier)
    window, end, threshold = args.verifier_window_ms, args.verifier_window_end_ms, args.verifier_threshold
    candidates = WINDOW_CANDIDATES
    if args.train_verifier_with is not None:
        teacher = train_head_for(args, teacher, out)
        candidates = ((window, end),)
    export_verifier(teacher, out, embedding_models=args.embedding_models, window_ms=window, window_end_ms=end,
                    threshold=threshold)  # fmt: skip
    if args.calibrate_with is not None:
        if not args.data or not args.negatives:
            raise KWSError("--calibrate-with needs --data (its validation split) and --negatives")
        table, best = calibrate_verifier(out, args.calibrate_with, tuple(args.data), tuple(args.negatives),
                                         args.calibration_minutes, candidates)  # fmt: skip
        for line in format_table(table, best):
            print(f"{PROG}: {line}")
        window, end, threshold = best["window_ms"], best["window_end_ms"], best["threshold"]
        export_verifier(teacher, out, embedding_models=args.embedding_models, window_ms=window, window_end_ms=end,
                        threshold=threshold)  # fmt: skip
        report = out.with_name(out.stem + ".calibration.json")
        report.write_text(json.dumps({"chosen": best, "candidates": table}, indent=1, default=str) + "\n")
        print(f"{PROG}: calibration table: {report}")
    print(f"{PROG}: wrote {out} (verifier: {window:g} ms ending {end:+g} ms from each detection, threshold "
          f"{threshold:g})")  # fmt: skip
    return 0


def train_head_for(args: argparse.Namespace, teacher: Path, out: Path) -> Path:
    """``--train-verifier-with``: the teacher's head fine-tuned for verification (:mod:`kws.teacher.verifier_train`),
    written to ``OUT.head.pt``; returns that file."""
    import dataclasses

    from kws.teacher.build import student_configs
    from kws.teacher.verifier_train import VerifierTrainConfig, train_verifier_head

    if not args.data or not args.negatives:
        raise KWSError("--train-verifier-with needs --data (its training split) and --negatives (training half)")
    data_config, _ = student_configs(args)
    config = dataclasses.replace(VerifierTrainConfig(), keyword_minutes=args.verifier_keyword_minutes,
                                 negative_minutes=args.verifier_negative_minutes,
                                 first_stage_threshold=args.verifier_first_threshold, seed=args.seed)  # fmt: skip
    head = train_verifier_head(teacher, args.train_verifier_with, data_config, out.with_name(out.stem + ".head.pt"),
                               window_ms=args.verifier_window_ms, window_end_ms=args.verifier_window_end_ms,
                               config=config, embedding_models=args.embedding_models,
                               threads=max(args.threads, 1))  # fmt: skip
    print(f"{PROG}: verifier head trained for verification: {head}")
    return head


def calibrate_verifier(
    verifier_path: Path, model_path: Path, data: tuple[str, ...], negatives: tuple[str, ...],
    minutes: float = CALIBRATION_MINUTES, candidates: tuple[tuple[float, float], ...] = WINDOW_CANDIDATES,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Every window candidate's best threshold on the calibration stream, and the chosen one.

    Returns:
        (one row per candidate: window, end, the chosen threshold's figures and the check cost; the chosen row).
    """
    from kws.bench.verification import CheckCost, choose_point, run_verified, verifier_points
    from kws.export.calibrate import CalibrationOptions, build_calibration_stream
    from kws.runtime import KeywordSpotter, load_model, spotter_config
    from kws.runtime.files import FileSource
    from kws.runtime.verifier import Verifier

    model = load_model(model_path)
    config = spotter_config(model.info)  # the model's own settings, as kws listen runs it
    options = CalibrationOptions(model=model_path, data=data, negatives=negatives, out=verifier_path,
                                 minutes=minutes)  # fmt: skip
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kws-verifier-") as folder:
        stream = build_calibration_stream(options, model.info.keywords, model.info.sample_rate,
                                          Path(folder) / "stream.wav")  # fmt: skip
        for window, end in candidates:
            verifier = Verifier(verifier_path, window_ms=window, window_end_ms=end)
            spotter = KeywordSpotter(model, config)
            chunk = spotter.engine.chunk_frames * spotter.info.hop_samples / spotter.sample_rate
            run = run_verified(spotter, verifier, FileSource(stream.path, spotter.sample_rate, chunk))
            points = verifier_points(run, stream.events, stream.seconds, 1.0)
            best = choose_point(points)
            cost = CheckCost.of(run.checks)
            rows.append({"window_ms": window, "window_end_ms": end, **best.to_dict(),
                         "check_cpu_ms_median": cost.cpu_ms_median,
                         "added_latency_ms_median": cost.added_latency_ms_median,
                         "stream_minutes": stream.seconds / 60})  # fmt: skip
            logger.info("verifier window %g ms ending %+g ms: threshold %g, false accepts %d -> %d, recall "
                        "%.1f%% -> %.1f%%", window, end, best.threshold, best.false_accepts_without,
                        best.false_accepts, 100 * best.recall_without, 100 * best.recall)  # fmt: skip
    chosen = min(rows, key=lambda r: (r["false_accepts"], r["window_end_ms"], r["window_ms"]))
    return rows, chosen


def format_table(rows: list[dict[str, Any]], chosen: dict[str, Any]) -> list[str]:
    """The calibration table, one line per candidate (the chosen one marked)."""
    first = rows[0]
    lines = [f"calibration stream {first['stream_minutes']:.1f} min, {first['keyword_events']} keywords, "
             f"{first['nonkeyword_hours']:.2f} h of non-keyword audio; first stage alone: recall "
             f"{100 * first['recall_without']:.1f}%, {first['false_accepts_without']} false accepts"]  # fmt: skip
    for r in rows:
        mark = "  <- chosen" if r is chosen else ""
        lines.append(f"window {r['window_ms']:6g} ms ending {r['window_end_ms']:+5g} ms: threshold "
                     f"{r['threshold']:<5g} recall {100 * r['recall']:5.1f}% false accepts "
                     f"{r['false_accepts']:3d} ({r['fa_cut']:.1f}x fewer), {r['check_cpu_ms_median']:.1f} ms CPU "
                     f"per check{mark}")  # fmt: skip
    return lines
