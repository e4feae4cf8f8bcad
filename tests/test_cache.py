"""Issue 11: the decoded-audio cache (kws.data.cache) gives exactly the samples of the files, is rebuilt when a folder
changes or the cache is corrupt, is built once by concurrent processes, and keeps a training split memory-mapped."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import kws.data.cache as cache_module
from kws.cli import main
from kws.config import DataConfig
from kws.data.audio import AudioError, float_to_int16, load_audio
from kws.data.cache import CLIPS, DATA_FILE, FILES, INDEX_FILE, CacheError, crop, open_cache
from kws.data.clip_rows import ClipRows
from kws.data.splits import prepare
from support.synthetic import SAMPLE_RATE, make_full_dataset, synth_clip
from support.tiny import tiny_run_config

SR = SAMPLE_RATE


def _speech(seconds: float, seed: int, rate: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    clips = [synth_clip(("bed", "cat", None)[i % 3], rng) for i in range(int(np.ceil(seconds)))]
    audio = np.concatenate(clips)[: int(seconds * SR)]
    if rate != SR:
        audio = audio[:: SR // rate]
    return audio.astype(np.float32)


@pytest.fixture(scope="module")
def negatives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long non-keyword recordings: WAV and FLAC at 16 kHz, one WAV at 8 kHz (not cached: read directly), one
    unreadable file."""
    root = tmp_path_factory.mktemp("negatives") / "wake_words"
    (root / "alexa").mkdir(parents=True)
    (root / "other").mkdir()
    sf.write(root / "alexa" / "0.wav", _speech(3.3, 1), SR, subtype="PCM_16")
    sf.write(root / "alexa" / "1.flac", _speech(2.5, 2), SR, subtype="PCM_16")
    sf.write(root / "other" / "slow.wav", _speech(2.0, 3, 8000), 8000, subtype="PCM_16")
    sf.write(root / "other" / "short.wav", _speech(0.6, 4), SR, subtype="PCM_16")
    (root / "other" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return root


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    """A small full-layout dataset of its own (the tests change its files), with one unreadable clip."""
    root = make_full_dataset(tmp_path / "data", words=("yes", "no", "bed"), speakers=4, clips_per_speaker=1)
    (root / "yes" / "deadbeef_nohash_0.wav").write_bytes(b"not audio at all")
    return root


def _clip_names(root: Path) -> list[str]:
    return sorted(f"{p.parent.name}/{p.name}" for p in root.glob("*/*.wav") if p.parent.name != "_background_noise_")


def _count_builds(monkeypatch) -> list[Path]:
    built: list[Path] = []
    real = cache_module._build

    def counting(folder, *args, **kwargs):
        built.append(folder)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(cache_module, "_build", counting)
    return built


# --------------------------------------------------------------------------------------- the same samples


def test_cached_splits_equal_the_files(
    full_dataset: Path, test_archive: Path, negatives: Path, small_dataset: Path, tmp_path: Path, caplog
) -> None:
    roots = (str(full_dataset), str(test_archive), str(small_dataset))
    config = DataConfig(roots=roots, negatives=(str(negatives),), labels="yes,no,up", negative_ratio=2.0)
    splits = ("train", "validation", "test")
    with caplog.at_level(logging.WARNING, logger="kws"):
        direct = prepare(config, SR, SR, 0, splits)
    direct_warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    cache_dir = tmp_path / "cache"
    first = prepare(config, SR, SR, 0, splits, cache_dir=cache_dir, lazy=("train",))  # builds
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kws"):
        again = prepare(config, SR, SR, 0, splits, cache_dir=cache_dir)  # reads the caches
    cached_warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert cached_warnings == direct_warnings and any("deadbeef_nohash_0.wav" in w for w in direct_warnings)
    assert any("@" in p for p in direct.splits["train"].paths), "negatives crops are part of the comparison"
    for data in (first, again):
        assert data.summary == direct.summary and data.labels == direct.labels
        for split in splits:
            a, b = direct.splits[split], data.splits[split]
            np.testing.assert_array_equal(np.asarray(b.audio), a.audio)
            np.testing.assert_array_equal(b.labels, a.labels)
            np.testing.assert_array_equal(b.silence, a.silence)
            assert (b.paths, b.speakers, b.skipped) == (a.paths, a.speakers, a.skipped)
    assert isinstance(first.splits["train"].audio, ClipRows) and isinstance(again.splits["train"].audio, np.ndarray)
    assert sorted(p.name.split("-")[0] for p in cache_dir.iterdir()) == sorted(
        [full_dataset.name, test_archive.name, small_dataset.name, negatives.name]
    )


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_crops_of_a_cached_file_equal_windowed_reads(negatives: Path, suffix: str) -> None:
    path = next((negatives / "alexa").glob(f"*{suffix}"))
    whole = float_to_int16(load_audio(path, SR))
    for clip_samples in (SR, SR // 2 + 1):
        for position in (0.0, 0.123, 0.5, 0.999, 1.0):
            window = load_audio(path, SR, max_seconds=clip_samples / SR, position=position)
            expected = float_to_int16(np.pad(window, (0, clip_samples - len(window))))
            np.testing.assert_array_equal(crop(whole, SR, clip_samples, position), expected)
    short = float_to_int16(load_audio(negatives / "other" / "short.wav", SR))
    assert len(crop(short, SR, SR, 0.7)) == SR and not crop(short, SR, SR, 0.7)[len(short) :].any()


def test_other_rates_and_unreadable_files(negatives: Path, tmp_path: Path) -> None:
    names = sorted(p.relative_to(negatives).as_posix() for p in negatives.rglob("*.*"))
    cache = open_cache(tmp_path / "cache", negatives, names, FILES, SR, SR)
    assert cache.samples("other/slow.wav") is None and "other/slow.wav" in cache.direct  # 8 kHz: read the file
    with pytest.raises(AudioError) as cached_error:
        cache.samples("other/broken.wav")
    with pytest.raises(AudioError) as read_error:
        load_audio(negatives / "other" / "broken.wav", SR)
    assert str(cached_error.value) == str(read_error.value)  # the same message, path included
    whole = float_to_int16(load_audio(negatives / "alexa" / "0.wav", SR))
    np.testing.assert_array_equal(cache.samples("alexa/0.wav"), whole)
    assert cache.samples("alexa/missing.wav") is None


# --------------------------------------------------------------------------------------- rebuilt, not trusted


def test_a_changed_folder_rebuilds_the_cache(small_dataset: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    built = _count_builds(monkeypatch)
    names = _clip_names(small_dataset)
    open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    first = open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    assert len(built) == 1  # the second open reads it

    name = next(n for n in names if "deadbeef" not in n)
    old = np.array(first.audio[first.row(name)])
    changed = small_dataset / name
    before = changed.stat()
    new_clip = synth_clip("up", np.random.default_rng(9))
    sf.write(changed, new_clip, SR, subtype="PCM_16")  # same size, other samples
    assert changed.stat().st_size == before.st_size
    with caplog.at_level(logging.INFO, logger="kws"):
        cache = open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    assert len(built) == 2 and "stale" in caplog.text
    np.testing.assert_array_equal(cache.audio[cache.row(name)], float_to_int16(load_audio(changed, SR)))
    assert not np.array_equal(cache.audio[cache.row(name)], old)

    extra = small_dataset / "no" / "0badc0de_nohash_0.wav"
    sf.write(extra, synth_clip("no", np.random.default_rng(1)), SR, subtype="PCM_16")
    cache = open_cache(tmp_path / "cache", small_dataset, _clip_names(small_dataset), CLIPS, SR, SR)
    assert len(built) == 3 and cache.row("no/0badc0de_nohash_0.wav") is not None
    extra.unlink()
    cache = open_cache(tmp_path / "cache", small_dataset, _clip_names(small_dataset), CLIPS, SR, SR)
    assert len(built) == 4 and cache.row("no/0badc0de_nohash_0.wav") is None
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one folder per data folder: rebuilt in place


def _flip_audio(folder: Path) -> None:
    data = bytearray((folder / DATA_FILE).read_bytes())
    data[len(data) // 2] ^= 0x55
    (folder / DATA_FILE).write_bytes(bytes(data))


def _truncate_audio(folder: Path) -> None:
    data = (folder / DATA_FILE).read_bytes()
    (folder / DATA_FILE).write_bytes(data[:-2])


def _garbage_index(folder: Path) -> None:
    (folder / INDEX_FILE).write_text("{not json")


def _tampered_index(folder: Path) -> None:
    index = json.loads((folder / INDEX_FILE).read_text())
    index["offsets"] = index["offsets"][::-1]
    (folder / INDEX_FILE).write_text(json.dumps(index))


def _no_audio(folder: Path) -> None:
    (folder / DATA_FILE).unlink()


@pytest.mark.parametrize("damage", [_flip_audio, _truncate_audio, _garbage_index, _tampered_index, _no_audio])
def test_a_corrupt_cache_is_rebuilt(small_dataset: Path, tmp_path: Path, monkeypatch, caplog, damage) -> None:
    built = _count_builds(monkeypatch)
    names = _clip_names(small_dataset)
    good = open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    expected = np.array(good.audio)
    damage(good.folder)
    del good
    with caplog.at_level(logging.WARNING, logger="kws"):
        cache = open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    assert len(built) == 2, "the damaged cache was trusted"
    assert "rebuilding" in caplog.text
    np.testing.assert_array_equal(np.asarray(cache.audio), expected)


def test_a_killed_build_leaves_no_cache_that_looks_valid(small_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    names = _clip_names(small_dataset)
    open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    sf.write(small_dataset / names[0], synth_clip("no", np.random.default_rng(5)), SR, subtype="PCM_16")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "_decode", killed)
    with pytest.raises(KeyboardInterrupt):
        open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    (folder,) = (tmp_path / "cache").iterdir()
    assert not (folder / INDEX_FILE).exists()  # the old index went first: nothing stale can be trusted
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    monkeypatch.undo()
    cache = open_cache(tmp_path / "cache", small_dataset, names, CLIPS, SR, SR)
    np.testing.assert_array_equal(
        cache.audio[cache.row(names[0])], float_to_int16(load_audio(small_dataset / names[0], SR, max_seconds=1.0))
    )


def test_concurrent_opens_build_once(small_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    built = _count_builds(monkeypatch)
    real_decode = cache_module._decode

    def slow_decode(*args):
        time.sleep(0.01)  # long enough for the second opener to find the first one building
        return real_decode(*args)

    monkeypatch.setattr(cache_module, "_decode", slow_decode)
    names = _clip_names(small_dataset)
    cache_dir = tmp_path / "cache"
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(open_cache(cache_dir, small_dataset, names, CLIPS, SR, SR)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and len(built) == 1
    assert all(np.array_equal(np.asarray(r.audio), np.asarray(results[0].audio)) for r in results)


def test_an_unusable_cache_folder_is_one_line(small_dataset: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot create the audio cache folder"):
        open_cache(blocker, small_dataset, _clip_names(small_dataset), CLIPS, SR, SR)
    argv = ["train", "--data", str(small_dataset), "--labels", "yes,no", "--cache", str(blocker)]
    code = main(argv + ["--max-steps", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "audio cache" in err, err


# --------------------------------------------------------------------------------------- shared, not copied


def test_clip_rows_gather_on_demand(tmp_path: Path) -> None:
    path = tmp_path / "a.int16"
    np.arange(5 * 4, dtype=np.int16).tofile(path)
    mapped = np.memmap(path, dtype=np.int16, mode="r", shape=(20,)).reshape(-1, 4)
    memory = -np.arange(2 * 4, dtype=np.int16).reshape(2, 4) - 1
    rows = ClipRows([mapped, memory], source=[0, 1, 0, 1, 0], row=[4, 0, 1, 1, 0], samples=4)
    dense = np.stack([mapped[4], memory[0], mapped[1], memory[1], mapped[0]])
    assert rows.shape == (5, 4) and len(rows) == 5 and rows.dtype == np.int16
    np.testing.assert_array_equal(np.asarray(rows), dense)
    np.testing.assert_array_equal(rows[np.array([3, 0, 3])], dense[[3, 0, 3]])
    np.testing.assert_array_equal(rows[1:4], dense[1:4])
    np.testing.assert_array_equal(rows[::2], dense[::2])
    np.testing.assert_array_equal(rows[dense[:, 0] < 0], dense[dense[:, 0] < 0])
    np.testing.assert_array_equal(rows[2], dense[2])
    copy = pickle.loads(pickle.dumps(rows))  # as a DataLoader worker started by spawn receives it
    assert isinstance(copy.sources[0], np.memmap) and copy.sources[0].filename == mapped.filename
    assert len(pickle.dumps(rows)) < mapped.nbytes + memory.nbytes + 1000
    np.testing.assert_array_equal(np.asarray(copy), dense)


def test_a_lazy_training_split_stays_memory_mapped(full_dataset: Path, tmp_path: Path) -> None:
    config = DataConfig(roots=(str(full_dataset),), labels="yes,no")
    prepared = prepare(config, SR, SR, 0, ("train", "validation"), cache_dir=tmp_path, lazy=("train",))
    train = prepared.splits["train"].audio
    assert isinstance(train, ClipRows) and isinstance(train.sources[0], np.memmap)
    assert sum(s.nbytes for s in train.sources[1:]) < train.nbytes / 2  # only the noise slices are in memory
    assert isinstance(prepared.splits["validation"].audio, np.ndarray)


@pytest.mark.slow
def test_training_through_the_cache_is_identical(full_dataset: Path, tmp_path: Path) -> None:
    import torch

    import kws.train.loop as train_module
    from kws.model.checkpoint import load_checkpoint

    config = tiny_run_config((str(full_dataset),), epochs=1)
    config = replace(config, train=replace(config.train, max_steps=4))
    train_module.train(config, tmp_path / "files", threads=1)
    train_module.train(config, tmp_path / "cached", threads=1, cache_dir=tmp_path / "cache")
    a, b = load_checkpoint(tmp_path / "files" / "last.pt"), load_checkpoint(tmp_path / "cached" / "last.pt")
    for name in a["train_model"]:
        torch.testing.assert_close(b["train_model"][name], a["train_model"][name], rtol=0, atol=0)
    assert a["history"][0]["val_loss"] == b["history"][0]["val_loss"]
    shutil.rmtree(tmp_path / "cache")
