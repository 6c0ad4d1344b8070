"""Rooms and their impulse responses: what one file of ``doppelgen irs`` holds.

**Rooms** are pyroomacoustics shoeboxes drawn from a numpy Generator seeded with
``SeedSequence(seed, spawn_key=(index,))``; the default ranges (:class:`RoomRanges`)
span bathrooms and offices to large halls:

- floor length log-uniform in 3-30 m (half the rooms are under 9.5 m: rooms where
  sounds are recorded are mostly small), width 0.5-1 times the length (at least 2 m);
- height 2.4-3.2 m, plus 0.2-0.5 m per metre of width beyond 6 m (halls are tall: a
  30 x 25 m hall is 6-13 m high);
- RT60 log-uniform between 0.1 s (a furnished small room) and 1.2 s (a tiled bathroom,
  a lecture hall), but never below the room's RT60 at absorption 0.6: rooms seldom
  absorb more on average (studios, cinemas), and bigger rooms then start at longer
  RT60s, as they do. The wall absorption follows from the RT60 by Eyring's formula
  (:func:`eyring_absorption`; Sabine's, pyroomacoustics' ``inverse_sabine``, is its
  limit for small absorption and made absorbent rooms' image sources decay too fast);
- source and microphone uniform in the room, at least 0.5 m from every wall, 1-2 m
  high (mouths, instruments, loudspeakers, hand-held or stand microphones), at least
  0.5 m apart.

**Method.** Direct sound and early reflections come from pyroomacoustics' image-source
model up to order ``ism_max_order`` (12): complete up to the time a ray travels
``(order + 1)`` times the room's inscribed radius, 70 ms in a 4 x 3 x 2.5 m room, 0.5 s
in a hall. The full image-source model is no option: a 4 x 3 x 2.5 m room at 1.2 s
needs order 214, 23 s for one response on this machine; pyroomacoustics' hybrid with
ray tracing takes 0.2-0.6 s per response. From there on the response is the
statistical late reverberation of room acoustics (the diffuse model of gpuRIR):
Gaussian noise from the response's second Generator under an exponential envelope that
falls 60 dB per RT60, its level fitted to the image sources' energy over the half before
the splice, joined by a 10 ms equal-power crossfade. So the drawn RT60 is the measured
one: over the default set, T30 is 0.91-1.17 times it (median 1.01), where the full
image-source model decays up to 1.3 times slower in shoeboxes (their field is not
diffuse). Both parts are frequency-flat (one absorption for all frequencies, no air
absorption), like the single-band image-source model. A response costs ~10 ms.

The silence before the direct sound (distance / c) is cut: it would only shift the
clip, which the time-shift augmentation already does. What remains before the direct
sound's peak is half the fractional-delay filter (40 samples). Each response ends where
the energy left in it falls 60 dB below its total (Schroeder's backward integral).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from doppelgen.console import InputError

SPEED_OF_SOUND = 343.0  # m/s, pyroomacoustics' default, pinned so a changed default cannot move bytes


class IrError(InputError):
    """A bad option, or a folder that cannot hold the set; the message is one line."""


@dataclass(frozen=True)
class RoomRanges:
    """Where rooms are drawn from (module docstring: why these values)."""

    length_m: tuple[float, float] = (3.0, 30.0)  # log-uniform
    width_ratio: tuple[float, float] = (0.5, 1.0)
    min_width_m: float = 2.0
    height_m: tuple[float, float] = (2.4, 3.2)
    height_per_width_m: tuple[float, float] = (0.2, 0.5)  # added per metre of width beyond:
    tall_from_width_m: float = 6.0
    rt60_s: tuple[float, float] = (0.1, 1.2)  # log-uniform, clipped below by max_absorption
    max_absorption: float = 0.6
    wall_margin_m: float = 0.5
    position_height_m: tuple[float, float] = (1.0, 2.0)
    min_distance_m: float = 0.5


@dataclass(frozen=True)
class IrMethod:
    """How a room becomes a response (module docstring: why)."""

    ism_max_order: int = 12
    crossfade_s: float = 0.01
    truncate_db: float = 60.0


@dataclass(frozen=True)
class Room:
    """One drawn room (metres, seconds)."""

    size: tuple[float, float, float]
    rt60: float
    absorption: float
    source: tuple[float, float, float]
    microphone: tuple[float, float, float]

    def to_dict(self) -> dict:
        return {
            "size_m": [round(v, 4) for v in self.size],
            "rt60_s": round(self.rt60, 4),
            "absorption": round(self.absorption, 4),
            "source_m": [round(v, 4) for v in self.source],
            "microphone_m": [round(v, 4) for v in self.microphone],
        }


def response_generators(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Response ``index``'s two Generators: room draws, late-reverberation noise."""
    rooms, noise = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(2)
    return np.random.Generator(np.random.PCG64(rooms)), np.random.Generator(np.random.PCG64(noise))


def eyring_absorption(rt60: float, size: tuple[float, float, float]) -> float:
    """The energy absorption giving ``rt60`` by Eyring's formula, 1 - exp(-24 ln 10 V /
    (c S RT60)). Sabine's (pyroomacoustics' ``inverse_sabine``, the exponent itself) is
    its limit for small absorption; image sources lose (1 - absorption) of their energy
    per reflection, which is Eyring's decay, so they then decay at the drawn RT60 (Sabine's
    made absorbent rooms decay up to 25% faster here)."""
    return -math.expm1(-24.0 * math.log(10.0) * _volume_per_surface(size) / (SPEED_OF_SOUND * rt60))


def _volume_per_surface(size: tuple[float, float, float]) -> float:
    length, width, height = size
    return length * width * height / (2.0 * (length * width + length * height + width * height))


def draw_room(seed: int, index: int, ranges: RoomRanges = RoomRanges()) -> Room:
    """Room ``index`` of the set seeded ``seed``: a pure function of its arguments."""
    rng, _ = response_generators(seed, index)
    log_low, log_high = np.log(ranges.length_m)
    length = float(np.exp(rng.uniform(log_low, log_high)))
    width = max(ranges.min_width_m, length * float(rng.uniform(*ranges.width_ratio)))
    height = float(rng.uniform(*ranges.height_m)) + max(0.0, width - ranges.tall_from_width_m) * float(rng.uniform(*ranges.height_per_width_m))
    size = (length, width, height)
    # The shortest RT60 a room can have is the one at the largest absorption.
    shortest = 24.0 * math.log(10.0) * _volume_per_surface(size) / (SPEED_OF_SOUND * -math.log1p(-ranges.max_absorption))
    rt60_low = max(ranges.rt60_s[0], shortest)
    rt60 = float(np.exp(rng.uniform(np.log(rt60_low), np.log(max(rt60_low, ranges.rt60_s[1])))))
    low = np.full(3, ranges.wall_margin_m)
    high = np.array(size) - ranges.wall_margin_m
    low[2], high[2] = ranges.position_height_m[0], min(ranges.position_height_m[1], high[2])
    for _ in range(1000):
        source, microphone = rng.uniform(low, high), rng.uniform(low, high)
        if np.linalg.norm(source - microphone) >= ranges.min_distance_m:
            break
    else:  # cannot happen with rooms at least 2 m wide; kept so a bad range fails loudly
        raise IrError(f"room {index}: no source and microphone {ranges.min_distance_m} m apart fit in {size}")
    return Room(size, rt60, eyring_absorption(rt60, size), tuple(map(float, source)), tuple(map(float, microphone)))


@contextmanager
def _pyroomacoustics_settings() -> Iterator[Any]:
    """pyroomacoustics with the settings the bytes depend on, restored afterwards: its
    threaded builders sum float32 blocks per thread, so the thread count moves bits."""
    import pyroomacoustics as pra

    saved = {name: pra.constants.get(name) for name in ("num_threads", "c")}
    pra.constants.set("num_threads", 1)
    pra.constants.set("c", SPEED_OF_SOUND)
    try:
        yield pra
    finally:
        for name, value in saved.items():
            pra.constants.set(name, value)


def inscribed_radius(size: tuple[float, float, float]) -> float:
    """The radius that each image-source order adds completely (pyroomacoustics'
    ``inverse_sabine``: the sphere inside the diamond of reflected rooms)."""
    a, b, c = size
    return min(x * y / math.hypot(x, y) for x, y in ((a, b), (a, c), (b, c)))


def render_impulse_response(room: Room, noise: np.random.Generator, sample_rate: int, method: IrMethod = IrMethod()) -> np.ndarray:
    """The response of ``room`` (float32, unit energy): image sources, then the late
    reverberation drawn from ``noise`` (module docstring)."""
    with _pyroomacoustics_settings() as pra:
        needed = math.ceil(SPEED_OF_SOUND * room.rt60 / inscribed_radius(room.size) - 1)
        order = min(needed, method.ism_max_order)
        shoebox = pra.ShoeBox(
            list(room.size), fs=sample_rate, materials=pra.Material(room.absorption),
            max_order=order, air_absorption=False, ray_tracing=False, use_rand_ism=False,
        )
        shoebox.add_source(list(room.source))
        shoebox.add_microphone(np.array(room.microphone)[:, None])
        shoebox.compute_rir()
        early = np.asarray(shoebox.rir[0][0], dtype=np.float64)
    distance = math.dist(room.source, room.microphone)
    early = early[int(distance / SPEED_OF_SOUND * sample_rate) :]
    decay = math.log(1000.0) / (room.rt60 * sample_rate)  # amplitude: -60 dB per RT60
    if order < needed:
        response = _splice_late_reverberation(early, order, room, noise, sample_rate, decay, method)
    else:
        response = early
    return _normalize(_truncate(response, method.truncate_db))


def _splice_late_reverberation(
    early: np.ndarray, order: int, room: Room, noise: np.random.Generator, sample_rate: int, decay: float, method: IrMethod
) -> np.ndarray:
    distance = math.dist(room.source, room.microphone)
    complete = (order + 1) * inscribed_radius(room.size) - distance  # metres past the direct sound
    splice = min(len(early), int(complete / SPEED_OF_SOUND * sample_rate))
    fade = max(1, min(int(method.crossfade_s * sample_rate), splice // 4))
    start = splice - fade
    # The late part's level continues the image sources' energy over the last half
    # before the splice (their decay is the room's too, as long as they are complete).
    window = np.arange(splice // 2, splice)
    envelope = np.exp(-decay * np.arange(start, start + 1 + int(room.rt60 * sample_rate) + fade))
    level = math.sqrt(np.sum(early[window] ** 2) / np.sum(np.exp(-2.0 * decay * window)))
    late = level * envelope * noise.standard_normal(len(envelope))
    ramp = np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / fade)
    response = np.zeros(start + len(late))
    response[:start] = early[:start]
    response[start : start + fade] = early[start:splice] * np.sqrt(1.0 - ramp**2) + late[:fade] * ramp
    response[splice:] = late[fade:]
    return response


def _truncate(response: np.ndarray, drop_db: float) -> np.ndarray:
    """Cut where the energy still to come falls ``drop_db`` below the total."""
    remaining = np.cumsum((response**2)[::-1])[::-1]
    below = np.flatnonzero(remaining <= remaining[0] * 10.0 ** (-drop_db / 10.0))
    return response[: below[0]] if below.size else response


def _normalize(response: np.ndarray) -> np.ndarray:
    energy = float(np.sum(response**2))
    if not np.isfinite(energy) or energy <= 0.0:
        raise IrError("a rendered impulse response is silent or not finite")
    return (response / math.sqrt(energy)).astype(np.float32)
