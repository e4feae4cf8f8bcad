"""``kws bench --verifier`` end to end on the tiny trained model with a stand-in verifier made in the test: the
verified runs see exactly the first stage's detections of the plain runs ("without" = the bench's own figures),
the figures "with" follow from the checks, and the report has its section."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bench_command import _bench, models, needs_training_stack, negatives  # noqa: F401 (fixtures)

from support.verifier_models import make_stand_in_verifier


@pytest.fixture(scope="module")
def verified(tiny_checkpoint, models, full_dataset, negatives, tmp_path_factory) -> SimpleNamespace:  # noqa: F811
    from kws.runtime import load_model

    tmp = tmp_path_factory.mktemp("bench_verifier")
    labels = load_model(models / "kws.stream.int8.onnx").info.labels
    verifier = make_stand_in_verifier(tmp / "v.onnx", labels, window_ms=400)
    out = tmp / "out"
    report = _bench(tiny_checkpoint, models, full_dataset, negatives, out, "--negative-hours", "0.05", "--verifier",
                    str(verifier))  # fmt: skip
    return SimpleNamespace(out=out, report=report, verifier=verifier)


@needs_training_stack
def test_without_is_the_first_stage_and_with_follows_the_checks(verified) -> None:
    r = verified.report
    v = r["verifier"]
    assert v["threshold"] == 0.5 and v["window_ms"] == 400 and v["path"] == str(verified.verifier)
    mixed, default = v["mixed"]["at_threshold"], r["streaming"]["default"]
    assert (mixed["hits_without"], mixed["false_accepts_without"]) == (default["hits"], default["false_accepts"])
    assert mixed["keyword_events"] == default["keyword_events"]
    negative = v["negative"]["at_threshold"]
    assert negative["false_accepts_without"] == r["negative_stream"]["total"]["false_accepts"]
    assert v["mixed"]["cost"]["checks"] == default["hits"] + default["false_accepts"]
    for stream in (v["mixed"], v["negative"]):
        zero = next(p for p in stream["sweep"] if p["threshold"] == 0.0)
        assert (zero["hits"], zero["false_accepts"]) == (zero["hits_without"], zero["false_accepts_without"])
        counts = [p["false_accepts"] for p in stream["sweep"]]
        assert counts == sorted(counts, reverse=True), "a higher verifier threshold never adds a false accept"
    combined = v["combined"]
    assert combined["false_accepts"] == mixed["false_accepts"] + negative["false_accepts"]
    lost = (combined["hits_without"] - combined["hits"]) / combined["keyword_events"]
    cut = combined["false_accepts_without"] / max(combined["false_accepts"], 1e-9)
    assert v["meets_rule"] == (lost <= 0.01 and combined["false_accepts_without"] > 0 and cut >= 5)


@needs_training_stack
def test_report_section_and_json_round_trip(verified) -> None:
    from kws.bench.report import BenchReport

    md = (verified.out / "bench.md").read_text()
    assert "## Second-stage verifier" in md and "ms CPU per check" in md and "Verifier threshold sweep" in md
    report = BenchReport.read(verified.out / "bench.json")
    assert report.verifier is not None and report.verifier.mixed.at_threshold.threshold == 0.5
    assert json.loads(report.to_json())["verifier"] == verified.report["verifier"]
    assert "--verifier" in verified.report["command"]
    assert Path(verified.report["verifier"]["path"]).name == "v.onnx"
