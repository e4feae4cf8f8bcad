"""kws bench's options (one declaration for argparse and the reproducing command line), its typed report
(JSON round trip, reports written before it was typed, NaN as null), the targets and anchors read as data,
the markdown's tolerance from the report, and the model card reading the typed report. No model needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest

from kws.bench.events import KIND_KEYWORD, StreamComposition, StreamEvent
from kws.bench.options import BenchOptions, add_arguments, options_from_args
from kws.bench.report import (
    AccuracyFigures,
    BenchReport,
    CheckpointInfo,
    ClassFigures,
    DataInfo,
    Detection,
    DetectionFigures,
    KeywordFigures,
    Latency,
    Machine,
    ModelFileInfo,
    ModelsInfo,
    OperatingPoint,
    StreamInfo,
    Streaming,
    anchors,
    targets,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = ("PyTorch", "ONNX fp32", "ONNX int8", "ONNX int8 streaming")
LABELS = ("_silence_", "_unknown_", "yes", "no")
FULL_ARGV = [
    "--checkpoint", "r/b.pt", "--models", "m", "--name", "x", "--data", "A", "--split", "validation",
    "--split-mode", "official", "--negatives", "N", "M", "--stream-minutes", "0.5", "--negative-hours", "6",
    "--snr-db", "3", "7.5", "--tolerance", "0.25", "--seed", "4", "--latency-runs", "5", "--keep-stream",
    "--verifier", "v.onnx", "--out", "o d", "--carry-state",
]  # fmt: skip


def _parse(argv: list[str]) -> BenchOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from_args(parser.parse_args(argv))


class TestOptions:
    """One declaration gives the parser, the options and the command line that reproduces them."""

    def test_defaults_and_the_command_line(self) -> None:
        options = _parse(["--checkpoint", "c.pt", "--data", "A", "B", "--out", "o"])
        assert options == BenchOptions(checkpoint=Path("c.pt"), data=("A", "B"), out=Path("o"))
        assert options.command() == (
            "kws bench --checkpoint c.pt --name kws --data A B --split test --split-mode auto --stream-minutes 30 "
            "--snr-db 10 30 --tolerance 1 --seed 0 --latency-runs 200 --out o"
        )

    def test_every_option_reaches_the_command_line_switches_last(self) -> None:
        options = _parse(FULL_ARGV)
        assert options.negatives == (Path("N"), Path("M")) and options.snr_db == (3.0, 7.5)
        assert options.tolerance == 0.25 and options.keep_stream and options.negative_hours == 6.0
        assert options.command() == (
            "kws bench --checkpoint r/b.pt --models m --name x --data A --split validation --split-mode official "
            "--negatives N M --stream-minutes 0.5 --negative-hours 6 --snr-db 3 7.5 --tolerance 0.25 --seed 4 "
            "--latency-runs 5 --verifier v.onnx --out 'o d' --carry-state --keep-stream"
        )

    def test_the_command_line_parses_back_to_the_options(self) -> None:
        import shlex

        options = _parse(FULL_ARGV)
        assert _parse(shlex.split(options.command())[2:]) == options
        flags = {f.metadata["flag"] for f in dataclasses.fields(BenchOptions)}
        assert flags == {a for a in FULL_ARGV if a.startswith("--")}, "every option is in the test"

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"stream_minutes": 0.0}, "--stream-minutes"),
            ({"negative_hours": -1.0}, "--negative-hours"),
            ({"negative_hours": float("inf")}, "--negative-hours"),
            ({"snr_db": (30.0, 10.0)}, "--snr-db"),
            ({"tolerance": -1.0}, "--tolerance"),
            ({"latency_runs": 0}, "--latency-runs"),
            ({"negatives": (Path("/nonexistent/negatives"),)}, "does not exist"),
            ({"carry_state": True}, "--carry-state needs --negative-hours"),
            ({"carry_state": True, "negative_hours": 1.0, "verifier": Path("v.onnx")}, "cannot be combined"),
        ],
    )
    def test_validation(self, change: dict, message: str) -> None:
        from kws.bench import BenchError

        options = dataclasses.replace(_parse(["--checkpoint", "c", "--data", "A", "--out", "o"]), **change)
        with pytest.raises(BenchError, match=message):
            options.validate()


# --------------------------------------------------------------------------------------------------------
# The typed report


def _figures(cls: type = DetectionFigures, threshold: float = 0.5, **extra: float) -> DetectionFigures:
    return cls(
        threshold=threshold, keyword_events=10, hits=9, recall=0.9, miss_rate=0.1, false_accepts=2,
        false_accepts_in_keyword_windows=1, false_accepts_by_context={"keyword window": 1, "noise": 1},
        fa_per_hour=2.5, fa_per_hour_upper95=7.9, fa_per_hour_stream=2.0, fa_per_hour_nonkeyword=1.25,
        stream_hours=1.0, nonkeyword_hours=0.8, latency_median_s=0.2, latency_p90_s=0.35,
        per_keyword={"yes": KeywordFigures(5, 5, 1.0, 1, 0.2), "no": KeywordFigures(5, 4, 0.8, 1, 0.25)},
        **extra,
    )  # fmt: skip


def sample_report(tolerance: float = 1.0) -> BenchReport:
    """A small report with every field set (finite figures, so that it compares equal to itself)."""
    per_class = {k: ClassFigures(0.9, (0.8, 0.95), 0.85, (0.7, 0.93), 0.87, 20) for k in LABELS}
    accuracy = AccuracyFigures(0.875, (0.8, 0.92), 80, per_class, 1.0, ((18, 2, 0, 0), (1, 19, 0, 0)) * 2)
    comp = StreamComposition(
        seconds=600.0, keyword_events=10, keyword_clips=10, keyword_clips_available=12, keyword_reuses=0,
        keyword_seconds=25.0, keyword_word_seconds=5.0, keywords_per_label={"no": 5, "yes": 5}, unknown_events=3,
        unknown_clips=3, unknown_reuses=0, unknown_seconds=3.0, negative_events=20, negative_files=20,
        negative_files_available=40, negative_reuses=0, negative_seconds=500.0, noise_only_seconds=72.0,
        noise_source="white noise", snr_db=(10.0, 30.0), gap_seconds=(1.0, 2.0), seed=0,
        notes=("a note on the stream",),
    )  # fmt: skip
    files = {k: ModelFileInfo(f"m/kws.{k}.onnx", 100_000, "dynamic") for k in ("clip", "stream", "clip_int8")}
    return BenchReport(
        kws_version="0.1.0",
        date="2026-12-01T12:00:00+00:00",
        command=f"kws bench --checkpoint best.pt --tolerance {tolerance:g} --out o",
        cwd="main",
        machine=Machine("a CPU", 2, 2, 2**31, "Linux", "x86_64", (0.5, 0.4, 0.3), {"python": "3.11"}, (1.0, 0.5, 0.4)),
        checkpoint=CheckpointInfo("runs/best.pt", 3_000_000, 1_000_000, LABELS, {"accuracy": 0.9, "clips": 80}),
        models=ModelsInfo("given: m", ("a note on the models",), {**files, "stream_int8": files["clip_int8"]}),
        data=DataInfo(("test_set",), "test", "official", "the checkpoint's", 80, 8, {k: 20 for k in LABELS}, 0, None),
        accuracy=dict.fromkeys(MODELS, accuracy),
        latency={m: Latency(1.5, 2.0, 5) for m in MODELS[:3]},
        stream=StreamInfo(comp, None, (StreamEvent(KIND_KEYWORD, "yes", "a.wav", 1.0, 2.0, 1.1, 1.6, 0, 0.0, 20.0),)),
        streaming=Streaming(
            model="m/kws.stream.int8.onnx",
            quantization="dynamic",
            config={"threshold": 0.5, "chunk_ms": 100.0, "lanes": 2, "thresholds": None},
            stats={
                "cpu_ms_per_audio_second": 3.5,
                "real_time_factor": 0.004,
                "model_calls": 9,
                "audio_seconds": 600.0,
                "model_ms_per_call": 0.2,
            },  # fmt: skip
            default=_figures(OperatingPoint, latency_buffered_median_s=0.25, latency_buffered_p90_s=0.4),
            replay_matches_live=True,
            sweep=(_figures(threshold=0.3), _figures(threshold=0.5)),
            detections=(Detection(1.8, "yes", 0.97),),
            tolerance_s=tolerance,
        ),
        targets=targets(),
        anchors=anchors(),
        timing_s={"accuracy": 1.0, "total": 2.0},
    )


class TestReportJson:
    """bench.json is the typed report, and reads back into it."""

    def test_round_trip(self) -> None:
        report = sample_report()
        text = report.to_json()
        again = BenchReport.from_json(text)
        assert again == report and again.to_json() == text
        assert isinstance(again.streaming.default, OperatingPoint)
        assert isinstance(again.accuracy["ONNX int8"].per_class["yes"], ClassFigures)

    def test_key_names_are_those_of_the_old_reports(self) -> None:
        data = json.loads(sample_report().to_json())
        assert list(data) == [
            "kws_version", "date", "command", "cwd", "machine", "checkpoint", "models", "data", "accuracy",
            "latency", "stream", "streaming", "targets", "anchors", "timing_s",
        ]  # fmt: skip
        assert list(data["streaming"]["default"])[-3:] == [
            "per_keyword",
            "latency_buffered_median_s",
            "latency_buffered_p90_s",
        ]
        assert data["accuracy"]["PyTorch"]["per_class"]["yes"]["recall_ci95"] == [0.7, 0.93]
        assert data["machine"]["load_average_end"] == [1.0, 0.5, 0.4]

    def test_nan_is_written_as_null(self) -> None:
        report = sample_report()
        nan = dataclasses.replace(report.streaming.default, latency_median_s=float("nan"))
        report = dataclasses.replace(report, streaming=dataclasses.replace(report.streaming, default=nan))
        text = report.to_json()
        assert json.loads(text)["streaming"]["default"]["latency_median_s"] is None
        assert "NaN" not in text
        assert BenchReport.from_json(text).streaming.default.latency_median_s is None

    def test_a_report_from_before_the_tolerance_field_reads(self) -> None:
        data = json.loads(sample_report().to_json())
        del data["streaming"]["tolerance_s"]
        report = BenchReport.from_json(json.dumps(data))
        assert report.streaming.tolerance_s == 1.0
        assert report.streaming.sweep[1] == sample_report().streaming.sweep[1]


class TestPublishedFigures:
    """Targets and anchors are data shipped with the package."""

    def test_targets_and_anchors(self) -> None:
        assert targets().accuracy == 0.92 and targets().fa_per_hour == 0.5
        assert [a.figure for a in anchors()][:2] == ["94.8% accuracy", "97.3% accuracy"]

    def test_the_file_is_package_data(self) -> None:
        text = (REPO / "pyproject.toml").read_text()
        assert '"kws.bench" = ["anchors.json"]' in text and '"kws.bench"' in text.split("packages = ")[1]


class TestMarkdown:
    """bench.md states the report's own matching tolerance and every section."""

    @pytest.mark.parametrize("tolerance", [1.0, 0.25])
    def test_tolerance_comes_from_the_report(self, tolerance: float) -> None:
        from kws.bench.markdown import format_markdown

        md = format_markdown(sample_report(tolerance))
        assert f"between the start of a k event and {tolerance:g} s after the end of its word" in md

    def test_sections_and_figures(self) -> None:
        from kws.bench.markdown import format_markdown

        md = format_markdown(sample_report())
        for text in ("## The project's requirements", "> **Warning:** a note on the models", "- a note on the stream"):
            assert text in md
        assert "| 0.5 (default) | 90.0% | 10.0% | 2 | 2.50 |" in md
        assert md.endswith("Stage times (s): accuracy 1.0, total 2.0\n")

    def test_undefined_figures_are_na(self) -> None:
        from kws.bench.markdown import format_markdown

        report = sample_report()
        none = dataclasses.replace(report.streaming.default, latency_median_s=None, fa_per_hour=math.nan)
        md = format_markdown(dataclasses.replace(report, streaming=dataclasses.replace(report.streaming, default=none)))
        assert "| median detection latency (detection time - end of the word) | n/a | <= 250 ms | FAIL |" in md


def test_model_card_reads_the_typed_report() -> None:
    spec = importlib.util.spec_from_file_location("model_card", REPO / "scripts" / "model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    report = BenchReport.from_json(sample_report().to_json())
    lines = card.evaluation_lines(report)
    assert "Test split: 80 clips, 8 speakers, from `test_set`." in lines
    assert "| ONNX int8 streaming | 87.50% |" in lines
    assert any("keyword recall 90.00%, 2.5 false accepts per hour" in x and "200 ms" in x for x in lines)
