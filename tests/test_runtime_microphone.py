"""The microphone (kws.runtime.microphone), through a fake sounddevice module (``support.fake_sounddevice``;
the real PortAudio path is tested by the virtual microphone of test_microphone.py): devices by index or
name, the model rate or resampling, overflows, a device that vanishes.

The fake microphones hear the standard level events; spotters use level posteriors (``support.level``).
"""

from __future__ import annotations

import sys
import time

import pytest

from kws.runtime import DeviceError, DeviceLostError, KeywordSpotter, MicrophoneSource
from kws.runtime import microphone as runtime_microphone
from support.fake_sounddevice import DEVICES, FakeSoundDevice
from support.level import STANDARD_EVENTS, assert_matches, expected_keywords
from support.synthetic import SAMPLE_RATE as RATE


@pytest.fixture
def spotter(tiny_exports, level_engine) -> KeywordSpotter:
    return KeywordSpotter(tiny_exports.stream)


def _listen_to_mic(spotter: KeywordSpotter, source: MicrophoneSource, seconds: float):
    """Run the microphone until ``seconds`` of audio went through (then stop, as Ctrl-C would)."""
    found = []
    with source:
        for chunk in source:
            found += spotter.process(chunk)
            if spotter.audio_seconds >= seconds:
                break
    return found


class TestMicrophone:
    def test_devices_by_index_name_or_part_of_a_name(self, fake_sd):
        assert runtime_microphone.resolve_device(None)["name"] == "default"
        assert runtime_microphone.resolve_device("1")["name"].startswith("USB")
        assert runtime_microphone.resolve_device("PULSE")["index"] == 2
        assert runtime_microphone.resolve_device("usb pnp")["index"] == 1
        assert [d["index"] for d in runtime_microphone.list_input_devices()] == [1, 2, 3]

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ("7", "no input device with index 7"),
            ("0", "no input device with index 0"),
            ("bluetooth", "no input device matches 'bluetooth'"),
            ("u", "matches several"),
        ],
    )
    def test_unknown_devices_list_the_available_ones(self, fake_sd, spec, message):
        with pytest.raises(DeviceError, match=message) as info:
            runtime_microphone.resolve_device(spec)
        if "several" not in message:
            assert "USB PnP" in str(info.value) and "pulse" in str(info.value)

    def test_no_input_device_suggests_input(self, monkeypatch):
        sd = FakeSoundDevice([DEVICES[0]], default=-1)
        monkeypatch.setattr(runtime_microphone, "import_sounddevice", lambda: sd)
        with pytest.raises(DeviceError, match="no audio input device.*--input"):
            MicrophoneSource(None, RATE, 0.1)

    def test_missing_sounddevice_says_what_to_install(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "sounddevice", None)
        with pytest.raises(DeviceError, match=r"kws\[mic\]"):
            runtime_microphone.import_sounddevice()

    def test_a_device_that_supports_the_model_rate_is_opened_at_it(self, fake_sd, spotter):
        source = MicrophoneSource("default", RATE, 0.1)
        assert fake_sd.opened["samplerate"] == RATE and fake_sd.opened["dtype"] == "int16"
        found = _listen_to_mic(spotter, source, 6.4)
        assert_matches(found, STANDARD_EVENTS, spotter.config)
        assert fake_sd.closed

    def test_a_48k_only_device_is_resampled(self, fake_sd, spotter):
        source = MicrophoneSource("USB", RATE, 0.1)
        assert (source.input_rate, fake_sd.opened["samplerate"], fake_sd.opened["dtype"]) == (
            48000,
            48000,
            "float32",
        )
        found = _listen_to_mic(spotter, source, 6.4)
        assert [d.keyword for d in found] == expected_keywords(STANDARD_EVENTS)

    def test_overflows_are_counted_and_the_stream_goes_on(self, fake_sd, spotter):
        fake_sd.overflow_blocks = (3, 10, 11)
        source = MicrophoneSource(None, RATE, 0.1)
        found = _listen_to_mic(spotter, source, 6.4)
        assert source.overflows == 3 and len(found) == len(expected_keywords(STANDARD_EVENTS))

    @pytest.mark.parametrize(("blocks", "with_finish"), [(5, True), (5, False), (0, False)])
    def test_a_vanishing_device_is_a_clear_error_not_a_hang(self, fake_sd, spotter, monkeypatch, blocks, with_finish):
        """Unplugged mid-stream (the stream ends, or just goes silent), or never delivering anything."""
        monkeypatch.setattr(runtime_microphone, "MIC_TIMEOUT_S", 0.3)
        monkeypatch.setattr(runtime_microphone, "MIC_START_TIMEOUT_S", 0.6)
        fake_sd.vanish_after, fake_sd.vanish_with_finish = blocks, with_finish
        source = MicrophoneSource(None, RATE, 0.1)
        start = time.monotonic()
        with pytest.raises(DeviceLostError, match="stopped delivering audio"):
            _listen_to_mic(spotter, source, 100)
        assert time.monotonic() - start < 2.0 and fake_sd.closed
