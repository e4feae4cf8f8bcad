"""Write kws/pretrained/MODEL_CARD.md from the training checkpoint, the export report and the bench report.

    python scripts/model_card.py RUN/best.pt kws/pretrained/kws.export.json BENCH/bench.json OUT.md

Every figure in the card is read from those files (made by `kws train`, `kws export` and `kws bench`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from kws.bench.report import BenchReport

DATA_FOLDER_FIELDS = ("roots", "extra_train", "negatives")
"""The ``data`` config fields that hold folders (``kws train`` saves them absolute, so a run resumes anywhere)."""


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def portable_folders(folders: list[str]) -> list[str]:
    """Data folders as the card shows them, with nothing of the machine that trained the model: their names
    (``speech_commands_test_set_v0.02``), or, where two share a name, their paths relative to the folder that
    holds them all."""
    names = [Path(f).name for f in folders]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([os.path.abspath(f) for f in folders])
    return [Path(os.path.relpath(os.path.abspath(f), common)).as_posix() for f in folders]


def portable_config(config: dict) -> dict:
    """``to_dict(run config)`` with the data folders made :func:`portable_folders` (one naming for all) and the
    checkpoint a run started from (``--init-from``) named by its run folder and file."""
    data = dict(config.get("data", {}))
    fields = [k for k in DATA_FOLDER_FIELDS if data.get(k)]
    flat = portable_folders([f for k in fields for f in data[k]])
    for k in fields:
        data[k], flat = flat[: len(data[k])], flat[len(data[k]) :]
    train = dict(config.get("train", {}))
    if train.get("init_from"):  # the stage the run started from: its run folder and file, not this machine's path
        start = Path(train["init_from"])
        train["init_from"] = f"{start.parent.name}/{start.name}"
    if train.get("teacher"):  # the `kws teacher` folder: its name, not this machine's path
        train["teacher"] = Path(train["teacher"]).name
    return {**config, "data": data, "train": train}


def teacher_lines(train: dict, stage1: bool) -> list[str]:
    """How the teacher took part, from the ``train`` config of the run that learnt from it (stage 1's when
    ``stage1``, else the shipped run's); nothing without a teacher."""
    if not train.get("teacher"):
        return []
    terms = f"soft labels (`--distill-weight {train['distill_weight']:g}`, `--distill-temperature "
    terms += f"{train['distill_temperature']:g}`)"
    if train.get("embed_distill_weight"):
        terms += f" and its mean embedding (`--embed-distill-weight {train['embed_distill_weight']:g}`)"
    return [
        "",
        "Teacher (training time only; the device never runs it): "
        + ("stage 1 " if stage1 else "")
        + "learnt from the "
        + terms
        + " of `kws teacher` (folder `"
        + Path(train["teacher"]).name
        + "`): Google's pretrained `speech_embedding` in openWakeWord's ONNX port (`melspectrogram.onnx`, "
        "`embedding_model.onnx`, Apache-2.0) with a small head trained on the same splits.",
    ]


def evaluation_lines(bench: BenchReport) -> list[str]:
    """The card's evaluation section, from the typed bench report (test data, accuracy of every model, the
    streaming figures at the shipped defaults)."""
    data, st = bench.data, bench.streaming.default
    lines = [
        "## Evaluation (from `kws bench`, see `BENCH.md`)",
        "",
        f"Test split: {data.clips} clips, {data.speakers} speakers, from "
        + ", ".join(f"`{r}`" for r in portable_folders(list(data.roots)))
        + ".",
        "",
        "| model | 12-class accuracy |",
        "|---|---|",
    ]
    lines += [f"| {name} | {pct(r.accuracy)} |" for name, r in bench.accuracy.items()]
    return [
        *lines,
        "",
        f"Streaming at the shipped defaults: keyword recall {pct(st.recall)}, "
        f"{st.fa_per_hour:.1f} false accepts per hour of non-keyword audio, median latency "
        f"{1000 * st.latency_median_s:.0f} ms after the end of the word.",
        "",
    ]


def main(ckpt: Path, export_json: Path, bench_json: Path, out: Path) -> None:
    from kws.config import to_dict
    from kws.model.checkpoint import load_checkpoint, run_config

    payload = load_checkpoint(ckpt)
    config = run_config(payload)
    start = Path(config.train.init_from) if config.train.init_from else None
    stage1 = to_dict(run_config(load_checkpoint(start))) if start is not None and start.is_file() else None
    taught = (stage1 or to_dict(config))["train"]  # the run that learnt from a teacher, if any
    summary = payload["data_summary"]
    per_class = {k: v for k, v in summary["train"]["per_class"].items() if not k.startswith("_")}
    kw_min, kw_max = min(per_class.values()), max(per_class.values())
    fewest = " and ".join(k for k, v in per_class.items() if v < 1.2 * kw_min)
    exported = json.loads(export_json.read_text())
    bench = BenchReport.read(bench_json)
    if config.train.init_from:  # a second stage, started from the checkpoint of a first `kws train`
        stream = config.stream
        training = (
            "`kws train` with its defaults (stage 1), then `kws train --init-from` that checkpoint"
            + (f" with the stream loss (`--stream-weight {stream.weight:g}`, {stream.batch} x {stream.seconds:g} s"
               " training streams per step)" if stream.weight > 0 else "")
            + f" for {config.train.epochs} epochs (stage 2, the settings below; its last epoch is shipped)"
        )  # fmt: skip
    else:
        training = "`kws train` with the settings below"
    lines = [
        "# Model card: kws shipped model (`kws/pretrained/`)",
        "",
        "A 12-class Speech Commands keyword spotter (`yes no up down left right on off stop go` + `_silence_` + "
        "`_unknown_`): torchaudio MFCC + stacked LSTM, exported to ONNX with the MFCC inside the graph and "
        f"quantized to int8 ({exported['quantization']}: {exported['reason']}).",
        "",
        "## Files",
        "",
        "| file | what | size |",
        "|---|---|---|",
    ]
    for name in ("kws.stream.int8.onnx", "kws.int8.onnx"):
        path = out.parent / name
        what = "streaming step, used by `kws listen`" if "stream" in name else "whole clip (1 s)"
        lines.append(f"| `{name}` | {what} | {path.stat().st_size / 1024:.0f} KiB |")
    lines += [
        "",
        "## How it was made",
        "",
        "`make pretrained` (= `scripts/make_pretrained.sh ../shared/data`): " + training + " on the real data in",
        "`../shared/data`, `kws export` (all checks passed: " + str(exported["passed"]) + "), then `kws bench`.",
        "",
        "```json",
        json.dumps(portable_config(to_dict(config)), indent=1),
        "```",
        "",
        f"Trained for {payload['epoch']} epochs ({payload['step']} steps); best validation accuracy "
        f"{pct(payload['best_accuracy'])}.",
        *teacher_lines(taught, stage1 is not None),
        "",
        "## Data (speaker-disjoint splits)",
        "",
        "| split | clips | speakers | clips per class |",
        "|---|---|---|---|",
    ]
    for split in ("train", "validation", "test"):
        s = summary[split]
        per = ", ".join(f"{k} {v}" for k, v in s["per_class"].items())
        lines.append(f"| {split} | {s['clips']} | {s['speakers']} | {per} |")
    lines += [
        "",
        "Roots: " + ", ".join(f"`{r}`" for r in portable_folders(summary["roots"])) + ". Non-keyword speech "
        "(`wake_word_negatives`, half of the files) joins `_unknown_` in training; the other half is only used by "
        "`kws bench`.",
        "",
        *evaluation_lines(bench),
        "## Limitations",
        "",
        f"Trained on {kw_min}-{kw_max} clips per keyword (the fewest for {fewest}) from "
        f"{summary['train']['speakers']} speakers: far less than the full Speech Commands dataset (about 3,500 per "
        "keyword from 2,600 speakers). Accuracy and false-accept figures are well below what the full dataset "
        "gives; retrain with `kws train --data speech_commands_v0.02` where it is available.",
        "",
        "## Licence and attribution",
        "",
        "Trained on Speech Commands (Pete Warden, 'Speech Commands: A Dataset for Limited-Vocabulary Speech "
        "Recognition', 2018), licensed CC BY 4.0, and on Picovoice wake-word-benchmark recordings (Apache-2.0).",
        *(
            [
                "",
                "Taught by Google's `speech_embedding` (Apache-2.0) as ported to ONNX by openWakeWord "
                "(David Scripka, Apache-2.0; only its two feature models, none of its wake-word models).",
            ]
            if taught.get("teacher")
            else []
        ),
        "",
    ]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
