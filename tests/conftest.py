"""Shared fixtures: synthetic datasets in the official layouts, a tiny model trained on them and its exports,
level posteriors for the detection tests and a fake sounddevice."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.synthetic import KEYWORDS, make_full_dataset, make_test_archive
from support.tiny import tiny_run_config

if TYPE_CHECKING:
    from kws.export.pipeline import ExportPaths


@pytest.fixture(scope="session", autouse=True)
def _private_audio_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test's decoded-audio cache (kws.data.cache) lives in a temporary folder, never in ~/.cache/kws."""
    import os

    from kws.data.cache import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("kws-cache"))
    yield
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="session")
def full_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic full-layout dataset (4 keywords + 2 other words, 12 speakers, background noise)."""
    return make_full_dataset(tmp_path_factory.mktemp("data") / "speech_commands")


@pytest.fixture(scope="session")
def test_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 12-class-test-archive layout."""
    return make_test_archive(tmp_path_factory.mktemp("data") / "test_archive")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, full_dataset: Path) -> Path:
    """A small 2-layer LSTM trained for a few epochs on the synthetic dataset (labels: silence, unknown and
    the 4 keywords of ``support.synthetic.KEYWORDS``); it detects the synthetic words reliably."""
    from kws.train.loop import train

    logging.getLogger("kws").setLevel(logging.WARNING)
    out = tmp_path_factory.mktemp("run")
    return train(tiny_run_config((str(full_dataset),)), out)


@pytest.fixture(scope="session")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> ExportPaths:
    """The four ONNX files of the tiny checkpoint (``kws.export.pipeline.export_files``: ``clip``, ``stream``,
    ``clip_int8``, ``stream_int8``; no checks), built once per session (shared with
    ``support.tools.export_stream_model``). Tests must not modify them."""
    from support.tools import tiny_export_files

    return tiny_export_files(tiny_checkpoint, tmp_path_factory.mktemp("tiny_exports"))


@pytest.fixture
def level_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every KeywordSpotter of the test uses level posteriors (``support.level.LevelEngine``)."""
    from support.level import use_level_engine

    use_level_engine(monkeypatch)


@pytest.fixture
def fake_sd(monkeypatch: pytest.MonkeyPatch):
    """A fake sounddevice (``support.fake_sounddevice``) whose microphones hear the standard level events."""
    from kws.runtime import microphone
    from support.fake_sounddevice import DEVICES, FakeSoundDevice
    from support.level import STANDARD_EVENTS, plant

    sd = FakeSoundDevice(DEVICES, default=3, signal16k=plant(6.5, STANDARD_EVENTS))
    monkeypatch.setattr(microphone, "import_sounddevice", lambda: sd)
    return sd


@pytest.fixture(scope="session")
def planted_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6.5 s of the standard level events (``support.level.STANDARD_EVENTS``), 16-bit at 16 kHz."""
    import soundfile as sf

    from support.level import STANDARD_EVENTS, plant
    from support.synthetic import SAMPLE_RATE

    path = tmp_path_factory.mktemp("planted") / "planted.wav"
    sf.write(path, plant(6.5, STANDARD_EVENTS), SAMPLE_RATE, subtype="PCM_16")
    return path


__all__ = ["KEYWORDS"]
