"""Data loading: both official layouts, the official split rule, label sets, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.config import DataConfig
from kws.data.audio import load_audio
from kws.data.layout import DataError, build_split, detect_layout, load_corpus, resolve_labels, which_set
from kws.data.splits import prepare
from support.synthetic import KEYWORDS, make_full_dataset

# Real entries of the official Speech Commands v0.01 validation_list.txt and testing_list.txt.
OFFICIAL_VALIDATION = (
    "on/e54a0f16_nohash_4.wav",
    "down/ad63d93c_nohash_4.wav",
    "seven/61bcb275_nohash_0.wav",
    "bird/8335f893_nohash_0.wav",
    "bed/026290a7_nohash_0.wav",
)
OFFICIAL_TESTING = (
    "on/9a7c1f83_nohash_6.wav",
    "up/c518d1b1_nohash_1.wav",
    "right/3f2b358d_nohash_1.wav",
    "zero/9a7c1f83_nohash_1.wav",
    "cat/0487ba9b_nohash_0.wav",
)


class TestSplitRule:
    @pytest.mark.parametrize("name", OFFICIAL_VALIDATION)
    def test_official_validation_entries(self, name: str) -> None:
        assert which_set(name, 10, 10) == "validation"

    @pytest.mark.parametrize("name", OFFICIAL_TESTING)
    def test_official_testing_entries(self, name: str) -> None:
        assert which_set(name, 10, 10) == "test"

    def test_speaker_decides(self) -> None:
        assert which_set("yes/abc_nohash_0.wav", 10, 10) == which_set("no/abc_nohash_7.wav", 10, 10)

    def test_splits_speaker_disjoint_across_roots(self, full_dataset: Path, test_archive: Path) -> None:
        corpus = load_corpus(DataConfig(roots=(str(full_dataset), str(test_archive))))
        assert set(corpus.layouts) == {"full", "archive"} and corpus.split_mode == "speaker-hash"  # auto, resolved
        assert load_corpus(DataConfig(roots=(str(full_dataset),))).split_mode == "official"
        seen: dict[str, set[str]] = {}
        for clip in corpus.clips:
            seen.setdefault(clip.speaker, set()).add(clip.split)
        assert all(len(s) == 1 for s in seen.values())
        assert {c.split for c in corpus.clips} == {"train", "validation", "test"}

    def test_split_lists_take_precedence(self, tmp_path: Path) -> None:
        root = make_full_dataset(tmp_path / "sc", words=("yes", "no"), speakers=4, clips_per_speaker=1)
        first = sorted((root / "yes").iterdir())[0].name
        (root / "testing_list.txt").write_text(f"yes/{first}\n")
        (root / "validation_list.txt").write_text("")
        corpus = load_corpus(DataConfig(roots=(str(root),)), split="official")
        by_name = {f"{c.path.parent.name}/{c.path.name}": c.split for c in corpus.clips}
        assert by_name[f"yes/{first}"] == "test"
        assert sum(s == "test" for s in by_name.values()) == 1

    def test_flac_clips_keep_their_listed_split(self, tmp_path: Path) -> None:
        """The official lists name ``.wav`` files; a FLAC copy of the dataset must keep every clip's split."""
        root = make_full_dataset(tmp_path / "sc", words=("yes", "no"), speakers=6, clips_per_speaker=1)
        for wav in sorted(root.glob("*/*.wav")):
            if wav.parent.name in ("yes", "no"):
                audio, rate = sf.read(wav, dtype="int16")
                sf.write(wav.with_suffix(".flac"), audio, rate)
                wav.unlink()
        names = sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.flac"))
        (root / "validation_list.txt").write_text(f"{names[0]}.wav\n")
        (root / "testing_list.txt").write_text(f"{names[1]}.wav\n{names[2]}.wav\n")
        corpus = load_corpus(DataConfig(roots=(str(root),)), split="official")
        by_name = {f"{c.path.parent.name}/{c.path.stem}": c.split for c in corpus.clips}
        assert all(c.path.suffix == ".flac" for c in corpus.clips)
        assert [by_name[n] for n in names[:3]] == ["validation", "test", "test"]
        assert sum(s != "train" for s in by_name.values()) == 3
        audio = load_audio(corpus.clips[0].path, 16_000)
        assert audio.dtype == np.float32 and audio.shape == (16_000,)


class TestLayouts:
    def test_archive_unknown_words_parsed(self, test_archive: Path) -> None:
        corpus = load_corpus(DataConfig(roots=(str(test_archive),)))
        assert {"bed", "cat", "_silence_", *KEYWORDS} == set(corpus.words)

    def test_full_layout(self, full_dataset: Path) -> None:
        assert detect_layout(full_dataset) == "full"
        assert len(load_corpus(DataConfig(roots=(str(full_dataset),))).noise_files) == 2

    @pytest.mark.parametrize("labels", ["standard", "all", "yes,no"])
    def test_label_sets(self, full_dataset: Path, labels: str) -> None:
        corpus = load_corpus(DataConfig(roots=(str(full_dataset),)))
        if labels == "standard":
            with pytest.raises(DataError, match="unknown label"):
                resolve_labels(labels, corpus.words)
            return
        resolved = resolve_labels(labels, corpus.words)
        assert resolved[:2] == ["_silence_", "_unknown_"]
        examples = build_split(corpus, resolved, "train", DataConfig(roots=(str(full_dataset),)), seed=0)
        counts = np.bincount([e.label for e in examples], minlength=len(resolved))
        if labels == "all":
            assert counts[1] == 0, "every word is a label: nothing is left for _unknown_"
            counts = np.delete(counts, 1)
        assert counts.min() > 0, "every class, _silence_ from background noise included, has examples"
        if labels == "yes,no":
            assert abs(counts[1] - counts[2:].mean()) <= 1, "unknown ratio 1.0 -> one mean class of unknowns"


class TestAudio:
    def test_resample_and_downmix(self, tmp_path: Path) -> None:
        t = np.arange(8000) / 8000
        stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1) * 0.5
        sf.write(tmp_path / "a.wav", stereo, 8000, subtype="PCM_24")
        audio = load_audio(tmp_path / "a.wav", 16000)
        assert audio.shape == (16000,) and audio.dtype == np.float32
        spectrum = np.abs(np.fft.rfft(audio))
        assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 2

    def test_corrupt_file_skipped_and_counted(self, tmp_path: Path) -> None:
        root = make_full_dataset(tmp_path / "sc", words=("yes", "no", "bed"), speakers=6, clips_per_speaker=1)
        for f in sorted((root / "yes").iterdir())[:2]:
            f.write_bytes(b"not a wav file")
        config = DataConfig(roots=(str(root),), labels="yes,no", validation_percent=0, testing_percent=0)
        prepared = prepare(config, 16000, 16000, 0, ("train",))
        assert len(prepared.splits["train"].skipped) == 2
        assert prepared.splits["train"].audio.shape[1] == 16000


class TestBadInput:
    def test_missing(self, tmp_path: Path) -> None:
        with pytest.raises(DataError, match="does not exist"):
            load_corpus(DataConfig(roots=(str(tmp_path / "nope"),)))

    def test_empty(self, tmp_path: Path) -> None:
        with pytest.raises(DataError, match="empty"):
            load_corpus(DataConfig(roots=(str(tmp_path),)))

    def test_not_speech_commands(self, tmp_path: Path) -> None:
        (tmp_path / "photos").mkdir()
        (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
        with pytest.raises(DataError, match="not a Speech Commands folder"):
            load_corpus(DataConfig(roots=(str(tmp_path),)))
