"""kws bench's long test stream: word boundaries, composition, rendering, and the negatives it reads."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from kws.bench.events import KIND_KEYWORD, KIND_NEGATIVE, KIND_UNKNOWN
from kws.bench.streams import (
    GAP_SECONDS,
    KEYWORD_SHARE_MAX,
    KEYWORD_SHARE_MIN,
    composition,
    plan_stream,
    render_stream,
)
from kws.bench.utterances import Utterance, negative_utterances
from kws.data.words import word_span
from support.synthetic import KEYWORDS, SAMPLE_RATE, WORD_SECONDS, synth_word

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
        from kws.data.layout import negative_split

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


def test_the_bench_runs_a_model_at_its_own_settings() -> None:
    """A calibrated model (thresholds, one lane in its metadata) is measured as `kws listen` runs it."""
    from types import SimpleNamespace

    from kws.bench.streaming import bench_config

    calibrated = SimpleNamespace(thresholds=(("yes", 0.9),), reset_period_ms=0.0, patience=2)
    config = bench_config(calibrated)
    assert (config.lanes, config.reset_period_ms, config.patience) == (1, 0.0, 2)
    assert config.threshold_for("yes") == 0.9 and config.threshold_for("no") == config.threshold
    plain = bench_config(SimpleNamespace(thresholds=(), reset_period_ms=None, patience=None))
    assert (plain.lanes, plain.threshold_for("yes")) == (2, plain.threshold)
