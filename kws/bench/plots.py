"""The figures of ``bench.md``: per-class recall of the whole-clip models (``accuracy.png``) and the DET
curve with recall, false accepts and latency against the threshold (``det_curve.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kws.bench.formatting import pct_ci
from kws.bench.report import MODEL_FP32, MODEL_INT8, MODEL_TORCH, BenchReport, write_output
from kws.bench.speed import MS_PER_S

PLOT_DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(report: BenchReport, path: Path) -> None:
    """Per-class recall bars of PyTorch, ONNX fp32 and ONNX int8 (PNG)."""
    plt = _pyplot()
    labels = report.checkpoint.labels
    names = [MODEL_TORCH, MODEL_FP32, MODEL_INT8]
    width = 0.8 / len(names)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(labels) + 2), 5.0))
    for i, name in enumerate(names):
        a = report.accuracy[name]
        recall = np.array([100 * a.per_class[k].recall for k in labels])
        ci = 100 * np.array([a.per_class[k].recall_ci95 for k in labels]).reshape(-1, 2)
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            recall,
            width,
            yerr=np.stack([recall - ci[:, 0], ci[:, 1] - recall]),
            error_kw={"elinewidth": 0.6, "capsize": 1.5, "alpha": 0.6},
            label=f"{name}: {pct_ci(a.accuracy, a.accuracy_ci95, 2)}",
        )
    ax.axhline(100 * report.targets.accuracy, color="grey", ls="--", lw=0.8, label="accuracy target")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("recall (%), 95% confidence intervals")
    ax.set_ylim(0, 105)
    ax.set_title(
        f"per-class recall on {report.data.clips} test clips, {report.data.speakers} speakers",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    fig.tight_layout()
    write_output(path, lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png"))
    plt.close(fig)


def plot_det(report: BenchReport, path: Path) -> None:
    """DET-style curve (miss rate vs false accepts per hour over the threshold sweep) and the figures against
    the threshold (PNG)."""
    plt = _pyplot()
    st = report.streaming
    sweep = st.sweep
    t = np.array([r.threshold for r in sweep])
    fa = np.array([np.nan if r.fa_per_hour is None else r.fa_per_hour for r in sweep], dtype=float)
    miss = np.array([np.nan if r.miss_rate is None else 100 * r.miss_rate for r in sweep], dtype=float)
    lat = {
        q: np.array([np.nan if (v := getattr(r, key)) is None else MS_PER_S * v for r in sweep], dtype=float)
        for q, key in (("median", "latency_median_s"), ("p90", "latency_p90_s"))
    }
    d, target, default_t = st.default, report.targets, st.config["threshold"]
    fig, (ax, ax2, ax4) = plt.subplots(1, 3, figsize=(15, 4.5))
    n = report.negative_stream
    ax.plot(fa, miss, "o-", ms=3, label="threshold sweep" if n is None else "threshold sweep (mixed stream)")
    if n is not None:
        both = np.array([np.nan if (v := p.combined.fa_per_hour) is None else v for p in n.sweep], dtype=float)
        missed = np.array([np.nan if p.recall is None else 100 * (1 - p.recall) for p in n.sweep], dtype=float)
        hours = n.sweep[0].combined.hours if n.sweep else 0.0
        ax.plot(both, missed, "s-", ms=3, label=f"mixed + negative streams (FA over {hours:.1f} h)")
    ax.plot(
        [d.fa_per_hour],
        [100 * d.miss_rate],
        "r*",
        ms=13,
        label=f"shipped default (threshold {default_t:g})",
    )
    ax.fill_between(
        [0, target.fa_per_hour],
        0,
        100 * (1 - target.recall),
        color="green",
        alpha=0.15,
        label=f"target: recall >= {100 * target.recall:g}%, FA/h <= {target.fa_per_hour:g}",
    )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 100)
    ax.set_xlabel("false accepts per hour (non-keyword audio)")
    ax.set_ylabel("miss rate (%)")
    comp = report.stream.composition
    ax.set_title(f"DET: {comp.seconds / 60:.0f} min stream, {comp.keyword_events} keywords", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax2.plot(t, 100 - miss, "o-", ms=3, label="keyword recall (%)")
    ax2.set_ylim(0, 100)
    ax2.set_xlabel("threshold")
    ax2.set_ylabel("keyword recall (%)")
    ax3 = ax2.twinx()
    ax3.plot(t, fa, "^-", ms=3, color="tab:red", label="false accepts per hour")
    ax3.set_yscale("symlog", linthresh=1.0)
    ax3.set_ylim(bottom=0)
    ax3.set_ylabel("false accepts per hour", color="tab:red")
    ax2.axvline(default_t, color="grey", ls="--", lw=0.8)
    ax2.legend(handles=ax2.get_lines()[:1] + ax3.get_lines(), fontsize=8, loc="lower left")
    ax2.set_title("recall and false accepts vs threshold", fontsize=10)
    ax2.grid(True, alpha=0.3)

    ax4.plot(t, lat["median"], "s-", ms=3, label="median")
    ax4.plot(t, lat["p90"], "v-", ms=3, label="p90")
    ax4.axhline(MS_PER_S * target.latency_s, color="green", ls="--", lw=0.8, label="median target")
    ax4.axvline(default_t, color="grey", ls="--", lw=0.8)
    ax4.set_xlabel("threshold")
    ax4.set_ylabel("detection time - end of word (ms)")
    ax4.set_title("detection latency vs threshold", fontsize=10)
    ax4.grid(True, alpha=0.3)
    ax4.legend(fontsize=8)
    fig.tight_layout()
    write_output(path, lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png"))
    plt.close(fig)
