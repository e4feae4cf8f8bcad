"""kws bench's negative-only stream (``--negative-hours``): passes that add up to the hours asked for, labelled
as they were mixed and free of keywords; produced slot by slot in bounded memory; re-cut into the runtime's
chunks; simulated reverberation; its part of the typed report (JSON round trip, old reports) and markdown.
The command end to end is in test_bench_command.py. No model needed.
"""

from __future__ import annotations

import dataclasses
import json
import tracemalloc

import numpy as np
import pytest
from test_bench_report import sample_report

from kws.bench.events import KIND_KEYWORD, KIND_NEGATIVE, KIND_UNKNOWN
from kws.bench.negative_passes import (
    PASS_CONDITIONS,
    PASS_SECONDS_MAX,
    PASS_SECONDS_MIN,
    NoiseChoice,
    cached,
    noise_choices,
    pass_blocks,
    pass_room,
    pink_noise,
    plan_passes,
)
from kws.bench.negative_report import FalseAccepts, NegativePass, NegativeStream, NegativeSweepPoint
from kws.bench.negative_stream import BlockSource
from kws.bench.report import BenchReport
from kws.bench.scoring import poisson_upper
from kws.bench.utterances import StreamSetError, Utterance
from kws.data.reverb import METHOD_NOISE, Room, noise_tail_rir, simulate_room
from kws.data.words import frame_energies_db, rms
from support.synthetic import OTHER_WORDS, SAMPLE_RATE, synth_word

SNR = (20.0, 30.0)


def _material(n_negative: int = 4, n_unknown: int = 3, seed: int = 0) -> list[Utterance]:
    """Synthetic non-keyword utterances in memory: multi-word "negatives" and one-word unknown clips."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_negative + n_unknown):
        words = [synth_word(str(w), rng) for w in rng.choice(OTHER_WORDS, size=3 if i < n_negative else 1)]
        audio = np.concatenate([np.concatenate([w, np.zeros(3200, np.float32)]) for w in words])
        kind = KIND_NEGATIVE if i < n_negative else KIND_UNKNOWN
        out.append(Utterance(kind, "group" if kind == KIND_NEGATIVE else "bed", f"{kind}{i}", len(audio) / SAMPLE_RATE,
                             audio=audio))  # fmt: skip
    return out


def _noises() -> list[NoiseChoice]:
    rng = np.random.default_rng(3)
    recordings = [(rng.standard_normal(5 * SAMPLE_RATE) * s).astype(np.float32) for s in (0.01, 0.1)]
    return noise_choices(recordings, ["soft", "loud"], "two recordings", SAMPLE_RATE)


def _render(plan, material, noises, seed: int = 0) -> tuple[np.ndarray, list]:
    events: list = []
    room = pass_room(plan, SAMPLE_RATE, seed)
    blocks = list(pass_blocks(plan, material, noises[plan.noise], room, SAMPLE_RATE, seed, events))
    return np.concatenate(blocks), events


class TestPlan:
    """Passes add up to exactly the hours asked for, each under its own condition and noise."""

    @pytest.mark.parametrize("hours", [0.01, 0.05, 0.2371])
    def test_passes_add_up_to_the_hours(self, hours: float) -> None:
        passes = plan_passes(hours, _material(), 3, SAMPLE_RATE, 0, SNR)
        assert sum(p.samples for p in passes) == round(hours * 3600 * SAMPLE_RATE)
        assert [p.start for p in passes] == [sum(q.samples for q in passes[:i]) for i in range(len(passes))]
        assert all(p.samples <= PASS_SECONDS_MAX * SAMPLE_RATE for p in passes)
        if len(passes) > 1:
            assert all(p.samples >= PASS_SECONDS_MIN * SAMPLE_RATE for p in passes)

    def test_conditions_and_noises_cycle(self) -> None:
        passes = plan_passes(0.2, _material(), 3, SAMPLE_RATE, 0, SNR)
        assert len(passes) == 12
        for p in passes:
            c = PASS_CONDITIONS[p.index % len(PASS_CONDITIONS)]
            assert p.noise == p.index % 3 and p.gain_db == c.gain_db
            assert p.snr_db == (c.snr_db or SNR)
            assert (p.rt60_s is None) == (c.rt60_s is None)
            assert p.rt60_s is None or c.rt60_s[0] <= p.rt60_s <= c.rt60_s[1]
        assert passes[0].rt60_s is None and passes[0].gain_db == (0.0, 0.0)  # the first pass is dry

    def test_nothing_to_play(self) -> None:
        with pytest.raises(StreamSetError, match="no non-keyword material"):
            plan_passes(1.0, [], 1, SAMPLE_RATE, 0, SNR)
        with pytest.raises(StreamSetError, match="positive"):
            plan_passes(0.0, _material(), 1, SAMPLE_RATE, 0, SNR)

    def test_noise_choices(self) -> None:
        names = [c.name for c in _noises()]
        assert names == ["two recordings", "soft", "loud"]
        one = [np.ones(4 * 30 * SAMPLE_RATE, np.float32)]
        parts = noise_choices(one, ["x"], "one", SAMPLE_RATE)
        assert [c.name for c in parts] == ["one", *(f"part {i} of 4 of one" for i in range(1, 5)),
                                           "pink noise (generated, seed 11)"]  # fmt: skip
        assert [len(c.recordings[0]) for c in parts[1:-1]] == [30 * SAMPLE_RATE] * 4
        assert len(noise_choices([np.ones(100, np.float32)], ["x"], "short", SAMPLE_RATE)) == 2  # too short to cut
        assert [len(c.recordings) for c in noise_choices([], [], "white noise", SAMPLE_RATE)] == [0, 1]

    def test_pink_noise(self) -> None:
        noise = pink_noise(10.0, SAMPLE_RATE)
        assert np.array_equal(noise, pink_noise(10.0, SAMPLE_RATE)) and rms(noise) == pytest.approx(1.0, rel=1e-4)
        power = np.abs(np.fft.rfft(noise)) ** 2
        low, high = power[10:100].mean(), power[1000:10000].mean()  # 1-10 Hz vs 100-1000 Hz
        assert 30 < low / high < 300  # 1/f: about 100 times the power per bin at a tenth of the frequency


class TestPassAudio:
    """A pass is what its label says: no keyword, its length to the sample, its noise, gain and room."""

    def test_a_pass_is_its_length_and_holds_no_keyword(self) -> None:
        material, noises = _material(), _noises()
        passes = plan_passes(0.05, material, len(noises), SAMPLE_RATE, 0, SNR)
        sources = {u.source: u.kind for u in material}
        for plan in passes:
            audio, events = _render(plan, material, noises)
            assert len(audio) == plan.samples and audio.dtype == np.int16
            assert events and all(e.kind != KIND_KEYWORD for e in events)
            assert all(sources[e.source] == e.kind for e in events)
            assert all(0 <= e.start < e.end <= plan.samples / SAMPLE_RATE for e in events)
            assert {e.kind for e in events} == {KIND_NEGATIVE, KIND_UNKNOWN}
            assert len({e.source for e in events}) == len(material)  # each pass replays all the material

    def test_each_pass_has_its_own_order(self) -> None:
        material, noises = _material(), _noises()
        a, b = plan_passes(0.05, material, len(noises), SAMPLE_RATE, 0, SNR)[:2]
        order_a = [e.source for e in _render(a, material, noises)[1]]
        order_b = [e.source for e in _render(b, material, noises)[1]]
        assert order_a != order_b
        assert [e.source for e in _render(a, material, noises)[1]] == order_a  # seeded

    def test_snr_gain_and_reverb_follow_the_label(self) -> None:
        material, noises = _material(), _noises()
        passes = plan_passes(0.2, material, len(noises), SAMPLE_RATE, 0, SNR)
        dry, wet = passes[0], next(p for p in passes if p.rt60_s is not None)
        audio_dry, events_dry = _render(dry, material, noises)
        audio_wet, events_wet = _render(wet, material, noises)
        for plan, events in ((dry, events_dry), (wet, events_wet)):
            assert all(plan.snr_db[0] <= e.snr_db <= plan.snr_db[1] for e in events)
            assert all(plan.gain_db[0] <= e.gain_db <= plan.gain_db[1] for e in events)
        assert rms(audio_wet.astype(np.float32)) < rms(audio_dry.astype(np.float32)) * 10 ** (wet.gain_db[1] / 20) * 2
        seconds = {u.source: u.seconds for u in material}
        complete = [e for e in events_wet if e.end < wet.samples / SAMPLE_RATE]
        assert all(
            e.end - e.start > seconds[e.source] + 0.9 * len(pass_room(wet, SAMPLE_RATE, 0).rir) / SAMPLE_RATE
            for e in complete
        )  # fmt: skip  (the reverberation tail is part of the event)
        assert all(e.end - e.start == pytest.approx(seconds[e.source], abs=1e-3) for e in events_dry[:-1])

    def test_memory_is_bounded_by_a_slot(self) -> None:
        """The pass is made slot by slot: the largest block is one slot, and the memory in use while it is
        consumed does not grow with the pass's length."""
        material, noises = _material(), _noises()
        peaks = []
        for minutes in (1.0, 8.0):
            plan = dataclasses.replace(plan_passes(0.1, material, 1, SAMPLE_RATE, 0, SNR)[0],
                                       samples=round(minutes * 60 * SAMPLE_RATE))  # fmt: skip
            tracemalloc.start()
            total, largest = 0, 0
            for block in pass_blocks(plan, material, noises[0], None, SAMPLE_RATE, 0, []):
                total, largest = total + len(block), max(largest, len(block))
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            assert total == plan.samples
            assert largest <= (max(u.seconds for u in material) + 2.0) * SAMPLE_RATE + 1
        assert peaks[1] < 1.5 * peaks[0] and peaks[1] < plan.samples * 2 / 4  # the 8 min (int16) are never held

    def test_material_is_decoded_once(self, tmp_path) -> None:
        import soundfile as sf

        sf.write(tmp_path / "a.wav", np.full(8000, 0.25, np.float32), 8000)
        (kept,) = cached([Utterance(KIND_NEGATIVE, "x", str(tmp_path / "a.wav"), 1.0)], SAMPLE_RATE)
        assert kept.audio.dtype == np.int16 and len(kept.audio) == SAMPLE_RATE
        assert kept.load(SAMPLE_RATE).dtype == np.float32 and abs(float(kept.load(SAMPLE_RATE)[8000]) - 0.25) < 1e-3


class TestBlockSource:
    """The blocks reach the runtime in its chunks, unchanged, and are kept only when asked."""

    def test_recut_into_chunks(self) -> None:
        rng = np.random.default_rng(0)
        blocks = [rng.integers(-1000, 1000, n).astype(np.int16) for n in (5, 3000, 1, 4799, 1600, 77)]
        written: list = []
        source = BlockSource(iter(blocks), SAMPLE_RATE, 0.1, writer=type("W", (), {"write": written.append})())
        chunks = list(source)
        assert np.array_equal(np.concatenate(chunks), np.concatenate(blocks))
        assert {len(c) for c in chunks[:-1]} == {1600} and 0 < len(chunks[-1]) <= 1600
        assert len(written) == len(blocks) and source.sample_rate == SAMPLE_RATE


class TestReverb:
    """The simulated rooms are seeded, unit-energy impulse responses that decay as their RT60 says."""

    def test_noise_tail_decays_by_60_db_in_rt60(self) -> None:
        rir = noise_tail_rir(0.5, SAMPLE_RATE, np.random.default_rng(0))
        assert len(rir) == SAMPLE_RATE // 2 and np.sum(rir.astype(np.float64) ** 2) == pytest.approx(1.0)
        db = frame_energies_db(rir[1:], SAMPLE_RATE)  # 10 ms hops
        slope = np.polyfit(np.arange(len(db)) * 0.01, db, 1)[0]  # dB/s
        assert -slope * 0.5 == pytest.approx(60.0, abs=6.0)

    def test_room_is_seeded_and_lengthens_the_sound(self) -> None:
        a = simulate_room(0.4, SAMPLE_RATE, np.random.default_rng(1))
        b = simulate_room(0.4, SAMPLE_RATE, np.random.default_rng(1))
        assert np.array_equal(a.rir, b.rir) and a.description == b.description and "RT60 0.40 s" in a.description
        out = a.apply(np.ones(100, np.float32))
        assert len(out) == 100 + len(a.rir) - 1 and out.dtype == np.float32

    def test_fallback_without_pyroomacoustics(self, monkeypatch) -> None:
        import kws.data.reverb as reverb

        monkeypatch.setattr(reverb, "room_simulator_available", lambda: False)
        room = reverb.simulate_room(0.3, SAMPLE_RATE, np.random.default_rng(0))
        assert room.description.startswith(METHOD_NOISE) and reverb.method() == METHOD_NOISE
        assert isinstance(room, Room) and len(room.rir) == round(0.3 * SAMPLE_RATE)


# --------------------------------------------------------------------------------------------------------
# The report


def _negative_stream() -> NegativeStream:
    fa = FalseAccepts.of(2, 7200.0)
    one = NegativePass(0, 0.0, 3600.0, "two recordings", (10.0, 30.0), (0.0, 0.0), "none", None, 30, 20, fa,
                       FalseAccepts.of(1, 1800.0), {"negative": 1, "noise": 1}, {"yes": 2})  # fmt: skip
    two = dataclasses.replace(one, index=1, start_s=3600.0, reverb="a room, RT60 0.45 s", rt60_s=0.45)
    sweep = tuple(NegativeSweepPoint(t, 0.9, fa, FalseAccepts.of(1, 3600.0), FalseAccepts.of(4, 8000.0))
                  for t in (0.3, 0.5))  # fmt: skip
    return NegativeStream(
        hours_requested=2.0, seconds=7200.0, threshold=0.5, real_speech_files=40, real_speech_seconds=600.0,
        unknown_clips=20, unknown_seconds=20.0, noise_source="two recordings", reverb_method="a method",
        total=FalseAccepts.of(4, 7200.0), real_speech=FalseAccepts.of(2, 3600.0),
        per_keyword={"yes": FalseAccepts.of(4, 7200.0), "no": FalseAccepts.of(0, 7200.0)}, passes=(one, two),
        sweep=sweep, stats={"audio_seconds": 7200.0, "cpu_ms_per_audio_second": 3.0,
                            "model_ms_per_audio_second": 2.0}, wall_seconds=60.0, notes=("a note",),
    )  # fmt: skip


class TestReport:
    """The negative stream's section reads back unchanged; reports without it are as before."""

    def test_false_accepts_with_their_bound(self) -> None:
        f = FalseAccepts.of(0, 6 * 3600.0)
        assert f.fa_per_hour == 0.0 and f.fa_per_hour_upper95 == pytest.approx(poisson_upper(0) / 6)
        assert f.fa_per_hour_upper95 < 0.5  # 6 h without a false accept resolve 0.5 per hour
        assert FalseAccepts.of(3, 0.0).fa_per_hour is None

    def test_round_trip(self) -> None:
        report = dataclasses.replace(sample_report(), negative_stream=_negative_stream())
        text = report.to_json()
        assert BenchReport.from_json(text) == report and BenchReport.from_json(text).to_json() == text
        assert json.loads(text)["negative_stream"]["passes"][1]["rt60_s"] == 0.45

    def test_without_it_the_report_is_as_before(self) -> None:
        report = sample_report()
        value = json.loads(report.to_json())
        assert "negative_stream" not in value and BenchReport.from_json(report.to_json()).negative_stream is None
        assert "--negative-hours" not in report.command

    def test_markdown(self) -> None:
        from kws.bench.markdown import format_markdown

        plain = format_markdown(sample_report())
        assert "negative stream" not in plain.lower()
        text = format_markdown(dataclasses.replace(sample_report(), negative_stream=_negative_stream()))
        assert "### The negative stream (2 h of non-keyword audio only)" in text
        assert "| **real speech only** | **1.00** |" in text and "| pass 1 | 1.00 | two recordings |" in text
        assert "a room, RT60 0.45 s" in text and "false accepts per hour, negative stream, real speech only" in text
        assert "Threshold sweep with the negative stream" in text and "- a note" in text
        assert text.replace(_negative_sections(text), "") != plain  # the requirements table gains two rows


def _negative_sections(text: str) -> str:
    start = text.index("\n### The negative stream")
    return text[start : text.index("\n### How it is measured")]
