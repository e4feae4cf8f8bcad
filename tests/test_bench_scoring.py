"""kws bench's scoring of detections against a stream's ground truth (hits, false accepts and where they
happened, rates per hour, the Poisson bound)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kws.bench.events import KIND_KEYWORD, KIND_NEGATIVE, StreamEvent
from kws.bench.scoring import poisson_upper, score_detections


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
