"""``bench.md``: the human-readable report, one function per section (the negative stream's: in
:mod:`kws.bench.negative_markdown`); every figure comes from the typed report (:class:`BenchReport`).

(Over 400 lines: one short function per section of one report; the negative stream's and the verifier's are
in their own modules.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kws.bench.formatting import finite, hours_needed, ms, pct, pct_ci, rate, size, status, table
from kws.bench.negative_markdown import negative_requirement_rows, negative_stream_section, negative_sweep_section
from kws.bench.report import MODEL_FP32, MODEL_INT8, MODEL_STREAM_INT8, MODEL_TORCH, BenchReport
from kws.bench.scoring import POISSON_CONFIDENCE
from kws.bench.speed import BENCH_THREADS, LATENCY_WARMUP, MS_PER_S
from kws.bench.verifier_markdown import verifier_section
from kws.constants import UNKNOWN_LABEL
from kws.data.words import ENVELOPE_FRAME_SECONDS, WORD_DB_ABOVE_FLOOR, WORD_DB_BELOW_PEAK, WORD_MAX_INNER_GAP_SECONDS
from kws.train.evaluate import wilson_interval

BYTES_PER_GIB = 2**30


def recall_interval(report: BenchReport) -> list[float]:
    """95% Wilson interval of the keyword recall at the shipped defaults."""
    d = report.streaming.default
    return list(wilson_interval(d.hits, d.keyword_events))


def header_section(report: BenchReport) -> list[str]:
    """Title, date, version, the reproducing command and the models' warnings."""
    lines = [
        f"# kws bench: {Path(report.checkpoint.path).name}",
        "",
        f"{report.date}, kws {report.kws_version}. Command (run in a folder named `{report.cwd}`):",
        "",
        "```",
        report.command,
        "```",
        "",
    ]
    for note in report.models.notes:
        lines += [f"> **Warning:** {note}", ""]
    return lines


def requirements_section(report: BenchReport) -> list[str]:
    """The project's requirements against what was measured, and the resolution of the false-accept rate."""
    acc, d, target = report.accuracy[MODEL_INT8], report.streaming.default, report.targets
    fa, fa_upper, nonkw_h = d.fa_per_hour, d.fa_per_hour_upper95, d.nonkeyword_hours
    recall_ci = recall_interval(report)
    lines = [
        "## The project's requirements",
        "",
        f"Measured on this machine in this run; streaming figures at the shipped defaults "
        f"(threshold {report.streaming.config['threshold']:g}, see below).",
        "",
    ]
    rows = [
        [
            f"{len(report.checkpoint.labels)}-class accuracy, ONNX int8 (test split, {acc.clips} clips; 95% CI)",
            pct_ci(acc.accuracy, acc.accuracy_ci95, 2),
            f">= {pct(target.accuracy, 0)}",
            status(acc.accuracy >= target.accuracy, acc.accuracy_ci95, target.accuracy),
        ],
        [
            f"keyword recall on the stream ({d.keyword_events} keywords; 95% CI)",
            pct_ci(d.recall, recall_ci),
            f">= {pct(target.recall, 0)}",
            status(finite(d.recall) and d.recall >= target.recall, recall_ci, target.recall),
        ],
        [
            f"false accepts per hour ({d.false_accepts} in {60 * nonkw_h:.1f} min of non-keyword audio; "
            f"{POISSON_CONFIDENCE:.0%} upper bound {rate(fa_upper)})",
            rate(fa),
            f"<= {target.fa_per_hour:g}",
            status(finite(fa) and fa <= target.fa_per_hour),
        ],
        [
            "median detection latency (detection time - end of the word)",
            ms(d.latency_median_s),
            f"<= {ms(target.latency_s)}",
            status(finite(d.latency_median_s) and d.latency_median_s <= target.latency_s),
        ],
    ]
    lines += table(["requirement", "measured", "target", "status"], rows + negative_requirement_rows(report))
    return [
        *lines,
        "",
        f"Resolution: {d.false_accepts} false accept(s) in {nonkw_h:.2f} h bound the rate below "
        f"{rate(fa_upper)} per hour ({POISSON_CONFIDENCE:.0%} confidence). Showing <= "
        f"{target.fa_per_hour:g} per hour at that confidence takes at least {hours_needed(target.fa_per_hour):.1f} h "
        "of non-keyword audio without a false accept (a longer `--stream-minutes`).",
        "",
    ]


def anchors_section(report: BenchReport) -> list[str]:
    """The published figures, for orientation."""
    return [
        "## Published figures (other data: for orientation only, not comparable one to one)",
        "",
        "These come from other papers and projects, trained and tested on other data (this project trains "
        "on about 300 clips per keyword).",
        "",
        *table(["source", "data", "figure"], [[a.source, a.data, a.figure] for a in report.anchors]),
    ]


def machine_section(report: BenchReport) -> list[str]:
    """CPU, memory, OS, library versions and load."""
    m = report.machine

    def loads(values: Sequence[float] | None) -> str:
        return ", ".join(f"{x:.2f}" for x in (values or [])) or "n/a"

    return [
        "",
        "## Machine",
        "",
        f"- CPU: {m.cpu} ({m.machine}), {m.cores} cores ({m.usable_cores} usable by this "
        "process)" + (f", {m.memory_bytes / BYTES_PER_GIB:.1f} GiB memory" if m.memory_bytes else ""),
        f"- {m.platform}; " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        f"- load average at the start {loads(m.load_average)}; at the end "
        f"{loads(m.load_average_end)} (wall-clock "
        f"latencies are affected by other work on the machine; the CPU time per audio second much less)",
        f"- every timed model runs on {BENCH_THREADS} thread",
        "",
    ]


def data_section(report: BenchReport) -> list[str]:
    """The test folders, split and speakers; clips per class; the checkpoint's own evaluation."""
    data, labels = report.data, report.checkpoint.labels
    overlap = data.training_speaker_overlap
    overlap_text = (
        "not checked (the checkpoint's training folders are not on this machine)"
        if overlap is None
        else f"{overlap} (checked against the training split of the checkpoint's own folders)"
    )
    lines = [
        "## Test data",
        "",
        f"- folders: {', '.join(f'`{r}`' for r in data.roots)}",
        f"- split: `{data.split}`, split mode `{data.split_mode}` ({data.split_mode_how}); the "
        "split is by speaker, so no test speaker is in training",
        f"- test speakers also in the training split: {overlap_text}",
        f"- {data.clips} clips, {data.speakers} speakers"
        + (f", {data.skipped} unreadable files skipped" if data.skipped else ""),
        "",
    ]
    lines += table(["class", *labels], [["clips", *(str(data.per_class.get(k, 0)) for k in labels)]])
    ev = report.checkpoint.evaluation
    if ev:
        lines += [
            "",
            f"The checkpoint's own evaluation at the end of training: {pct(ev.get('accuracy'), 2)} on "
            f"{ev.get('clips')} clips of {ev.get('split', 'its test split')}.",
        ]
    return lines


def accuracy_section(report: BenchReport) -> list[str]:
    """Accuracy and per-class recall of every model, with intervals, and the agreement with PyTorch."""
    acc, labels = report.accuracy, report.checkpoint.labels
    names = list(acc)
    lines = [
        "",
        f"## Accuracy ({len(labels)} classes, per-class recall)",
        "",
        f"{MODEL_STREAM_INT8}: the runtime's model, each clip streamed from zero state and pooled as the "
        "whole-clip model pools it. In brackets: the 95% confidence interval (Wilson score) of each figure, "
        "from the number of clips it is measured on.",
        "",
    ]
    rows = [["**accuracy**", *(f"**{pct_ci(acc[n].accuracy, acc[n].accuracy_ci95)}**" for n in names)]]
    rows += [
        [
            f"{k} ({acc[names[0]].per_class[k].support} clips)",
            *(pct_ci(acc[n].per_class[k].recall, acc[n].per_class[k].recall_ci95) for n in names),
        ]
        for k in labels
    ]
    rows += [["top-1 agreement with PyTorch", *(pct(acc[n].agreement_with_pytorch) for n in names)]]
    return lines + table(["class", *names], rows)


def size_speed_section(report: BenchReport) -> list[str]:
    """File sizes, single-clip latencies and the streaming runtime's CPU time per audio second."""
    files, lat, ckpt, st = report.models.files, report.latency, report.checkpoint, report.streaming
    lines = ["", "## Size and speed", "", f"Models: {report.models.origin}.", ""]
    rows = [
        [
            MODEL_TORCH,
            f"`{Path(ckpt.path).name}` (with optimizer state: {size(ckpt.size_bytes)})",
            size(ckpt.weights_bytes) + " (float32 weights)",
            f"{lat[MODEL_TORCH].median_ms:.2f}",
            f"{lat[MODEL_TORCH].p95_ms:.2f}",
        ]
    ]
    for name, key in ((MODEL_FP32, "clip"), (MODEL_INT8, "clip_int8")):
        f = files[key]
        rows.append(
            [
                name,
                f"`{Path(f.path).name}` ({f.quantization})",
                size(f.size_bytes),
                f"{lat[name].median_ms:.2f}",
                f"{lat[name].p95_ms:.2f}",
            ]
        )
    for name, key in (("ONNX fp32 streaming", "stream"), (MODEL_STREAM_INT8, "stream_int8")):
        f = files[key]
        rows.append([name, f"`{Path(f.path).name}` ({f.quantization})", size(f.size_bytes), "-", "-"])
    lines += table(["model", "file", "size", "1-clip latency median (ms)", "p95 (ms)"], rows)
    s = st.stats
    return [
        *lines,
        "",
        f"Single-clip latency: {lat[MODEL_TORCH].runs} runs of one 1 s test clip after "
        f"{LATENCY_WARMUP} warm-up runs, wall clock.",
        "",
        f"Streaming runtime ({Path(st.model).name}, {st.quantization}, the path of `kws listen "
        f"--input` over the {report.stream.composition.seconds / 60:.1f} min stream, shipped defaults): "
        f"**{s['cpu_ms_per_audio_second']:.2f} ms CPU per audio second** (the runtime's StreamStats: "
        f"process CPU time, reading and resampling included), real-time factor "
        f"{s['real_time_factor']:.4f}, {s['model_calls']} model calls of {s['model_ms_per_call']:.3f} ms.",
        "",
    ]


def stream_section(report: BenchReport) -> list[str]:
    """What the stream is made of."""
    comp = report.stream.composition
    rows = [
        [
            "keywords",
            f"{comp.keyword_seconds / 60:.1f}",
            f"{comp.keyword_events} events ({comp.keyword_word_seconds / 60:.1f} min of words) from "
            f"{comp.keyword_clips} of {comp.keyword_clips_available} test clips; "
            + ", ".join(f"{k} {v}" for k, v in comp.keywords_per_label.items()),
        ],
        [
            f"{UNKNOWN_LABEL} words",
            f"{comp.unknown_seconds / 60:.1f}",
            f"{comp.unknown_events} events from {comp.unknown_clips} test clips",
        ],
        [
            "negative speech",
            f"{comp.negative_seconds / 60:.1f}",
            f"{comp.negative_events} events from {comp.negative_files} of {comp.negative_files_available} recordings",
        ],
        [
            "noise only",
            f"{comp.noise_only_seconds / 60:.1f}",
            f"{comp.gap_seconds[0]:g}-{comp.gap_seconds[1]:g} s before each event, and a tail",
        ],
        ["**total**", f"**{comp.seconds / 60:.1f}**", ""],
    ]
    return [
        "## Streaming detection",
        "",
        "### The stream",
        "",
        *table(["part", "minutes", "what"], rows),
        "",
        f"Noise bed under everything: {comp.noise_source}, cross-faded stretches, each event's speech "
        f"at a random {comp.snr_db[0]:g}-{comp.snr_db[1]:g} dB over it (its active speech level; "
        f"the recordings' own noise comes on top). Events in random order, seed {comp.seed}.",
        *(f"- {n}" for n in comp.notes),
    ]


def defaults_section(report: BenchReport) -> list[str]:
    """Detection figures at the shipped defaults, overall and per keyword."""
    d, cfg = report.streaming.default, report.streaming.config
    contexts = ", ".join(f"{k}: {v}" for k, v in d.false_accepts_by_context.items()) or "none"
    lines = [
        "",
        "### At the shipped defaults",
        "",
        "Operating point of `kws listen` without options for this model (the built-in defaults, then the model's "
        "own metadata settings): "
        + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in cfg.items() if k != "thresholds")
        + (
            "; per-keyword thresholds " + ", ".join(f"{k} {float(v):g}" for k, v in cfg["thresholds"])
            if cfg.get("thresholds")
            else ""
        )
        + ".",
        "",
    ]
    rows = [
        ["keyword recall (95% CI)", f"{pct_ci(d.recall, recall_interval(report))} ({d.hits} of {d.keyword_events})"],
        ["false accepts", f"{d.false_accepts} ({contexts})"],
        [
            "false accepts per hour (headline)",
            f"{rate(d.fa_per_hour)} ({POISSON_CONFIDENCE:.0%} upper bound {rate(d.fa_per_hour_upper95)})",
        ],
        ["false accepts per hour of the whole stream", rate(d.fa_per_hour_stream)],
        ["false accepts outside keyword windows per non-keyword hour", rate(d.fa_per_hour_nonkeyword)],
        ["detection latency, median / p90", f"{ms(d.latency_median_s)} / {ms(d.latency_p90_s)}"],
        [
            "same, with the runtime's chunk buffering",
            f"{ms(d.latency_buffered_median_s)} / {ms(d.latency_buffered_p90_s)}",
        ],
        ["score-trace replay = live detections", "yes" if report.streaming.replay_matches_live else "**NO**"],
    ]
    lines += table(["figure", "value"], rows)
    per_keyword = [
        [k, str(v.events), pct(v.recall), str(v.false_accepts), ms(v.latency_median_s)]
        for k, v in d.per_keyword.items()
    ]
    header = ["keyword", "events", "recall", "false accepts (as this keyword)", "median latency"]
    return [*lines, "", *table(header, per_keyword)]


def sweep_section(report: BenchReport) -> list[str]:
    """The figures at every threshold of the sweep (the DET curve's points)."""
    default = report.streaming.config["threshold"]
    rows = [
        [
            f"{r.threshold:g}" + (" (default)" if r.threshold == default else ""),
            pct(r.recall),
            pct(r.miss_rate),
            str(r.false_accepts),
            rate(r.fa_per_hour),
            rate(r.fa_per_hour_stream),
            rate(r.fa_per_hour_nonkeyword),
            ms(r.latency_median_s),
            ms(r.latency_p90_s),
        ]
        for r in report.streaming.sweep
    ]
    header = ["threshold", "recall", "miss rate", "false accepts", "FA/h (headline)", "FA/h (whole stream)",
              "FA/h (outside keywords)", "latency median", "p90"]  # fmt: skip
    return ["", "### Threshold sweep (DET curve: det_curve.png)", "", *table(header, rows)]


def method_section(report: BenchReport) -> list[str]:
    """How the stream is run, how word ends are estimated, what a hit is, how rates and latency are defined."""
    return [
        "",
        "### How it is measured",
        "",
        "- The stream is written as 16-bit WAV and run through the path of `kws listen --input FILE` "
        "(`kws.runtime.detect_file`: file source, streaming engine, smoothing, threshold, refractory time), "
        "once for the detections and statistics above; a second, recorded run gives the score trace, "
        "from which `detections_from_scores` re-evaluates every threshold of the sweep.",
        f"- A keyword's word end is estimated from the clip's energy envelope "
        f"({MS_PER_S * ENVELOPE_FRAME_SECONDS:g} ms frames: the most energetic run of frames within "
        f"{WORD_DB_BELOW_PEAK:g} dB of the loudest one and {WORD_DB_ABOVE_FLOOR:g} dB over the clip's "
        f"noise floor, gaps up to {MS_PER_S * WORD_MAX_INNER_GAP_SECONDS:g} ms bridged).",
        f"- A detection of keyword k between the start of a k event and {report.streaming.tolerance_s:g} s after "
        f"the end of its word is a hit (the first one only); every other detection is a false accept: "
        f"a wrong keyword or a repeat during a keyword event, or any detection on non-keyword speech or "
        f"noise.",
        "- Headline false accepts per hour: every false accept, wherever it happened, per hour of "
        "non-keyword audio (the stream minus the keyword windows). Dividing by the whole stream would "
        "credit the keyword minutes as hours in which nothing went wrong; counting only false accepts "
        "outside the keyword windows would drop wrong-keyword detections. The headline is never below "
        "either of those two rates, which are shown beside it.",
        "- Latency: detection time (the end of the frame whose smoothed posterior crossed the threshold) "
        "minus the word's end; the buffered figure adds the wait for the rest of the runtime's chunk "
        f"({report.streaming.config['chunk_ms']:g} ms), which a live listener also sees.",
    ]


def caveats_section(report: BenchReport) -> list[str]:
    """What the figures do not show."""
    return [
        "",
        "## Caveats",
        "",
        "- The background-noise recordings are also used to augment the training clips (Speech Commands has "
        "no held-out noise); the keyword, unknown-word and negative speech is unseen in training.",
        "- Test keywords are Speech Commands clips: one word, read out in isolation, recorded by the "
        "speakers' own microphones; continuous conversational speech is harder.",
    ]


def figures_section(report: BenchReport) -> list[str]:
    """The two plots and the stage times."""
    return [
        "",
        "## Figures",
        "",
        "![per-class recall](accuracy.png)",
        "",
        "![DET curve](det_curve.png)",
        "",
        "Stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report.timing_s.items()),
        "",
    ]


SECTIONS = (
    header_section, requirements_section, anchors_section, machine_section, data_section, accuracy_section,
    size_speed_section, stream_section, defaults_section, sweep_section, negative_stream_section,
    negative_sweep_section, verifier_section, method_section, caveats_section, figures_section,
)  # fmt: skip
"""The sections of ``bench.md``, in order."""


def format_markdown(report: BenchReport) -> str:
    """The human-readable report (every figure comes from ``report``)."""
    return "\n".join(line for section in SECTIONS for line in section(report))
