"""kws.data.audio.load_audio: bounded reads (a window of a long file), absurd headers refused, and a fuzz test that
every kind of broken file ends as an AudioError (the callers' "skip with a warning and count it")."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.data.audio import MAX_SAMPLE_RATE, AudioError, load_audio
from kws.data.layout import Clip, Corpus, Example
from kws.data.splits import PreparedData, load_split, speech_context_clips

RATE = 16_000


def _wav_bytes(path: Path, seconds: float = 0.5, rate: int = RATE, channels: int = 1) -> bytes:
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal((int(seconds * rate), channels)) * 0.1).astype(np.float32), rate, "PCM_16")
    return path.read_bytes()


def _with_header_field(wav: bytes, offset: int, fmt: str, value: int) -> bytes:
    """A canonical 44-byte-header WAV with one ``fmt `` field replaced (22: channels, 24: rate, 28: bytes/s)."""
    out = bytearray(wav)
    out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(out)


class _FrameCounter:
    """Counts the frames soundfile is asked to decode (a spy on SoundFile.read)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames = 0
        original = sf.SoundFile.read

        def read(f, frames=-1, *args, **kwargs):
            data = original(f, frames, *args, **kwargs)
            self.frames += len(data)
            return data

        monkeypatch.setattr(sf.SoundFile, "read", read)


@pytest.fixture(scope="module")
def long_stereo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 30 s, 48 kHz stereo file whose left channel is a ramp (so a window's position can be read off)."""
    rate, seconds = 48_000, 30
    n = rate * seconds
    left = np.linspace(-0.9, 0.9, n, dtype=np.float32)
    stereo = np.stack([left, left], axis=1)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, stereo, rate, subtype="FLOAT")
    return path, left


class TestBoundedRead:
    def test_max_seconds_reads_only_the_window(self, long_stereo, monkeypatch: pytest.MonkeyPatch) -> None:
        path, _ = long_stereo
        counter = _FrameCounter(monkeypatch)
        audio = load_audio(path, RATE, max_seconds=1.0)
        assert audio.dtype == np.float32 and audio.shape == (RATE,)
        assert 0 < counter.frames <= 1.2 * 48_000, f"decoded {counter.frames} frames of a 30 s file for 1 s"

    def test_whole_file_without_max_seconds(self, long_stereo) -> None:
        path, _ = long_stereo
        assert len(load_audio(path, RATE)) == 30 * RATE

    @pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
    def test_window_position(self, long_stereo, monkeypatch: pytest.MonkeyPatch, position: float) -> None:
        path, left = long_stereo
        counter = _FrameCounter(monkeypatch)
        audio = load_audio(path, RATE, max_seconds=1.0, position=position)
        assert audio.shape == (RATE,)
        assert counter.frames <= 1.2 * 48_000
        # The same window cut from the whole file, resampled: the ramp's values match away from the edges.
        start = int(round(position * (len(left) - 48_000)))
        expected = left[start : start + 48_000][::3]
        np.testing.assert_allclose(audio[200:-200], expected[200:-200], atol=2e-3)

    def test_short_file_is_not_padded(self, tmp_path: Path) -> None:
        _wav_bytes(tmp_path / "short.wav", seconds=0.25)
        assert len(load_audio(tmp_path / "short.wav", RATE, max_seconds=1.0)) == RATE // 4
        assert len(load_audio(tmp_path / "short.wav", RATE, max_seconds=1.0, position=1.0)) == RATE // 4

    def test_window_resampled_like_the_whole_file(self, tmp_path: Path) -> None:
        """The resampling margin: a window's samples equal the whole file's, edges included."""
        rng = np.random.default_rng(1)
        sf.write(tmp_path / "n.wav", (rng.standard_normal(44_100 * 5) * 0.1).astype(np.float32), 44_100, "FLOAT")
        whole = load_audio(tmp_path / "n.wav", RATE)
        start = int(round(0.25 * (44_100 * 5 - 44_100))) * RATE / 44_100
        window = load_audio(tmp_path / "n.wav", RATE, max_seconds=1.0, position=0.25)
        first = int(round(start))
        np.testing.assert_allclose(window, whole[first : first + RATE], atol=1e-3)

    @pytest.mark.parametrize("bad", [{"max_seconds": 0}, {"max_seconds": -1.0}, {"position": 1.5}])
    def test_bad_arguments(self, tmp_path: Path, bad: dict) -> None:
        _wav_bytes(tmp_path / "a.wav")
        with pytest.raises(ValueError):
            load_audio(tmp_path / "a.wav", RATE, **bad)


class TestAbsurdHeaders:
    @pytest.mark.parametrize("rate", [1, 999, MAX_SAMPLE_RATE + 1, 2_000_000_000])
    @pytest.mark.parametrize("max_seconds", [None, 1.0])
    def test_absurd_sample_rate_refused(self, tmp_path: Path, rate: int, max_seconds: float | None) -> None:
        wav = _wav_bytes(tmp_path / "a.wav")
        wav = _with_header_field(_with_header_field(wav, 24, "<I", rate), 28, "<I", rate * 2)
        (tmp_path / "bad.wav").write_bytes(wav)
        assert sf.info(str(tmp_path / "bad.wav")).samplerate == rate, "the header really declares the rate"
        with pytest.raises(AudioError, match="sample rate"):
            load_audio(tmp_path / "bad.wav", RATE, max_seconds=max_seconds)

    def test_plausible_low_rate_accepted(self, tmp_path: Path) -> None:
        _wav_bytes(tmp_path / "a.wav", seconds=1.0, rate=8000)
        assert len(load_audio(tmp_path / "a.wav", RATE, max_seconds=1.0)) == RATE


def _fuzz_cases(tmp: Path) -> list[Path]:
    rng = np.random.default_rng(12)
    wav = _wav_bytes(tmp / "src.wav", seconds=0.3)
    sf.write(tmp / "src.flac", (rng.standard_normal(RATE) * 0.1).astype(np.float32), RATE)
    flac = (tmp / "src.flac").read_bytes()
    cases: dict[str, bytes] = {"empty.wav": b"", "zero_channels.wav": _with_header_field(wav, 22, "<H", 0)}
    for i in range(8):
        cases[f"random{i}.wav"] = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
        cases[f"riff_random{i}.wav"] = b"RIFF" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        cases[f"flac_random{i}.flac"] = b"fLaC" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    for n in (1, 4, 8, 12, 16, 20, 24, 36, 40, 43):
        cases[f"wav_head{n}.wav"] = wav[:n]
    for n in (1, 4, 8, 20, 30, 42, 60, 100, 500, 2000, len(flac) // 2, len(flac) - 1):
        cases[f"flac_head{n}.flac"] = flac[:n]
    # A good header, garbage data; a good header, its data chunk declaring far more than there is.
    cases["wav_garbage.wav"] = wav[:44] + rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    cases["wav_long_claim.wav"] = _with_header_field(wav, 40, "<I", 0x7FFFFFF0)
    cases["flac_garbage.flac"] = flac[:100] + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    paths = []
    for name, data in cases.items():
        (tmp / name).write_bytes(data)
        paths.append(tmp / name)
    (tmp / "folder.wav").mkdir()
    return [*paths, tmp / "folder.wav", tmp / "missing.wav"]


@pytest.mark.parametrize("max_seconds", [None, 1.0])
@pytest.mark.parametrize("position", [0.0, 1.0])
def test_fuzz_only_audio_errors(tmp_path: Path, max_seconds: float | None, position: float) -> None:
    """Broken files give an AudioError or (for a readable prefix) short audio: never another exception."""
    refused = 0
    for path in _fuzz_cases(tmp_path):
        try:
            audio = load_audio(path, RATE, max_seconds=max_seconds, position=position)
        except AudioError:
            refused += 1
            continue
        except Exception as exc:  # the point of the test
            pytest.fail(f"{path.name}: {type(exc).__name__}: {exc}")
        assert audio.dtype == np.float32 and audio.ndim == 1 and 0 < len(audio) <= 2 * RATE, path.name
        assert np.isfinite(audio).all(), path.name
    assert refused >= 30, "most of the broken files are refused"


class TestDatasetReadsWindows:
    """kws.data.splits reads a clip's window of each file, not the file (a long file in a word folder, a crop of a
    long negative, the tail of a context utterance)."""

    def test_long_file_in_word_folder(self, long_stereo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path, left = long_stereo
        short = tmp_path / "short.wav"
        _wav_bytes(short, seconds=1.0)
        corpus = Corpus(clips=(), noise_files=(), layouts=("full",))
        counter = _FrameCounter(monkeypatch)
        data = load_split([Example(2, path, "s1"), Example(3, short, "s2")], corpus, [], RATE, RATE, "test")
        assert data.audio.shape == (2, RATE) and not data.skipped
        assert counter.frames <= 1.2 * 48_000 + RATE, f"decoded {counter.frames} frames for two 1 s clips"
        np.testing.assert_allclose(data.float_audio(0)[200:-200], left[:48_000:3][200:-200], atol=2e-3)

    def test_crop_reads_its_window(self, long_stereo, monkeypatch: pytest.MonkeyPatch) -> None:
        path, left = long_stereo
        corpus = Corpus(clips=(), noise_files=(), layouts=("full",))
        counter = _FrameCounter(monkeypatch)
        data = load_split([Example(1, path, "negative", crop_offset=0.75)], corpus, [], RATE, RATE, "train")
        assert counter.frames <= 1.2 * 48_000
        start = int(round(0.75 * (len(left) - 48_000)))
        np.testing.assert_allclose(data.float_audio(0)[200:-200], left[start : start + 48_000 : 3][200:-200], atol=2e-3)
        assert data.paths == [f"{path}@0.750"]

    def test_absurd_rate_skipped_and_counted(self, tmp_path: Path) -> None:
        wav = _wav_bytes(tmp_path / "a.wav")
        (tmp_path / "bad.wav").write_bytes(_with_header_field(_with_header_field(wav, 24, "<I", 1), 28, "<I", 2))
        corpus = Corpus(clips=(), noise_files=(), layouts=("full",))
        examples = [Example(2, tmp_path / "bad.wav", "s1"), Example(2, tmp_path / "a.wav", "s2")]
        data = load_split(examples, corpus, [], RATE, RATE, "test")
        assert data.skipped == [str(tmp_path / "bad.wav")] and len(data) == 1

    def test_context_clips_are_tails(self, long_stereo, monkeypatch: pytest.MonkeyPatch) -> None:
        path, left = long_stereo
        corpus = Corpus(clips=(Clip(path, "bed", "s1", "train"),), noise_files=(), layouts=("full",))
        prepared = PreparedData(
            labels=["_silence_", "_unknown_", "yes"], corpus=corpus, noises=[], splits={}, summary={}
        )
        counter = _FrameCounter(monkeypatch)
        (tail,) = speech_context_clips(prepared, RATE, limit=10, seed=0)
        assert counter.frames <= 1.2 * 48_000
        assert len(tail) == RATE
        np.testing.assert_allclose(tail[200:-200], left[-48_000::3][200:-200], atol=2e-3)
