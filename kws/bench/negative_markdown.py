"""``bench.md``'s parts about the negative stream (``--negative-hours``), one function per section; each gives
nothing for a report without one, so such a report reads as before the option."""

from __future__ import annotations

from kws.bench.formatting import finite, pct, rate, status, table
from kws.bench.negative_report import FalseAccepts, NegativePass
from kws.bench.report import BenchReport
from kws.bench.scoring import POISSON_CONFIDENCE
from kws.constants import UNKNOWN_LABEL

UPPER = f"{POISSON_CONFIDENCE:.0%} upper bound"


def _fa(f: FalseAccepts) -> str:
    """``"0.50 (95% upper bound 1.50)"``."""
    return f"{rate(f.fa_per_hour)} ({UPPER} {rate(f.fa_per_hour_upper95)})"


def _range(r: tuple[float, float]) -> str:
    return f"{r[0]:g}" if r[0] == r[1] else f"{r[0]:g} to {r[1]:g}"


def negative_requirement_rows(report: BenchReport) -> list[list[str]]:
    """Rows of the requirements table: false accepts per hour on the negative stream, all and real speech."""
    n = report.negative_stream
    if n is None:
        return []
    target = report.targets.fa_per_hour
    rows = []
    for what, f in (("negative stream", n.total), ("negative stream, real speech only", n.real_speech)):
        ok = finite(f.fa_per_hour) and f.fa_per_hour <= target
        note = "" if not ok or (finite(f.fa_per_hour_upper95) and f.fa_per_hour_upper95 <= target) else (
            f" ({UPPER} above the target)")  # fmt: skip
        rows.append(
            [
                f"false accepts per hour, {what} ({f.false_accepts} in {f.hours:.2f} h; {UPPER} "
                f"{rate(f.fa_per_hour_upper95)})",
                rate(f.fa_per_hour),
                f"<= {target:g}",
                status(ok) + note,
            ]
        )
    return rows


def _pass_row(p: NegativePass) -> list[str]:
    return [
        f"pass {p.index}",
        f"{p.seconds / 3600:.2f}",
        p.noise,
        _range(p.snr_db),
        _range(p.gain_db),
        p.reverb,
        f"{p.real_speech_events} + {p.unknown_events}",
        str(p.total.false_accepts),
        _fa(p.total),
        f"{p.real_speech.false_accepts} in {p.real_speech.hours:.2f} h: {rate(p.real_speech.fa_per_hour)}",
        "" if p.state_max_abs is None else f"{p.state_max_abs:.2f}",
    ]


def negative_stream_section(report: BenchReport) -> list[str]:
    """What the negative stream is made of, its false accepts in total, on real speech only, per pass and per
    keyword, and what it cost."""
    n = report.negative_stream
    if n is None:
        return []
    s = n.stats
    header = ["part", "hours", "noise", "SNR (dB)", "gain (dB)", "reverberation", "events (negative + unknown)",
              "false accepts", "FA/h", "real speech: false accepts, FA/h", "max abs LSTM state at its end"]  # fmt: skip
    rows = [
        ["**all passes**", f"**{n.seconds / 3600:.2f}**", "", "", "", "", "", f"**{n.total.false_accepts}**",
         f"**{_fa(n.total)}**", "", ""],
        ["**real speech only**", f"**{n.real_speech.hours:.2f}**", "", "", "", "", "",
         f"**{n.real_speech.false_accepts}**", f"**{_fa(n.real_speech)}**", "", ""],
        *(_pass_row(p) for p in n.passes),
    ]  # fmt: skip
    keywords = [[k, str(f.false_accepts), _fa(f)] for k, f in n.per_keyword.items()]
    return [
        "",
        f"### The negative stream ({n.hours_requested:g} h of non-keyword audio only)",
        "",
        f"{len(n.passes)} passes, {n.seconds / 3600:.2f} h in all, no keyword anywhere. Each pass replays "
        f"the held-out negative recordings ({n.real_speech_files} files, {n.real_speech_seconds / 60:.1f} min: "
        f"real speech that training never used) and the test split's {UNKNOWN_LABEL} clips ({n.unknown_clips} "
        f"clips, {n.unknown_seconds / 60:.1f} min), each after a gap of noise, in a new seeded order, with its "
        f"own noise (cycled over: {'; '.join(dict.fromkeys(p.noise for p in n.passes))}), SNR range, gain range "
        f"(speech and noise together) and simulated reverberation ({n.reverb_method}). At the shipped defaults "
        f"(threshold {n.threshold:g}); rates per hour of the part, with the {UPPER} of a Poisson count.",
        "",
        *table(header, rows),
        "",
        "Real speech only: the false accepts during the held-out negative recordings (a detection from the "
        f"start of a recording to {report.streaming.tolerance_s:g} s after its end), per hour of those "
        "recordings; the unknown words and the noise gaps are left out.",
        "",
        *table(["keyword reported", "false accepts", "FA/h"], keywords),
        "",
        f"Cost: {n.wall_seconds:.0f} s wall time for {s['audio_seconds'] / 3600:.2f} h of audio (making the "
        f"audio, the live runs and the sweep); {s['cpu_ms_per_audio_second']:.2f} ms process CPU per audio "
        f"second while streaming (making the audio included), {s['model_ms_per_audio_second']:.2f} ms of it "
        f"inside onnxruntime. "
        + (
            "`--carry-state`: the spotter is never reset, so the passes are ONE stream of "
            f"{n.seconds / 3600:.2f} h with the LSTM state carried through all of it (each pass scored on its "
            "own times), "
            if n.carried
            else "Each pass is a stream of its own (the spotter starts afresh), "
        )
        + "made and fed chunk by chunk through the runtime's loop (`StreamRunner`, as `kws listen --input`), "
        + (f"kept as `{n.kept}`." if n.kept else "never written to disk."),
        *(f"- {note}" for note in n.notes),
    ]


def negative_sweep_section(report: BenchReport) -> list[str]:
    """The sweep over the negative stream, and the DET points combined with the mixed stream."""
    n = report.negative_stream
    if n is None:
        return []
    default = report.streaming.config["threshold"]
    rows = [
        [
            f"{p.threshold:g}" + (" (default)" if p.threshold == default else ""),
            pct(p.recall),
            str(p.negative.false_accepts),
            _fa(p.negative),
            rate(p.real_speech.fa_per_hour),
            f"{p.combined.false_accepts} in {p.combined.hours:.2f} h",
            _fa(p.combined),
        ]
        for p in n.sweep
    ]
    header = ["threshold", "recall (mixed stream)", "false accepts (negative stream)", "FA/h (negative stream)",
              "FA/h (real speech only)", "false accepts (both streams)", "FA/h (both streams)"]  # fmt: skip
    return [
        "",
        '### Threshold sweep with the negative stream (DET curve: det_curve.png, "mixed + negative streams")',
        "",
        'Recall comes from the mixed stream (the negative stream has no keywords); "both streams": the '
        "false accepts of the mixed and the negative stream over the non-keyword hours of both.",
        "",
        *table(header, rows),
    ]
