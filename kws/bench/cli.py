"""Accuracy, size, speed and streaming detection quality of one model, side by side, in one run.

Writes OUT/bench.md (the report), OUT/bench.json (every figure), OUT/accuracy.png (per-class recall of the
three models) and OUT/det_curve.png (miss rate vs false accepts per hour over a threshold sweep).

1. Accuracy of PyTorch, ONNX fp32 and ONNX int8 (whole-clip models) on a speaker-disjoint test split, read
   with the checkpoint's own data rules and the split mode its training used; per-class recall.
2. Size of every model file; single-clip latency (median, p95, 1 thread) of each.
3. A long stream (default 30 min) of test-split keywords, ``_unknown_`` words and non-keyword speech
   (``--negatives``) over background noise (:mod:`kws.bench.streams`), written as a WAV file and run through the
   path of ``kws listen --input`` with the int8 streaming model and the shipped defaults
   (:class:`~kws.runtime.config.SpotterConfig`): the runtime's own CPU time per audio second, keyword recall,
   false accepts per hour and detection latency; then, from one recorded score trace, the same for a sweep of
   thresholds.
4. With ``--negative-hours H``: H hours of non-keyword audio only (:mod:`kws.bench.negative_stream`), passes
   over the held-out negatives, unknown words and noise, each with its own noise, SNR, gain and simulated
   reverberation, streamed chunk by chunk through the same path: false accepts per hour per pass, per keyword,
   on real speech only, and over the sweep (with the stream's recall: the combined DET curve).
5. With ``--verifier FILE``: both streams also through the second-stage verifier (:mod:`kws.bench.verifier_bench`,
   the path of ``kws listen --verifier``): recall and false accepts with and without it, CPU per check, latency.

examples:
  kws bench --checkpoint runs/v2/best.pt --data speech_commands_test_set_v0.02 \\
            --negatives wake_word_negatives --out bench/
  kws bench --checkpoint runs/v2/best.pt --models models/ --data sc_v2 --stream-minutes 120 --out bench/
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import time
from pathlib import Path

from kws import __version__
from kws.bench import BenchError
from kws.bench.accuracy import AGREEMENT_WARNING, accuracy_reports
from kws.bench.formatting import ms, pct, pct_ci, rate
from kws.bench.inputs import check_models, resolve_models, training_overlap
from kws.bench.machine import load_average, machine_info
from kws.bench.markdown import format_markdown
from kws.bench.negative_stream import run_negative_stream
from kws.bench.options import BenchOptions, add_arguments, options_from_args
from kws.bench.plots import plot_accuracy, plot_det
from kws.bench.report import (
    MODEL_FP32,
    MODEL_INT8,
    MODEL_STREAM_INT8,
    MODEL_TORCH,
    BenchReport,
    CheckpointInfo,
    DataInfo,
    ModelsInfo,
    StreamInfo,
    anchors,
    targets,
    write_output,
)
from kws.bench.speed import BENCH_THREADS, clip_latencies
from kws.bench.streaming import build_stream, run_stream, verify_mixed_stream
from kws.bench.verifier_bench import load_verifier, verifier_report
from kws.bench.verifier_markdown import verifier_lines

__all__ = ["BenchError", "BenchOptions", "add_arguments", "bench", "options_from_args", "run"]

logger = logging.getLogger(__name__)

OUTPUTS = ("bench.md", "bench.json", "accuracy.png", "det_curve.png")
"""What `kws bench` writes into OUT (besides the exported models in OUT/models)."""
STREAM_FILE = "stream.wav"


class _Stages:
    """Wall time of each stage of the run (s), in order."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self.started}


def bench(options: BenchOptions) -> BenchReport:
    """Run every measurement and write OUT/bench.md, OUT/bench.json, OUT/accuracy.png, OUT/det_curve.png.

    Returns:
        the report (what bench.json holds).

    Raises:
        KWSError: bad inputs (checkpoint, data, models, negatives), reported before the slow work.
    """
    from kws.io import clean_stale_temporaries, ensure_writable_dir
    from kws.model.checkpoint import checkpoint_weights, model_from_checkpoint, run_config
    from kws.train.evaluate import load_evaluation_data

    stages = _Stages()
    options.validate()
    out = Path(options.out).expanduser()
    ensure_writable_dir(out, BenchError)
    clean_stale_temporaries(out, names=list(OUTPUTS))  # left by a killed earlier run
    machine = machine_info()
    model, labels, payload = model_from_checkpoint(options.checkpoint)
    config = run_config(payload)
    sample_rate = config.features.sample_rate

    stages.last = time.perf_counter()
    # the test clips, split as the checkpoint's training split them (kws evaluate and kws export use the same)
    evaluation = load_evaluation_data(payload, options.data, options.split, options.split_mode)
    prepared, data = evaluation.prepared, evaluation.data
    speakers = {s for s, sil in zip(data.speakers, data.silence, strict=True) if not sil}
    stages.done("load test split")

    files = resolve_models(options)
    model_files = check_models(files, labels)
    verifier = load_verifier(options.verifier, BENCH_THREADS) if options.verifier is not None else None
    stages.done("models")

    accuracy = accuracy_reports(model, files, data, labels)
    stages.done("accuracy")
    latencies = clip_latencies(model, files, data.float_audio(0), options.latency_runs)
    stages.done("clip latency")

    stream_path = out / STREAM_FILE
    try:
        stream = build_stream(options, prepared, labels, sample_rate, stream_path)
        stages.done("stream build")
        streaming = run_stream(options, files, stream)
        stages.done("stream runs and sweep")
        if verifier is not None:
            mixed_verified = verify_mixed_stream(options, files, stream, verifier)
            stages.done("verifier, mixed stream")
    finally:
        if not options.keep_stream:
            stream_path.unlink(missing_ok=True)
    negative = negative_verified = None
    if options.negative_hours:
        negative, negative_verified = run_negative_stream(options, files, prepared, labels, sample_rate,
                                                          streaming.sweep, out, verifier)  # fmt: skip
        stages.done("negative stream")
    verified = verifier_report(verifier, *mixed_verified, negative_verified) if verifier is not None else None

    notes = list(files.notes)
    agreement = accuracy[MODEL_FP32].agreement_with_pytorch
    if agreement < AGREEMENT_WARNING:
        notes.append(
            f"ONNX fp32 agrees with the checkpoint on only {100 * agreement:.1f}% of the clips: the files "
            "are probably not an export of this checkpoint"
        )
        logger.warning(notes[-1])
    report = BenchReport(
        kws_version=__version__,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=options.command(),
        cwd=Path.cwd().name,  # the folder's name only: a report carries no machine's absolute paths
        machine=dataclasses.replace(machine, load_average_end=load_average()),
        checkpoint=CheckpointInfo(
            path=str(options.checkpoint),
            size_bytes=Path(options.checkpoint).stat().st_size,
            weights_bytes=int(sum(v.numel() * v.element_size() for v in checkpoint_weights(payload).values())),
            labels=tuple(labels),
            evaluation=payload.get("evaluation"),
        ),
        models=ModelsInfo(origin=files.origin, notes=tuple(notes), files=model_files),
        data=DataInfo(
            roots=tuple(options.data),
            split=options.split,
            split_mode=evaluation.split_mode,
            split_mode_how=evaluation.split_mode_how,
            clips=len(data),
            speakers=len(speakers),
            per_class=prepared.summary[options.split]["per_class"],
            skipped=len(data.skipped),
            training_speaker_overlap=training_overlap(payload, evaluation.split_mode, speakers),
        ),
        accuracy=accuracy,
        latency=latencies,
        stream=StreamInfo(
            composition=stream.composition,
            kept=str(stream_path) if options.keep_stream else None,
            events=tuple(e.rounded() for e in stream.events),
        ),
        streaming=streaming,
        targets=targets(),
        anchors=anchors(),
        negative_stream=negative,
        verifier=verified,
    )
    plot_accuracy(report, out / "accuracy.png")
    plot_det(report, out / "det_curve.png")
    stages.done("plots")
    report = dataclasses.replace(report, timing_s=stages.total())
    text = report.to_json()
    write_output(out / "bench.json", lambda tmp: tmp.write_text(text))
    markdown = format_markdown(report)
    write_output(out / "bench.md", lambda tmp: tmp.write_text(markdown))
    return report


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    report = bench(options)
    acc, d, s = report.accuracy, report.streaming.default, report.streaming.stats
    out = Path(options.out)
    for name in (MODEL_TORCH, MODEL_FP32, MODEL_INT8, MODEL_STREAM_INT8):
        print(f"{name:<20} accuracy {pct_ci(acc[name].accuracy, acc[name].accuracy_ci95, 2)} (95% CI)")
    print(
        f"stream {report.stream.composition.seconds / 60:.1f} min at threshold "
        f"{report.streaming.config['threshold']:g}: recall {pct(d.recall)}, "
        f"{rate(d.fa_per_hour)} false accepts/h, median latency {ms(d.latency_median_s)}, "
        f"{s['cpu_ms_per_audio_second']:.2f} ms CPU per audio second"
    )
    if (n := report.negative_stream) is not None:
        print(
            f"negative stream {n.seconds / 3600:.2f} h ({len(n.passes)} passes, {n.wall_seconds:.0f} s): "
            f"{rate(n.total.fa_per_hour)} false accepts/h (95% upper bound {rate(n.total.fa_per_hour_upper95)}); "
            f"real speech only {rate(n.real_speech.fa_per_hour)} in {n.real_speech.hours:.2f} h"
        )
    if (v := report.verifier) is not None:
        for line in verifier_lines(v):
            print(line)
    print(
        f"report: {out / 'bench.md'}\ndata: {out / 'bench.json'}\nplots: {out / 'accuracy.png'}, "
        f"{out / 'det_curve.png'}"
    )
    return 0
