"""Simulated room reverberation (torch-free): the negative stream's passes in `kws bench`, and the training
augmentation of `kws train --reverb-prob`.

One room impulse response (RIR) per bench pass (or per room of the training bank), drawn from a seed:

* with pyroomacoustics installed (the ``train`` extra): a shoebox room of random size, walls whose absorption
  gives the requested RT60 by Sabine's formula, a random source and microphone position, simulated with the
  image source method up to ``MAX_IMAGE_ORDER`` (:data:`METHOD_ROOM`; deterministic, unlike its ray tracer);
  the RT60 measured on the response (Schroeder) is reported beside the requested one;
* without it: exponentially decaying Gaussian noise after a unit direct path, decaying by 60 dB in RT60
  (:data:`METHOD_NOISE`): a generic diffuse tail, no early reflections.

Both are simulations; the report names the method, the room and the RT60 of every pass. The RIR is scaled to
unit energy; each event's level over the noise bed is set after the reverberation (from its active speech
level), so reverberation changes the sound, not the SNR.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

METHOD_ROOM = "pyroomacoustics shoebox (image source method)"
METHOD_NOISE = "exponentially decaying noise (no pyroomacoustics)"
ROOM_SIZE_M = ((3.0, 8.0), (3.0, 6.0), (2.4, 3.2))
"""Ranges of the room's length, width and height (m, uniform)."""
WALL_MARGIN_M = 0.5
"""Source and microphone stay this far from every wall (m)."""
MAX_IMAGE_ORDER = 40
"""Cap of the image source order: memory and time stay small (about 10 MB and 0.05 s a room, against about
700 MB and 1 s at the order Sabine's formula asks for an RT60 of 0.85 s); the longest rooms' tails are cut
at about 0.8 s, so the measured RT60 in the report is the one to read."""
DECAY_DB = 60.0
"""RT60: the time the response takes to decay by this much (dB)."""


@dataclass(frozen=True)
class Room:
    """One simulated room: its impulse response and how it was made.

    Attributes:
        rir: float32 ``[samples]`` at the stream rate, unit energy.
        rt60_s: the requested reverberation time (s).
        description: for the report (method, size, measured RT60 where known).
    """

    rir: np.ndarray
    rt60_s: float
    description: str

    def apply(self, audio: np.ndarray) -> np.ndarray:
        """``audio`` float32 ``[n]`` -> reverberant float32 ``[n + len(rir) - 1]`` (:func:`convolve`)."""
        return convolve(audio, self.rir).astype(np.float32)


def convolve(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``audio`` ``[n]`` convolved with ``rir`` by FFT: float64 ``[n + len(rir) - 1]`` (``audio`` itself if empty)."""
    if not len(audio):
        return audio
    n = len(audio) + len(rir) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(rir, size), size)[:n]


def room_simulator_available() -> bool:
    """pyroomacoustics is installed (else :func:`simulate_room` falls back to a noise tail)."""
    return importlib.util.find_spec("pyroomacoustics") is not None


def method() -> str:
    """The method :func:`simulate_room` uses on this machine (:data:`METHOD_ROOM` or :data:`METHOD_NOISE`)."""
    return METHOD_ROOM if room_simulator_available() else METHOD_NOISE


def _unit_energy(rir: np.ndarray) -> np.ndarray:
    rir = np.asarray(rir, dtype=np.float64)
    return (rir / max(float(np.sqrt(np.sum(rir**2))), 1e-12)).astype(np.float32)


def noise_tail_rir(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A unit direct path followed by Gaussian noise decaying by ``DECAY_DB`` in ``rt60_s`` (``rt60_s``
    long), unit energy, float32 ``[samples]``."""
    n = max(2, round(rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    rir = rng.standard_normal(n) * 10.0 ** (-DECAY_DB / 20.0 * t / rt60_s)
    rir[0] = 1.0
    return _unit_energy(rir)


def simulate_room(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> Room:
    """A room with reverberation time ``rt60_s`` (s): random size and positions from ``rng``."""
    if not room_simulator_available():
        return Room(noise_tail_rir(rt60_s, sample_rate, rng), rt60_s, f"{METHOD_NOISE}, RT60 {rt60_s:.2f} s")
    import pyroomacoustics as pra

    size = [float(rng.uniform(*r)) for r in ROOM_SIZE_M]
    source, mic = ([float(rng.uniform(WALL_MARGIN_M, s - WALL_MARGIN_M)) for s in size] for _ in range(2))
    absorption, max_order = pra.inverse_sabine(rt60_s, size)
    order = min(max_order, MAX_IMAGE_ORDER)
    room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption), max_order=order)
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    measured = float(room.measure_rt60()[0][0])
    dims = "x".join(f"{s:.1f}" for s in size)
    description = (
        f"{METHOD_ROOM}, {dims} m room, RT60 {rt60_s:.2f} s by Sabine's formula, {measured:.2f} s measured "
        f"(image order {order})"
    )
    return Room(_unit_energy(room.rir[0][0]), rt60_s, description)
