"""kws bench: the long test stream (word boundaries, composition, rendering), the scoring of detections, and
the command end to end on the tiny trained fixture model (report structure; figures that follow from what was
measured, a deliberately broken model measured as broken); errors as one-line messages.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from kws.cli import main
from kws.streamset import (
    GAP_SECONDS,
    KEYWORD_SHARE_MAX,
    KEYWORD_SHARE_MIN,
    KIND_KEYWORD,
    KIND_NEGATIVE,
    KIND_UNKNOWN,
    StreamEvent,
    Utterance,
    composition,
    negative_utterances,
    plan_stream,
    poisson_upper,
    render_stream,
    score_detections,
    word_span,
)
from support.synthetic import KEYWORDS, OTHER_WORDS, SAMPLE_RATE, WORD_SECONDS, synth_word

NOISE_LEVEL = 0.003
"""RMS of the synthetic clips' own noise floor."""


def _clip_with_word(word: str, start: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clip = (rng.standard_normal(round(seconds * SAMPLE_RATE)) * NOISE_LEVEL).astype(np.float32)
    w = synth_word(word, rng)
    i = round(start * SAMPLE_RATE)
    clip[i : i + len(w)] += w
    return clip


# --------------------------------------------------------------------------------------------------------
# Where the spoken word ends


class TestWordSpan:
    """The word's boundaries come from the clip's energy envelope, wherever the word is."""

    @pytest.mark.parametrize("start", [0.05, 0.3, 0.5])
    def test_boundaries_follow_the_word(self, start: float) -> None:
        span = word_span(_clip_with_word("yes", start), SAMPLE_RATE)
        assert span.start == pytest.approx(start, abs=0.03)
        assert span.end == pytest.approx(start + WORD_SECONDS, abs=0.03)

    def test_a_click_after_the_word_does_not_move_its_end(self) -> None:
        clip = _clip_with_word("no", 0.1)
        click = round((0.1 + WORD_SECONDS + 0.3) * SAMPLE_RATE)
        clip[click : click + 80] += 0.3
        assert word_span(clip, SAMPLE_RATE).end == pytest.approx(0.1 + WORD_SECONDS, abs=0.03)

    def test_a_short_closure_inside_a_word_is_bridged(self) -> None:
        """Like the closure before the final /p/ of "stop": two bursts 80 ms apart are one word."""
        clip = _clip_with_word("up", 0.1)
        second = round((0.1 + WORD_SECONDS + 0.08) * SAMPLE_RATE)
        burst = synth_word("up", np.random.default_rng(1))[: SAMPLE_RATE // 10] * 0.5
        clip[second : second + len(burst)] += burst
        assert word_span(clip, SAMPLE_RATE).end == pytest.approx(0.1 + WORD_SECONDS + 0.08 + 0.1, abs=0.03)

    def test_active_level_is_the_speech_level(self) -> None:
        clip = _clip_with_word("down", 0.2)
        loud = word_span(clip * 10, SAMPLE_RATE).active_rms
        assert loud == pytest.approx(10 * word_span(clip, SAMPLE_RATE).active_rms, rel=1e-3)
        assert loud > 10 * NOISE_LEVEL * 10


# --------------------------------------------------------------------------------------------------------
# Stream composition


def _keywords(per_label: int, seconds: float = 1.0) -> list[Utterance]:
    return [Utterance(KIND_KEYWORD, k, f"{k}/{i}.wav", seconds) for k in KEYWORDS for i in range(per_label)]


def _pool(kind: str, n: int, seconds: float) -> list[Utterance]:
    return [Utterance(kind, kind, f"{kind}/{i}.wav", seconds) for i in range(n)]


def _planned_seconds(plan) -> float:
    return sum(p.utterance.seconds + p.gap_seconds for p in plan)


class TestStreamPlan:
    """Every keyword clip once while keywords take 25-50% of the stream; a balanced subset below, reuse above;
    unknown clips once each, negatives fill the rest; the requested duration is met."""

    def test_every_keyword_clip_once_when_it_fits(self) -> None:
        keywords = _keywords(5)  # 20 clips, ~50 s of keyword slots
        seconds = 150.0
        assert KEYWORD_SHARE_MIN * seconds <= 20 * (1 + np.mean(GAP_SECONDS)) <= KEYWORD_SHARE_MAX * seconds
        plan = plan_stream(keywords, _pool(KIND_UNKNOWN, 4, 1.0), _pool(KIND_NEGATIVE, 30, 3.0), seconds, seed=0)
        used = Counter(p.utterance.source for p in plan if p.utterance.kind == KIND_KEYWORD)
        assert set(used) == {u.source for u in keywords} and set(used.values()) == {1}
        assert all(p.use == 0 and p.gain_db == 0.0 for p in plan if p.utterance.kind == KIND_KEYWORD)

    def test_short_stream_takes_a_class_balanced_subset(self) -> None:
        plan = plan_stream(_keywords(5), [], _pool(KIND_NEGATIVE, 5, 2.0), 40.0, seed=0)
        kw = [p for p in plan if p.utterance.kind == KIND_KEYWORD]
        assert len(kw) == int(KEYWORD_SHARE_MAX * 40.0 / (1 + np.mean(GAP_SECONDS)))
        assert len({p.utterance.source for p in kw}) == len(kw)
        counts = Counter(p.utterance.label for p in kw).values()
        assert max(counts) - min(counts) <= 1

    def test_long_stream_reuses_clips_at_other_gains(self) -> None:
        keywords = _keywords(2)  # 8 clips
        plan = plan_stream(keywords, [], _pool(KIND_NEGATIVE, 5, 2.0), 400.0, seed=0)
        kw = [p for p in plan if p.utterance.kind == KIND_KEYWORD]
        assert len(kw) >= KEYWORD_SHARE_MIN * 400.0 / (1 + np.mean(GAP_SECONDS))
        uses = Counter(p.utterance.source for p in kw)
        assert max(uses.values()) - min(uses.values()) <= 1, "clips are reused in turn"
        reused = [p for p in kw if p.use > 0]
        assert reused and len({round(p.gain_db, 3) for p in reused}) > 1

    def test_unknown_clips_once_then_negatives_fill_the_duration(self) -> None:
        unknowns, negatives = _pool(KIND_UNKNOWN, 6, 1.0), _pool(KIND_NEGATIVE, 4, 3.0)
        seconds = 200.0
        plan = plan_stream(_keywords(5), unknowns, negatives, seconds, seed=3)
        unk = Counter(p.utterance.source for p in plan if p.utterance.kind == KIND_UNKNOWN)
        assert set(unk) == {u.source for u in unknowns} and set(unk.values()) == {1}
        neg = Counter(p.utterance.source for p in plan if p.utterance.kind == KIND_NEGATIVE)
        assert set(neg) == {u.source for u in negatives} and max(neg.values()) - min(neg.values()) <= 1
        assert seconds <= _planned_seconds(plan) <= seconds + 3.0 + GAP_SECONDS[1]

    def test_without_negatives_unknown_clips_are_reused(self) -> None:
        plan = plan_stream(_keywords(3), _pool(KIND_UNKNOWN, 3, 1.0), [], 120.0, seed=0)
        unk = Counter(p.utterance.source for p in plan if p.utterance.kind == KIND_UNKNOWN)
        assert len(unk) == 3 and max(unk.values()) > 1
        assert _planned_seconds(plan) >= 120.0

    def test_seeded(self) -> None:
        args = (_keywords(3), _pool(KIND_UNKNOWN, 3, 1.0), _pool(KIND_NEGATIVE, 5, 2.0), 90.0)
        first, again, other = (
            plan_stream(*args, seed=1),
            plan_stream(*args, seed=1),
            plan_stream(*args, seed=2),
        )
        assert first == again
        assert [p.utterance.source for p in first] != [p.utterance.source for p in other]

    def test_snr_and_gaps_within_their_ranges(self) -> None:
        plan = plan_stream(_keywords(4), [], _pool(KIND_NEGATIVE, 5, 2.0), 100.0, seed=0, snr_db=(3.0, 7.0))
        assert all(3.0 <= p.snr_db <= 7.0 and GAP_SECONDS[0] <= p.gap_seconds <= GAP_SECONDS[1] for p in plan)


# --------------------------------------------------------------------------------------------------------
# Rendering


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A small stream of in-memory synthetic words over a white-noise recording, at 40-41 dB SNR."""
    rng = np.random.default_rng(0)
    keywords = [
        Utterance(KIND_KEYWORD, k, f"kw{i}", 1.0, audio=_clip_with_word(k, 0.05 + 0.05 * i, seed=i))
        for i, k in enumerate(KEYWORDS * 2)
    ]
    negatives = [
        Utterance(KIND_NEGATIVE, "other", f"neg{i}", 1.5, audio=_clip_with_word("bed", 0.5, 1.5, seed=9 + i))
        for i in range(3)
    ]
    plan = plan_stream(keywords, [], negatives, 40.0, seed=0, snr_db=(40.0, 41.0))
    noise = rng.standard_normal(5 * SAMPLE_RATE).astype(np.float32)
    path = tmp_path_factory.mktemp("stream") / "stream.wav"
    events, seconds = render_stream(plan, [noise], SAMPLE_RATE, path, seed=0)
    audio, rate = sf.read(path, dtype="float32")
    return SimpleNamespace(plan=plan, events=events, seconds=seconds, audio=audio, rate=rate, keywords=keywords)


class TestRenderStream:
    """The WAV file holds each planned utterance at its reported time, over noise at the planned SNR."""

    def test_file_length_and_event_times(self, rendered) -> None:
        assert rendered.rate == SAMPLE_RATE
        assert len(rendered.audio) / SAMPLE_RATE == pytest.approx(rendered.seconds, abs=1e-6)
        starts = [e.start for e in rendered.events]
        assert starts == sorted(starts)
        for prev, e, p in zip([None, *rendered.events], rendered.events, rendered.plan, strict=False):
            gap = e.start - (prev.end if prev else 0.0)
            assert gap == pytest.approx(p.gap_seconds, abs=1.5 / SAMPLE_RATE)
            assert e.start <= e.word_start < e.word_end <= e.end <= rendered.seconds

    def test_each_utterance_is_where_the_event_says(self, rendered) -> None:
        for e, p in zip(rendered.events, rendered.plan, strict=True):
            clip = p.utterance.audio * np.float32(10 ** (p.gain_db / 20))
            i = round(e.start * SAMPLE_RATE)
            heard = rendered.audio[i : i + len(clip)]
            assert np.corrcoef(heard, clip)[0, 1] > 0.99
            span = word_span(clip, SAMPLE_RATE)
            assert e.word_end == pytest.approx(e.start + span.end, abs=1e-9)

    def test_noise_in_the_gaps_sits_at_the_planned_snr(self, rendered) -> None:
        for e, p in zip(rendered.events, rendered.plan, strict=True):
            clip = p.utterance.audio * np.float32(10 ** (p.gain_db / 20))
            a = round((e.start - p.gap_seconds + 0.05) * SAMPLE_RATE)
            gap = rendered.audio[a : round(e.start * SAMPLE_RATE)]
            snr = 20 * np.log10(word_span(clip, SAMPLE_RATE).active_rms / np.sqrt(np.mean(gap**2)))
            assert snr == pytest.approx(p.snr_db, abs=1.5)  # int16 rounding at -80 dBFS and stretch variance

    def test_composition_counts_what_was_rendered(self, rendered) -> None:
        comp = composition(rendered.events, rendered.seconds, len(rendered.keywords), 3, "white", (40, 41), 0)
        kinds = Counter(e.kind for e in rendered.events)
        assert comp.keyword_events == kinds[KIND_KEYWORD] and comp.negative_events == kinds[KIND_NEGATIVE]
        total = comp.keyword_seconds + comp.unknown_seconds + comp.negative_seconds + comp.noise_only_seconds
        assert total == pytest.approx(rendered.seconds)
        assert sum(comp.keywords_per_label.values()) == comp.keyword_events

    def test_negatives_folder_is_read_recursively_at_any_rate(self, tmp_path) -> None:
        from kws.data import negative_split

        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        written = []
        for i in range(8):  # two rates, two folders; only the held-out half (fixed hash) is streamed
            rate = 22050 if i % 2 else 8000
            path = tmp_path / ("a" if i < 4 else "b") / f"{i}.{'flac' if i % 2 else 'wav'}"
            sf.write(path, np.zeros(rate, np.float32), rate)
            written.append(path)
        (tmp_path / "notes.txt").write_text("not audio")
        found = negative_utterances(tmp_path)
        expected = sorted((p.parent.name, 1.0) for p in written if negative_split(p) == "held-out")
        assert 0 < len(expected) < len(written), "the fixed hash holds out some files, not all"
        assert sorted((u.label, u.seconds) for u in found) == expected
        assert len(found[0].load(SAMPLE_RATE)) == SAMPLE_RATE


# --------------------------------------------------------------------------------------------------------
# Scoring


def _event(kind: str, label: str, start: float, end: float, word_end: float | None = None) -> StreamEvent:
    return StreamEvent(kind, label, "src", start, end, start, word_end if word_end is not None else end, 0, 0.0, 0.0)


def _det(time: float, keyword: str) -> SimpleNamespace:
    return SimpleNamespace(time=time, keyword=keyword)


class TestScoring:
    """A detection of keyword k from the start of a k event to tolerance after its word is a hit (once); every
    other detection is a false accept, attributed to where it happened."""

    EVENTS = [
        _event(KIND_KEYWORD, "yes", 10.0, 11.0, word_end=10.6),
        _event(KIND_KEYWORD, "no", 20.0, 21.0, word_end=20.5),
        _event(KIND_NEGATIVE, "alexa", 30.0, 33.0),
        _event(KIND_KEYWORD, "yes", 40.0, 41.0, word_end=40.4),
    ]
    SECONDS = 3600.0

    def test_hits_misses_and_latency(self) -> None:
        score = score_detections([_det(10.8, "yes"), _det(41.9, "yes")], self.EVENTS, self.SECONDS, tolerance=1.0)
        assert (score.hits, score.keyword_events, score.false_accepts) == (1, 3, 1)
        assert score.recall == pytest.approx(1 / 3)
        assert score.latencies == pytest.approx([0.2])
        assert score.per_keyword["yes"]["hits"] == 1 and score.per_keyword["no"]["hits"] == 0

    def test_wrong_keyword_and_repeats_are_false_accepts_in_keyword_windows(self) -> None:
        dets = [_det(20.3, "yes"), _det(20.6, "no"), _det(20.9, "no")]
        score = score_detections(dets, self.EVENTS, self.SECONDS, tolerance=1.0)
        assert score.hits == 1 and score.false_accepts == 2
        assert score.false_accepts_in_keyword_windows == 2
        assert score.false_accepts_by_context == {"keyword window": 2}

    def test_false_accepts_are_attributed_to_speech_or_noise(self) -> None:
        dets = [_det(33.5, "no"), _det(50.0, "yes"), _det(5.0, "up")]
        score = score_detections(dets, self.EVENTS, self.SECONDS, tolerance=1.0)
        assert score.false_accepts_by_context == {KIND_NEGATIVE: 1, "noise": 2}
        assert score.per_keyword["up"]["false_accepts"] == 1

    def test_rates_per_hour(self) -> None:
        dets = [_det(20.3, "yes"), _det(50.0, "yes")]
        score = score_detections(dets, self.EVENTS, self.SECONDS, tolerance=1.0)
        windows = (11.6 - 10.0) + (21.5 - 20.0) + (41.4 - 40.0)
        nonkeyword_hours = (self.SECONDS - windows) / 3600
        assert score.fa_per_hour == pytest.approx(2 / nonkeyword_hours)
        assert score.fa_per_hour_stream == pytest.approx(2.0)
        assert score.fa_per_hour_nonkeyword == pytest.approx(1 / nonkeyword_hours)
        assert score.fa_per_hour >= max(score.fa_per_hour_stream, score.fa_per_hour_nonkeyword)

    def test_late_detection_is_a_miss_and_a_false_accept(self) -> None:
        score = score_detections([_det(12.0, "yes")], self.EVENTS, self.SECONDS, tolerance=1.0)
        assert score.hits == 0 and score.false_accepts == 1
        assert score_detections([_det(12.0, "yes")], self.EVENTS, self.SECONDS, tolerance=1.5).hits == 1

    @pytest.mark.parametrize(("count", "bound"), [(0, 2.9957), (1, 4.7439), (2, 6.2958), (5, 10.5130)])
    def test_poisson_upper_bound(self, count: int, bound: float) -> None:
        assert poisson_upper(count) == pytest.approx(bound, abs=1e-3)


# --------------------------------------------------------------------------------------------------------
# The command end to end on the tiny trained model

MISSING = [m for m in ("torch", "onnxscript", "matplotlib") if importlib.util.find_spec(m) is None]
needs_training_stack = pytest.mark.skipif(bool(MISSING), reason=f"kws bench needs {', '.join(MISSING)}")

BROKEN_BIAS = 1000.0
"""Added to the _silence_ logit of the broken model: it answers _silence_ to everything."""


def _export_all(checkpoint: Path, out: Path) -> Path:
    """NAME.onnx, NAME.int8.onnx, NAME.stream.onnx and NAME.stream.int8.onnx of ``checkpoint`` in ``out``."""
    from kws.checkpoint import model_from_checkpoint
    from kws.export.onnx_export import export_clip_model, save_model
    from kws.export.quantize import quantize_dynamic_model
    from support.tools import export_stream_model

    out.mkdir(parents=True, exist_ok=True)
    for int8 in (False, True):  # shared with the other tests of the session
        path = export_stream_model(checkpoint, out, int8=int8)
        target = out / ("kws.stream.int8.onnx" if int8 else "kws.stream.onnx")
        if path != target:
            shutil.copyfile(path, target)
    model, labels, _ = model_from_checkpoint(checkpoint)
    save_model(export_clip_model(model, labels), out / "kws.onnx")
    quantize_dynamic_model(out / "kws.onnx", out / "kws.int8.onnx")
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
    from kws.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(checkpoint)
    payload["model"]["head.bias"][0] += BROKEN_BIAS
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
class TestErrors:
    """Bad inputs are one-line errors (exit 2) before the slow work."""

    def _run(self, capsys, *argv: str) -> str:
        assert main(["bench", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return err

    def test_missing_model_files(self, tiny_checkpoint, full_dataset, tmp_path, capsys) -> None:
        (tmp_path / "models").mkdir()
        err = self._run(
            capsys,
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(full_dataset),
            "--models",
            str(tmp_path / "models"),
            "--out",
            str(tmp_path / "out"),
        )
        assert "kws.stream.int8.onnx" in err

    def test_models_of_another_label_set(self, tiny_checkpoint, models, full_dataset, tmp_path, capsys) -> None:
        import onnx

        from kws.constants import META_LABELS

        other = tmp_path / "other"
        shutil.copytree(models, other)
        proto = onnx.load(str(other / "kws.int8.onnx"))
        for prop in proto.metadata_props:
            if prop.key == META_LABELS:
                prop.value = json.dumps(["_silence_", "_unknown_", "left", "right", "on", "off"])
        onnx.save(proto, str(other / "kws.int8.onnx"))
        err = self._run(
            capsys,
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(full_dataset),
            "--models",
            str(other),
            "--out",
            str(tmp_path / "out"),
        )
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
        err = self._run(
            capsys,
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(full_dataset),
            option,
            *value.split(),
            "--out",
            str(tmp_path / "out"),
        )
        assert message in err

    def test_missing_data_folder(self, tiny_checkpoint, tmp_path, capsys) -> None:
        err = self._run(
            capsys,
            "--checkpoint",
            str(tiny_checkpoint),
            "--data",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "out"),
        )
        assert "does not exist" in err


@pytest.mark.slow
@needs_training_stack
def test_without_models_the_checkpoint_is_exported(tiny_checkpoint, full_dataset, negatives, tmp_path) -> None:
    """No --models: the checkpoint is exported into OUT/models (kws export's checks run; a failed check is
    stated in the report rather than hidden)."""
    report = _bench(tiny_checkpoint, None, full_dataset, negatives, tmp_path / "out", "--stream-minutes", "0.5")
    assert "exported by kws bench" in report["models"]["origin"]
    assert Path(report["streaming"]["model"]).is_file()
    md = (tmp_path / "out" / "bench.md").read_text()
    assert all(note in md for note in report["models"]["notes"])
