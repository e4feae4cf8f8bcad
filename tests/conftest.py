"""Shared fixtures: synthetic datasets in the official layouts and a tiny model trained on them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from support.synthetic import KEYWORDS, make_full_dataset, make_test_archive
from support.tiny import tiny_run_config


@pytest.fixture(scope="session", autouse=True)
def _private_audio_cache(tmp_path_factory: pytest.TempPathFactory):
    """Every test's decoded-audio cache (kws.cache) lives in a temporary folder, never in ~/.cache/kws."""
    import os

    from kws.cache import CACHE_ENV

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
    from kws.train import train

    logging.getLogger("kws").setLevel(logging.WARNING)
    out = tmp_path_factory.mktemp("run")
    return train(tiny_run_config((str(full_dataset),)), out)


__all__ = ["KEYWORDS"]
