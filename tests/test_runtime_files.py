"""Audio sources (kws.runtime.files, kws.runtime.sources): files of any format, raw PCM on stdin, band-limited
resampling to the model rate."""

from __future__ import annotations

import io
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from kws.data.audio import AudioError
from kws.runtime import FileSource, SourceError, StdinSource, detect_file
from support.level import STANDARD_EVENTS, expected_keywords, plant
from support.synthetic import SAMPLE_RATE as RATE


def _tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def _collect(source) -> np.ndarray:
    with source:
        return np.concatenate([np.asarray(c, np.float32) / (32768 if c.dtype == np.int16 else 1) for c in source])


def _level_at(audio: np.ndarray, freq: float, rate: int) -> float:
    """Amplitude of ``freq`` in ``audio`` (projection on a sine/cosine pair, edges trimmed)."""
    x = audio[rate // 10 : -rate // 10]
    t = np.arange(len(x)) / rate
    return float(2 * np.hypot(np.mean(x * np.sin(2 * np.pi * freq * t)), np.mean(x * np.cos(2 * np.pi * freq * t))))


class TestSources:
    def test_16_bit_mono_at_the_model_rate_passes_through_as_int16(self, tmp_path):
        pcm = (np.random.default_rng(0).standard_normal(RATE) * 3000).astype(np.int16)
        sf.write(tmp_path / "a.wav", pcm, RATE, subtype="PCM_16")
        with FileSource(tmp_path / "a.wav", RATE, 0.1) as source:
            chunks = list(source)
        assert all(c.dtype == np.int16 for c in chunks)
        np.testing.assert_array_equal(np.concatenate(chunks), pcm)

    @pytest.mark.parametrize(
        ("rate", "subtype", "channels"), [(48_000, "PCM_24", 2), (44_100, "FLOAT", 1), (8_000, "PCM_16", 2)]
    )
    def test_any_rate_depth_and_channel_count_is_resampled_band_limited(self, tmp_path, rate, subtype, channels):
        seconds, freq = 1.0, 1000.0
        tone = _tone(freq, seconds, rate)
        data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
        path = tmp_path / "a.flac" if subtype == "PCM_24" else tmp_path / "a.wav"
        sf.write(path, data, rate, subtype=subtype)
        out = _collect(FileSource(path, RATE, 0.1))
        assert abs(len(out) - seconds * RATE) <= 2
        assert _level_at(out, freq, RATE) == pytest.approx(0.5, abs=0.01)

    def test_frequencies_above_the_model_nyquist_are_filtered_not_aliased(self, tmp_path):
        """A 10 kHz tone at 48 kHz must vanish at 16 kHz (sample dropping would alias it to 6 kHz)."""
        sf.write(tmp_path / "hi.wav", _tone(10_000, 1.0, 48_000), 48_000, subtype="FLOAT")
        out = _collect(FileSource(tmp_path / "hi.wav", RATE, 0.1))
        assert _level_at(out, 6_000, RATE) < 0.005 and np.abs(out[RATE // 10 : -RATE // 10]).max() < 0.01

    def test_unreadable_missing_and_empty_files(self, tmp_path):
        (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wave file" * 10)
        sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), RATE)
        for name, message in (
            ("junk.wav", "cannot read"),
            ("missing.wav", "does not exist"),
            ("empty.wav", "empty"),
        ):
            with pytest.raises(AudioError, match=message):
                FileSource(tmp_path / name, RATE, 0.1)

    def test_a_file_is_read_in_blocks_of_a_second_unless_paced(self, tmp_path):
        sf.write(tmp_path / "a.wav", np.zeros(RATE * 5 // 2, np.int16), RATE)
        with FileSource(tmp_path / "a.wav", RATE, 0.1) as source:
            assert [len(c) for c in source] == [RATE, RATE, RATE // 2]
        with FileSource(tmp_path / "a.wav", RATE, 1.5) as source:  # a longer chunk is read as it is
            assert [len(c) for c in source] == [RATE * 3 // 2, RATE]
        with FileSource(tmp_path / "a.wav", RATE, 0.5, realtime=True) as source:
            assert [len(c) for c in source] == [RATE // 2] * 5

    def test_realtime_pacing(self, tmp_path):
        sf.write(tmp_path / "a.wav", np.zeros(RATE // 2, np.int16), RATE)
        start = time.monotonic()
        _collect(FileSource(tmp_path / "a.wav", RATE, 0.1, realtime=True))
        assert time.monotonic() - start >= 0.45

    def test_stdin_raw_pcm_with_split_frames(self):
        pcm = (np.random.default_rng(1).standard_normal((RATE, 2)) * 3000).astype(np.int16)
        data = pcm.astype("<i2").tobytes()

        class Trickle(io.RawIOBase):  # delivers odd-sized pieces, as a pipe may
            def __init__(self):
                self.pos = 0

            def read(self, n=-1):
                piece = data[self.pos : self.pos + min(n, 777)]
                self.pos += len(piece)
                return piece

        out = _collect(StdinSource(RATE, RATE, channels=2, chunk_seconds=0.1, stream=Trickle()))
        np.testing.assert_allclose(out, pcm.astype(np.float32).mean(axis=1) / 32768, atol=1e-6)

    def test_stdin_at_another_rate_is_resampled(self):
        tone = np.round(_tone(440, 1.0, 44_100) * 32767).astype("<i2")
        out = _collect(StdinSource(RATE, 44_100, stream=io.BytesIO(tone.tobytes())))
        assert abs(len(out) - RATE) <= 2 and _level_at(out, 440, RATE) == pytest.approx(0.5, abs=0.01)

    def test_a_terminal_on_stdin_is_refused(self, monkeypatch):
        monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))
        with pytest.raises(SourceError, match="arecord"):
            StdinSource(RATE, RATE)

    def test_files_at_other_formats_give_the_same_detections(self, tiny_exports, level_engine, tmp_path):
        """With level posteriors (support.level): the planted keywords, at the same frames, from a 16-bit
        16 kHz mono WAV and from a 24-bit 48 kHz stereo FLAC of the same signal."""
        import soxr

        audio = plant(6.5, STANDARD_EVENTS)
        sf.write(tmp_path / "ref.wav", audio, RATE, subtype="PCM_16")
        high = soxr.resample(audio, RATE, 48_000)
        sf.write(tmp_path / "hi.flac", np.stack([high, high], 1), 48_000, subtype="PCM_24")
        reference, _ = detect_file(tiny_exports.stream, tmp_path / "ref.wav")
        other, stats = detect_file(tiny_exports.stream, tmp_path / "hi.flac")
        assert [d.keyword for d in other] == [d.keyword for d in reference] == expected_keywords(STANDARD_EVENTS)
        assert all(abs(a.frame - b.frame) <= 1 for a, b in zip(other, reference, strict=True))
        assert stats.audio_seconds == pytest.approx(6.5, abs=0.01)
