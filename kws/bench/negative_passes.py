"""The negative-only stream of ``kws bench --negative-hours H``: passes over held-out non-keyword audio
(torch-free).

The material: the held-out ``--negatives`` recordings (real speech that training never used,
:func:`kws.bench.utterances.negative_utterances`) and the test split's ``_unknown_`` clips, each after a gap
of background noise (``GAP_SECONDS``). No keyword clip is ever played.

The stream is cut into passes of equal length (between ``PASS_SECONDS_MIN`` and ``PASS_SECONDS_MAX``, about
one replay of the material each) adding up to exactly H hours. Each pass replays the material in a new seeded
order (again in another order if the pass is longer than one replay) under its own condition, cycled from
``PASS_CONDITIONS`` (SNR range, gain range, simulated reverberation, :mod:`kws.data.reverb`), over its own
noise choice, cycled from the noise choices (every recording, or one of them), with its own noise stretches.

A pass is produced slot by slot (:func:`pass_blocks`): memory does not grow with H, and nothing is written to
disk unless the caller writes the blocks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from kws.bench.events import StreamEvent
from kws.bench.streams import GAP_SECONDS, NoiseBed, PlannedEvent, render_slot
from kws.bench.utterances import StreamSetError, Utterance
from kws.data.audio import AudioError, float_to_int16, load_audio
from kws.data.reverb import Room, simulate_room

logger = logging.getLogger(__name__)

PASS_SECONDS_MIN, PASS_SECONDS_MAX = 60.0, 3600.0
"""Bounds of a pass's length (s): short material is replayed within a pass, long material is cut."""
PASS_SEED = 9
"""Seed stream of the passes (``[seed, PASS_SEED, pass index]``), apart from the mixed stream's."""
MAX_CACHED_SECONDS = 3600.0
"""Material up to this long is decoded once and kept in memory (int16); longer material is read per use."""
NOISE_PARTS = 4
"""A single noise recording is also offered in this many consecutive parts, one noise choice each..."""
NOISE_PART_MIN_SECONDS = 5.0
"""...when each part is at least this long (s)."""
GENERATED_NOISE_SECONDS = 30.0
GENERATED_NOISE_SEED = 11
"""Data with at most one noise recording also gets a generated pink noise (1/f power) of this length (s), from
this seed, as one more choice."""


@dataclass(frozen=True)
class PassCondition:
    """How a pass plays its material.

    Attributes:
        snr_db: range of the speech level over the noise bed (dB; None: the bench's ``--snr-db``).
        gain_db: range of the gain of each slot, speech and noise together (dB, uniform per event).
        rt60_s: range of the simulated room's reverberation time (s); None: no reverberation.
    """

    snr_db: tuple[float, float] | None
    gain_db: tuple[float, float]
    rt60_s: tuple[float, float] | None


PASS_CONDITIONS = (
    PassCondition(snr_db=None, gain_db=(0.0, 0.0), rt60_s=None),
    PassCondition(snr_db=(5.0, 15.0), gain_db=(-12.0, -6.0), rt60_s=(0.3, 0.6)),
    PassCondition(snr_db=(0.0, 10.0), gain_db=(-6.0, 0.0), rt60_s=None),
    PassCondition(snr_db=(10.0, 20.0), gain_db=(-24.0, -18.0), rt60_s=(0.6, 0.9)),
)
"""Cycled over the passes: the first is dry at the mixed stream's levels; the others are louder noise, quieter
input and reverberant rooms."""


@dataclass(frozen=True)
class NoiseChoice:
    """A background for a pass: a name for the report and its recordings (float32 ``[samples]`` each)."""

    name: str
    recordings: tuple[np.ndarray, ...] = field(repr=False, compare=False)


def pink_noise(seconds: float, sample_rate: int, seed: int = GENERATED_NOISE_SEED) -> np.ndarray:
    """Seeded pink noise (power falling as 1/f), float32 ``[samples]``, unit RMS."""
    n = max(2, round(seconds * sample_rate))
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.sqrt(np.mean(noise**2))).astype(np.float32)


def noise_choices(
    recordings: Sequence[np.ndarray], names: Sequence[str], description: str, sample_rate: int
) -> list[NoiseChoice]:
    """Every recording together (``description``), then each one alone. Data with a single recording: also
    its ``NOISE_PARTS`` consecutive parts (when long enough) and a generated pink noise; with none: the
    stream's white noise, and the pink noise."""
    choices = [NoiseChoice(description, tuple(recordings))]
    if len(recordings) > 1:
        return choices + [NoiseChoice(n, (r,)) for r, n in zip(recordings, names, strict=True)]
    if len(recordings) == 1 and len(recordings[0]) >= NOISE_PARTS * NOISE_PART_MIN_SECONDS * sample_rate:
        parts = np.array_split(recordings[0], NOISE_PARTS)
        choices += [NoiseChoice(f"part {i + 1} of {NOISE_PARTS} of {description}", (p,)) for i, p in enumerate(parts)]
    pink = pink_noise(GENERATED_NOISE_SECONDS, sample_rate)
    return choices + [NoiseChoice(f"pink noise (generated, seed {GENERATED_NOISE_SEED})", (pink,))]


@dataclass(frozen=True)
class PassPlan:
    """One pass of the negative stream (what the report labels it with).

    Attributes:
        index: 0, 1, ...
        start, samples: its first sample in the negative stream and its length (samples).
        noise: index into the noise choices.
        snr_db, gain_db: the ranges its events' SNR and gain are drawn from (dB).
        rt60_s: its room's reverberation time (s), None without reverberation.
    """

    index: int
    start: int
    samples: int
    noise: int
    snr_db: tuple[float, float]
    gain_db: tuple[float, float]
    rt60_s: float | None


def replay_seconds(material: Sequence[Utterance]) -> float:
    """Expected length of one replay of the material with its noise gaps (s)."""
    return sum(u.seconds for u in material) + len(material) * float(np.mean(GAP_SECONDS))


def plan_passes(
    hours: float,
    material: Sequence[Utterance],
    n_noises: int,
    sample_rate: int,
    seed: int,
    snr_db: tuple[float, float],
) -> list[PassPlan]:
    """The passes of ``hours`` of negative stream: exactly ``round(hours * 3600 * sample_rate)`` samples.

    Raises:
        StreamSetError: no material, or a non-positive duration.
    """
    if not material:
        raise StreamSetError("no non-keyword material (negatives or unknown-word clips) for the negative stream")
    total = round(hours * 3600.0 * sample_rate)
    if total <= 0:
        raise StreamSetError(f"negative stream duration must be positive, got {hours:g} h")
    # about one replay each, within the bounds (a stream shorter than PASS_SECONDS_MIN is one pass)
    target = replay_seconds(material) * sample_rate
    n = min(round(total / target), math.floor(total / (PASS_SECONDS_MIN * sample_rate)))
    n = max(1, n, math.ceil(total / (PASS_SECONDS_MAX * sample_rate)))
    lengths = [total // n] * n
    lengths[-1] += total - sum(lengths)
    rng = np.random.default_rng([seed, PASS_SEED])
    passes = []
    for i, length in enumerate(lengths):
        c = PASS_CONDITIONS[i % len(PASS_CONDITIONS)]
        rt60 = float(rng.uniform(*c.rt60_s)) if c.rt60_s is not None else None
        snr = tuple(c.snr_db) if c.snr_db is not None else tuple(snr_db)
        passes.append(PassPlan(i, sum(lengths[:i]), length, i % max(1, n_noises), snr, c.gain_db, rt60))
    return passes


def cached(material: Sequence[Utterance], sample_rate: int) -> list[Utterance]:
    """The material with its audio in memory (int16) when it is at most ``MAX_CACHED_SECONDS`` long, so that
    passes do not decode and resample every file again; unreadable files are dropped (logged)."""
    if sum(u.seconds for u in material) > MAX_CACHED_SECONDS:
        logger.info("negative-stream material longer than %g s: read from disk at every use", MAX_CACHED_SECONDS)
        return list(material)
    out = []
    for u in material:
        try:
            audio = u.audio if u.audio is not None else float_to_int16(load_audio(u.source, sample_rate))
        except AudioError as exc:
            logger.warning("skipping %s", exc)
            continue
        out.append(dataclasses.replace(u, audio=audio))
    return out


def pass_room(plan: PassPlan, sample_rate: int, seed: int) -> Room | None:
    """The pass's simulated room (None without reverberation), from its seed."""
    if plan.rt60_s is None:
        return None
    return simulate_room(plan.rt60_s, sample_rate, np.random.default_rng([seed, PASS_SEED, plan.index, 2]))


def pass_blocks(
    plan: PassPlan,
    material: Sequence[Utterance],
    noise: NoiseChoice,
    room: Room | None,
    sample_rate: int,
    seed: int,
    events: list[StreamEvent],
) -> Iterator[np.ndarray]:
    """The pass's audio, one slot at a time: int16 ``[samples]`` blocks adding up to ``plan.samples``.

    Each slot's event is appended to ``events`` before its block is yielded (times in s from the pass's
    start; the last event is cut at the end of the pass). ``events[k].use`` is the replay within the pass.

    Raises:
        StreamSetError: an utterance cannot be read.
    """
    if not material:
        raise StreamSetError("no readable non-keyword material for the negative stream")
    rng = np.random.default_rng([seed, PASS_SEED, plan.index])
    bed = NoiseBed(noise.recordings, sample_rate, np.random.default_rng([seed, PASS_SEED, plan.index, 1]))
    written, replay, order = 0, 0, rng.permutation(len(material))
    end = plan.samples / sample_rate
    while written < plan.samples:
        for i in order:
            p = PlannedEvent(
                material[i],
                replay,
                float(rng.uniform(*GAP_SECONDS)),
                float(rng.uniform(*plan.gain_db)),
                float(rng.uniform(*plan.snr_db)),
            )
            segment, event = render_slot(p, bed, sample_rate, written, room.apply if room else None)
            segment = segment[: plan.samples - written]
            written += len(segment)
            if event.start < end:
                events.append(dataclasses.replace(event, end=min(event.end, end), word_end=min(event.word_end, end)))
            yield float_to_int16(segment)
            if written >= plan.samples:
                return
        replay, order = replay + 1, rng.permutation(len(material))
