"""Training augmentation: room reverberation (``kws train --reverb-prob``) keeps a clip's length and level,
is seeded, and is off unless asked for."""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import pytest

from kws.config import AugmentConfig
from kws.data.augment import Augmenter, reverberate, room_bank
from kws.errors import ConfigError
from kws.train import cli as train_cli

SR = 16000


def _tone(n: int = SR) -> np.ndarray:
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (t < 0.3)).astype(np.float32)


def test_reverberation_keeps_length_and_level_and_adds_a_tail() -> None:
    audio = _tone()
    rir = np.zeros(4000, np.float32)
    rir[0], rir[1600] = 1.0, 0.5  # direct path and one echo 100 ms later
    wet = reverberate(audio, rir)
    assert wet.shape == audio.shape and wet.dtype == np.float32
    np.testing.assert_allclose(np.sqrt(np.mean(wet**2)), np.sqrt(np.mean(audio**2)), rtol=1e-4)
    tail = slice(int(0.3 * SR) + 100, int(0.4 * SR) - 100)  # after the tone ends, inside its echo
    assert np.abs(audio[tail]).max() == 0 and np.abs(wet[tail]).max() > 0.05
    direct = reverberate(audio, np.array([1.0], np.float32))
    np.testing.assert_allclose(direct, audio, atol=1e-6)  # a unit impulse changes nothing


def test_room_bank_is_seeded_and_off_by_default() -> None:
    assert AugmentConfig().reverb_prob == 0 and room_bank(AugmentConfig(), SR, 0) == []
    config = AugmentConfig(reverb_prob=0.5, reverb_rooms=3, reverb_rt60_min=0.2, reverb_rt60_max=0.3)
    a, b, c = room_bank(config, SR, 0), room_bank(config, SR, 0), room_bank(config, SR, 1)
    assert len(a) == 3 and all(r.dtype == np.float32 and np.isclose(np.sum(r.astype(np.float64) ** 2), 1) for r in a)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_augmenter_reverberates_the_asked_share_of_speech_clips_only() -> None:
    rooms = [np.r_[1.0, np.zeros(1599), 0.8].astype(np.float32)]
    quiet = AugmentConfig.none()
    audio = _tone()
    dry = Augmenter(quiet, SR, [], [], rooms).clip(audio, False, np.random.default_rng(0))
    np.testing.assert_array_equal(dry, audio)  # reverb_prob 0: the rooms are not used
    always = Augmenter(replace(quiet, reverb_prob=1.0), SR, [], [], rooms)
    np.testing.assert_allclose(always.clip(audio, False, np.random.default_rng(0)), reverberate(audio, rooms[0]))
    np.testing.assert_array_equal(always.clip(audio, True, np.random.default_rng(0)), audio)  # not _silence_
    half = Augmenter(replace(quiet, reverb_prob=0.5), SR, [], [], rooms)
    rng = np.random.default_rng(0)
    changed = sum(not np.array_equal(half.clip(audio, False, rng), audio) for _ in range(200))
    assert 70 < changed < 130


def test_reverb_flag_and_bad_values() -> None:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    config = train_cli.config_from_args(parser.parse_args(["--data", "x", "--reverb-prob", "0.3"]))
    assert config.augment.reverb_prob == 0.3 and config.augment.speed_prob == AugmentConfig().speed_prob
    with pytest.raises(ConfigError, match="--no-augment"):
        train_cli.config_from_args(parser.parse_args(["--data", "x", "--no-augment", "--reverb-prob", "0.3"]))
    assert train_cli.config_from_args(parser.parse_args(["--data", "x", "--no-augment"])).augment.reverb_prob == 0
    for kwargs in ({"reverb_prob": 1.5}, {"reverb_rt60_min": 0.9, "reverb_rt60_max": 0.5}, {"reverb_rooms": 0}):
        with pytest.raises(ConfigError):
            AugmentConfig(**kwargs)
