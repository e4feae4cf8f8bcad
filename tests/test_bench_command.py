"""kws bench end to end on the tiny trained fixture model: the report's structure, figures that follow from
what was measured, a deliberately broken model measured as broken, the JSON read back into the typed report
and the markdown made from it; errors as one-line messages.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from kws.bench.events import KIND_KEYWORD
from kws.cli import main
from support.synthetic import OTHER_WORDS, SAMPLE_RATE, synth_word

NOISE_LEVEL = 0.003
"""RMS of the synthetic negatives' own noise floor."""

# --------------------------------------------------------------------------------------------------------
# The command end to end on the tiny trained model

MISSING = [m for m in ("torch", "onnxscript", "matplotlib") if importlib.util.find_spec(m) is None]
needs_training_stack = pytest.mark.skipif(bool(MISSING), reason=f"kws bench needs {', '.join(MISSING)}")

BROKEN_BIAS = 1000.0
"""Added to the _silence_ logit of the broken model: it answers _silence_ to everything."""


def _export_all(checkpoint: Path, out: Path) -> Path:
    """NAME.onnx, NAME.int8.onnx, NAME.stream.onnx and NAME.stream.int8.onnx of ``checkpoint`` in ``out``
    (dynamic int8, no checks: the bench measures them)."""
    from kws.export.options import ExportOptions
    from kws.export.pipeline import export_files

    export_files(checkpoint, out, ExportOptions(quantization="dynamic"))
    return out


def _break_models(models: Path, out: Path) -> Path:
    """Copies of the four files whose classifier bias makes _silence_ win every frame."""
    import onnx
    from onnx import numpy_helper

    out.mkdir(parents=True, exist_ok=True)
    for path in models.glob("kws*.onnx"):
        proto = onnx.load(str(path))
        bias = [i for i in proto.graph.initializer if i.name.endswith("head.bias")]
        assert len(bias) == 1, f"{path.name}: no classifier bias initializer named *head.bias"
        value = numpy_helper.to_array(bias[0]).copy()
        value[0] += BROKEN_BIAS
        bias[0].CopyFrom(numpy_helper.from_array(value, bias[0].name))
        onnx.save(proto, str(out / path.name))
    return out


def _break_checkpoint(checkpoint: Path, path: Path) -> Path:
    from kws.model.checkpoint import checkpoint_weights, load_checkpoint, save_checkpoint

    payload = load_checkpoint(checkpoint)
    checkpoint_weights(payload)["head.bias"][0] += BROKEN_BIAS
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="module")
def negatives(tmp_path_factory) -> Path:
    """Non-keyword "speech": the fixture's other words (learnt as _unknown_), as 22.05 kHz FLAC files."""
    import soxr

    root = tmp_path_factory.mktemp("negatives")
    rng = np.random.default_rng(7)
    for i in range(8):
        parts = []
        for word in rng.choice(OTHER_WORDS, size=int(rng.integers(1, 4))):
            parts += [
                synth_word(str(word), rng),
                np.zeros(round(rng.uniform(0.2, 0.6) * SAMPLE_RATE), np.float32),
            ]
        audio = np.concatenate(parts)
        audio += rng.standard_normal(len(audio)).astype(np.float32) * NOISE_LEVEL
        folder = root / ("group_a" if i % 2 else "group_b")
        folder.mkdir(exist_ok=True)
        sf.write(folder / f"{i}.flac", soxr.resample(audio, SAMPLE_RATE, 22050), 22050)
    return root


@pytest.fixture(scope="module")
def models(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    return _export_all(tiny_checkpoint, tmp_path_factory.mktemp("bench_models"))


def _bench(checkpoint: Path, models: Path | None, data: Path, negatives: Path, out: Path, *extra: str) -> dict:
    argv = [
        "bench",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--negatives",
        str(negatives),
        "--stream-minutes",
        "1",
        "--latency-runs",
        "5",
        "--snr-db",
        "20",
        "30",
        "--out",
        str(out),
        *extra,
    ]
    if models is not None:
        argv += ["--models", str(models)]
    assert main(argv) == 0
    return json.loads((out / "bench.json").read_text())


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, models, full_dataset, negatives, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("bench_trained")
    return SimpleNamespace(out=out, report=_bench(tiny_checkpoint, models, full_dataset, negatives, out))


@pytest.fixture(scope="module")
def broken(tiny_checkpoint, models, full_dataset, negatives, tmp_path_factory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("bench_broken")
    checkpoint = _break_checkpoint(tiny_checkpoint, tmp / "broken.pt")
    broken_models = _break_models(models, tmp / "models")
    out = tmp / "out"
    return SimpleNamespace(out=out, report=_bench(checkpoint, broken_models, full_dataset, negatives, out))


MODELS = ("PyTorch", "ONNX fp32", "ONNX int8", "ONNX int8 streaming")


@needs_training_stack
class TestBenchReport:
    """The command writes the markdown report, the JSON and both plots, with every section asked for."""

    def test_writes_every_output(self, trained) -> None:
        for name in ("bench.md", "bench.json"):
            assert (trained.out / name).stat().st_size > 0
        for name in ("accuracy.png", "det_curve.png"):
            assert (trained.out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not (trained.out / "stream.wav").exists(), "the stream is deleted without --keep-stream"

    def test_markdown_states_machine_data_stream_and_command(self, trained) -> None:
        md = (trained.out / "bench.md").read_text()
        r = trained.report
        for heading in (
            "## The project's requirements",
            "## Published figures (other data",
            "## Machine",
            "## Test data",
            "## Accuracy",
            "## Size and speed",
            "## Streaming detection",
            "### The stream",
            "### At the shipped defaults",
            "### Threshold sweep",
            "## Caveats",
        ):
            assert heading in md, heading
        assert r["command"] in md and "--stream-minutes 1" in r["command"]
        assert r["machine"]["cpu"] in md and f"{r['machine']['cores']} cores" in md
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file() and "model name" in cpuinfo.read_text():
            model_name = next(x for x in cpuinfo.read_text().splitlines() if x.startswith("model name"))
            assert r["machine"]["cpu"] == model_name.split(":", 1)[1].strip()
        assert f"{r['data']['speakers']} speakers" in md
        comp = r["stream"]["composition"]
        assert f"{comp['keyword_events']} events" in md and f"{comp['negative_events']} events" in md
        for anchor in ("94.8%", "97.3%", "openWakeWord", "< 0.5 false accepts per hour"):
            assert anchor in md

    def test_operating_point_is_the_shipped_default(self, trained) -> None:
        from kws.runtime import SpotterConfig

        default = SpotterConfig()
        st = trained.report["streaming"]
        assert st["config"]["threshold"] == default.threshold and st["config"]["lanes"] == default.lanes
        assert f"threshold {default.threshold:g}" in (trained.out / "bench.md").read_text()
        assert st["replay_matches_live"], "the recorded trace must reproduce the live run's detections"
        row = next(r for r in st["sweep"] if r["threshold"] == default.threshold)
        for key in ("hits", "false_accepts", "recall", "fa_per_hour", "latency_median_s"):
            assert row[key] == st["default"][key], key

    def test_stream_is_as_long_as_asked(self, trained) -> None:
        comp = trained.report["stream"]["composition"]
        events = trained.report["stream"]["events"]
        assert 60.0 <= comp["seconds"] <= 60.0 + 10.0
        assert comp["keyword_events"] == sum(e["kind"] == KIND_KEYWORD for e in events) > 0
        assert comp["negative_events"] > 0 and comp["unknown_events"] > 0
        assert all(a["end"] <= b["start"] for a, b in zip(events, events[1:], strict=False))
        assert trained.report["streaming"]["stats"]["audio_seconds"] == pytest.approx(comp["seconds"], abs=0.01)


NEGATIVE_HOURS = 0.05
"""The end-to-end negative stream: 3 min, in three passes of the fixture's material."""


@pytest.fixture(scope="module")
def negative_run(tiny_checkpoint, models, full_dataset, negatives, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("bench_negative")
    extra = ("--negative-hours", f"{NEGATIVE_HOURS:g}", "--keep-stream")
    return SimpleNamespace(out=out, report=_bench(tiny_checkpoint, models, full_dataset, negatives, out, *extra))


@needs_training_stack
class TestNegativeStream:
    """--negative-hours H: H hours of labelled passes through the live path; without it nothing changes."""

    def test_without_the_option_the_report_is_as_before(self, trained) -> None:
        assert "negative_stream" not in trained.report and "--negative-hours" not in trained.report["command"]
        assert "negative stream" not in (trained.out / "bench.md").read_text().lower()
        assert "negative stream" not in trained.report["timing_s"]

    def test_passes_add_up_to_the_hours_through_the_runtime(self, negative_run) -> None:
        n = negative_run.report["negative_stream"]
        assert f"--negative-hours {NEGATIVE_HOURS:g}" in negative_run.report["command"]
        assert len(n["passes"]) > 1 and n["seconds"] == pytest.approx(NEGATIVE_HOURS * 3600)
        assert sum(p["seconds"] for p in n["passes"]) == pytest.approx(NEGATIVE_HOURS * 3600)
        assert n["stats"]["audio_seconds"] == pytest.approx(NEGATIVE_HOURS * 3600)  # every sample was streamed
        assert n["stats"]["passes"] == len(n["passes"]) and n["wall_seconds"] > 0
        assert n["real_speech_files"] > 0 and n["unknown_clips"] > 0
        with sf.SoundFile(negative_run.out / "negative_stream.wav") as kept:
            assert kept.frames == round(NEGATIVE_HOURS * 3600 * kept.samplerate)

    def test_each_pass_is_labelled_as_it_was_mixed(self, negative_run) -> None:
        from kws.bench.negative_passes import PASS_CONDITIONS

        n = negative_run.report["negative_stream"]
        for p in n["passes"]:
            condition = PASS_CONDITIONS[p["index"] % len(PASS_CONDITIONS)]
            assert tuple(p["snr_db"]) == (condition.snr_db or (20.0, 30.0))
            assert tuple(p["gain_db"]) == condition.gain_db
            assert (p["reverb"] == "none") == (condition.rt60_s is None) == (p["rt60_s"] is None)
            assert p["real_speech_events"] > 0 and p["unknown_events"] > 0
        assert n["passes"][0]["noise"] == n["noise_source"] != n["passes"][1]["noise"]
        assert "RT60" in n["passes"][1]["reverb"]

    def test_false_accepts_add_up(self, negative_run) -> None:
        r = negative_run.report
        n = r["negative_stream"]
        assert n["total"]["false_accepts"] == sum(p["total"]["false_accepts"] for p in n["passes"])
        assert n["real_speech"]["false_accepts"] == sum(p["real_speech"]["false_accepts"] for p in n["passes"])
        assert sum(f["false_accepts"] for f in n["per_keyword"].values()) == n["total"]["false_accepts"]
        default = next(s for s in n["sweep"] if s["threshold"] == n["threshold"])
        assert default["negative"] == n["total"]
        mixed = r["streaming"]["default"]
        assert default["combined"]["false_accepts"] == mixed["false_accepts"] + n["total"]["false_accepts"]
        assert default["recall"] == mixed["recall"]
        counts = [s["negative"]["false_accepts"] for s in n["sweep"]]
        assert counts == sorted(counts, reverse=True)  # a higher threshold never adds a false accept
        assert not n["notes"] or all("replay" not in x for x in n["notes"])

    def test_report_and_markdown(self, negative_run) -> None:
        from kws.bench.markdown import format_markdown
        from kws.bench.report import BenchReport

        text = (negative_run.out / "bench.json").read_text()
        report = BenchReport.from_json(text)
        assert report.to_json() == text
        md = (negative_run.out / "bench.md").read_text()
        assert format_markdown(report) == md
        assert f"### The negative stream ({NEGATIVE_HOURS:g} h" in md and "**real speech only**" in md
        assert "### Threshold sweep with the negative stream" in md


@pytest.fixture(scope="module")
def carried_run(tiny_checkpoint, models, full_dataset, negatives, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("bench_negative_carried")
    extra = ("--negative-hours", f"{NEGATIVE_HOURS:g}", "--carry-state")
    return SimpleNamespace(out=out, report=_bench(tiny_checkpoint, models, full_dataset, negatives, out, *extra))


@needs_training_stack
def test_carry_state_runs_the_passes_as_one_stream(negative_run, carried_run) -> None:
    """--carry-state: the same passes, never reset (the drift check): pass 0 is the same, later passes start
    from the state the previous one left, and the report says so."""
    fresh, carried = negative_run.report["negative_stream"], carried_run.report["negative_stream"]
    assert carried["carried"] is True and fresh["carried"] is False
    assert [p["seconds"] for p in carried["passes"]] == [p["seconds"] for p in fresh["passes"]]
    assert carried["stats"]["audio_seconds"] == pytest.approx(NEGATIVE_HOURS * 3600)
    states = [p["state_max_abs"] for p in carried["passes"]]
    assert all(np.isfinite(states)) and states[0] == fresh["passes"][0]["state_max_abs"]
    assert carried["passes"][0]["total"] == fresh["passes"][0]["total"]
    assert states[1:] != [p["state_max_abs"] for p in fresh["passes"][1:]], "later passes carry the state"
    assert "`--carry-state`" in (carried_run.out / "bench.md").read_text()


@needs_training_stack
class TestFiguresAreMeasured:
    """Every figure follows from what was measured: counts give the rates, the files give the sizes, and a
    deliberately broken model is measured as broken."""

    def test_accuracy_and_recall_follow_from_the_confusion_matrix(self, trained) -> None:
        for name in MODELS:
            a = trained.report["accuracy"][name]
            cm = np.asarray(a["confusion_matrix"])
            assert a["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
            assert cm.sum() == trained.report["data"]["clips"]
            for i, label in enumerate(trained.report["checkpoint"]["labels"]):
                assert a["per_class"][label]["recall"] == pytest.approx(cm[i, i] / max(cm[i].sum(), 1))

    def test_detection_rates_follow_from_the_counts(self, trained) -> None:
        for r in [trained.report["streaming"]["default"], *trained.report["streaming"]["sweep"]]:
            assert r["recall"] == pytest.approx(r["hits"] / r["keyword_events"])
            assert r["fa_per_hour"] == pytest.approx(r["false_accepts"] / r["nonkeyword_hours"])
            assert r["fa_per_hour_upper95"] >= r["fa_per_hour"]
        detections = trained.report["streaming"]["detections"]
        d = trained.report["streaming"]["default"]
        assert d["hits"] + d["false_accepts"] == len(detections)

    def test_sizes_are_the_files_and_timings_are_measured(self, trained, models) -> None:
        files = trained.report["models"]["files"]
        for key, name in (
            ("clip", "kws.onnx"),
            ("clip_int8", "kws.int8.onnx"),
            ("stream_int8", "kws.stream.int8.onnx"),
        ):
            assert files[key]["size_bytes"] == (models / name).stat().st_size
        assert files["clip_int8"]["size_bytes"] < files["clip"]["size_bytes"]
        for name in ("PyTorch", "ONNX fp32", "ONNX int8"):
            lat = trained.report["latency"][name]
            assert 0 < lat["median_ms"] <= lat["p95_ms"]
        assert trained.report["streaming"]["stats"]["cpu_ms_per_audio_second"] > 0

    def test_trained_model_finds_keywords(self, trained) -> None:
        acc = trained.report["accuracy"]
        assert min(acc[name]["accuracy"] for name in MODELS) > 0.7, "the synthetic words are easy"
        assert trained.report["streaming"]["default"]["hits"] > 0

    def test_broken_model_is_measured_as_broken(self, trained, broken) -> None:
        """A model that answers _silence_ to everything: accuracy is the share of _silence_ clips, nothing
        is ever detected; the same data and stream give the trained model other figures."""
        per_class = broken.report["data"]["per_class"]
        silence_share = per_class["_silence_"] / sum(per_class.values())
        for name in MODELS:
            assert broken.report["accuracy"][name]["accuracy"] == pytest.approx(silence_share)
            assert trained.report["accuracy"][name]["accuracy"] > silence_share
        b = broken.report["streaming"]
        assert b["detections"] == [] and all(r["hits"] == 0 and r["false_accepts"] == 0 for r in b["sweep"])
        assert b["default"]["recall"] == 0.0 and b["default"]["latency_median_s"] is None
        assert broken.report["stream"]["events"] == trained.report["stream"]["events"], "same seed, same stream"
        assert "FAIL" in (broken.out / "bench.md").read_text()


@needs_training_stack
class TestTypedReport:
    """bench.json reads back into the typed report unchanged, and the markdown made from it is bench.md."""

    def test_json_round_trip(self, trained) -> None:
        from kws.bench.report import BenchReport

        text = (trained.out / "bench.json").read_text()
        report = BenchReport.from_json(text)
        assert report.to_json() == text
        assert report.streaming.tolerance_s == 1.0 and "--tolerance 1 " in report.command

    def test_markdown_from_the_json_is_the_report(self, trained, broken) -> None:
        from kws.bench.markdown import format_markdown
        from kws.bench.report import BenchReport

        for run in (trained, broken):
            report = BenchReport.read(run.out / "bench.json")
            assert format_markdown(report) == (run.out / "bench.md").read_text()


@needs_training_stack
class TestErrors:
    """Bad inputs are one-line errors (exit 2) before the slow work."""

    def _run(self, capsys, checkpoint: Path, data: Path, out: Path, *extra: str) -> str:
        """The one-line error of ``kws bench --checkpoint CHECKPOINT --data DATA EXTRA... --out OUT``."""
        argv = ["bench", "--checkpoint", str(checkpoint), "--data", str(data), *extra, "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    def test_missing_model_files(self, tiny_checkpoint, full_dataset, tmp_path, capsys) -> None:
        (tmp_path / "models").mkdir()
        err = self._run(capsys, tiny_checkpoint, full_dataset, tmp_path / "out", "--models", str(tmp_path / "models"))
        assert "kws.stream.int8.onnx" in err

    def test_models_of_another_label_set(self, tiny_checkpoint, models, full_dataset, tmp_path, capsys) -> None:
        import onnx

        from kws.format import META_LABELS

        other = tmp_path / "other"
        shutil.copytree(models, other)
        proto = onnx.load(str(other / "kws.int8.onnx"))
        for prop in proto.metadata_props:
            if prop.key == META_LABELS:
                prop.value = json.dumps(["_silence_", "_unknown_", "left", "right", "on", "off"])
        onnx.save(proto, str(other / "kws.int8.onnx"))
        err = self._run(capsys, tiny_checkpoint, full_dataset, tmp_path / "out", "--models", str(other))
        assert "labels" in err and "kws.int8.onnx" in err

    @pytest.mark.parametrize(
        ("option", "value", "message"),
        [
            ("--negatives", "/nonexistent/negatives", "does not exist"),
            ("--stream-minutes", "0", "--stream-minutes"),
            ("--snr-db", "30 10", "--snr-db"),
        ],
    )
    def test_bad_options(self, tiny_checkpoint, full_dataset, tmp_path, capsys, option, value, message) -> None:
        err = self._run(capsys, tiny_checkpoint, full_dataset, tmp_path / "out", option, *value.split())
        assert message in err

    def test_missing_data_folder(self, tiny_checkpoint, tmp_path, capsys) -> None:
        err = self._run(capsys, tiny_checkpoint, tmp_path / "nothing", tmp_path / "out")
        assert "does not exist" in err


@pytest.mark.slow
@needs_training_stack
def test_without_models_the_checkpoint_is_exported(tiny_checkpoint, full_dataset, negatives, tmp_path) -> None:
    """No --models: the checkpoint is exported into OUT/models (the bench measures the files itself; any note
    about them is stated in the report)."""
    report = _bench(tiny_checkpoint, None, full_dataset, negatives, tmp_path / "out", "--stream-minutes", "0.5")
    assert "exported by kws bench" in report["models"]["origin"]
    assert Path(report["streaming"]["model"]).is_file()
    md = (tmp_path / "out" / "bench.md").read_text()
    assert all(note in md for note in report["models"]["notes"])
