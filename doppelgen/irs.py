"""Room impulse responses for the convolution augmentation: ``doppelgen irs``.

A set is ``count`` mono FLAC files, ``ir-000000.flac`` ..., plus ``manifest.json`` (the
recipe, the room of every file, and every file's sha256 and size). Each response is a
pure function of ``(seed, index)`` and the recipe, so a set rendered in any order, in
any number of processes, or resumed after a kill, holds the same bytes.

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

**Storage.** 24-bit FLAC, like the pair shards: lossless, about half of float32 WAV.
Responses are scaled to unit energy (the sum of squares is 1, before 24-bit rounding),
so a convolution keeps a broadband signal's power whatever the room; a peak-1 scaling
would make the default set's reverberant rooms up to 18 dB louder than its dry ones. Unit energy bounds the
peak by 1, so no clipping; rounding steps are 2**-23, far below the 60 dB tail.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

IR_KIND = "impulse_responses"
IR_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"  # same name as a pair dataset's: `doppelgen verify` reads either
RECIPE_NAME = "recipe.json"  # written first: tells a resumed render which recipe the files follow
SPEED_OF_SOUND = 343.0  # m/s, pyroomacoustics' default, pinned so a changed default cannot move bytes
_PCM24_SCALE = float(2**23)
# 300 rooms: about 3 CPU-seconds to render, 5.5 MB; the trainer holds them all in memory.
DEFAULT_IR_COUNT = 300


class IrError(ValueError):
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
class IrSetConfig:
    """Everything that determines the bytes of a set, with the defaults of the set
    ``doppeltrain fit`` uses when no ``--ir-dir`` is given."""

    count: int = DEFAULT_IR_COUNT
    seed: int = 0
    sample_rate: int = 16000
    rooms: RoomRanges = field(default_factory=RoomRanges)
    method: IrMethod = field(default_factory=IrMethod)

    def validate(self) -> None:
        """Raise IrError naming the first bad value."""
        for name, value, low, high in (
            ("count", self.count, 1, 1_000_000),
            ("seed", self.seed, 0, 2**63 - 1),
            ("sample rate", self.sample_rate, 8000, 192000),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise IrError(f"{name} must be an integer in [{low}, {high}], got {value!r}")

    def recipe(self) -> dict[str, Any]:
        """The manifest's recipe: this config plus the library and its settings that the
        bytes depend on. Equal recipes hash alike (:func:`recipe_sha256`)."""
        import pyroomacoustics as pra

        settings = dataclasses.asdict(self)
        rooms, method = settings.pop("rooms"), settings.pop("method")
        return {
            "kind": IR_KIND,
            "format": IR_FORMAT_VERSION,
            **settings,
            "codec": "flac",
            "subtype": "PCM_24",
            "normalization": "unit energy (sum of squares 1 before 24-bit rounding)",
            "rng": "numpy Generator(PCG64(SeedSequence(seed, spawn_key=(index,)))); spawn(2): room draws, tail noise",
            "rooms": _listify(rooms),
            "method": {
                **_listify(method),
                "simulator": "pyroomacoustics ShoeBox, image-source model, single band",
                "absorption": "Eyring: 1 - exp(-24 ln(10) V / (c S RT60)), the same for every wall",
                "pyroomacoustics": pra.__version__,
                "speed_of_sound": SPEED_OF_SOUND,
                "air_absorption": False,
                "ray_tracing": False,
                "use_rand_ism": False,
                "num_threads": 1,
                "frac_delay_length": pra.constants.get("frac_delay_length"),
                "sinc_lut_granularity": pra.constants.get("sinc_lut_granularity"),
                "rir_hpf": {
                    "enable": pra.constants.get("rir_hpf_enable"),
                    "fc": pra.constants.get("rir_hpf_fc"),
                    **_listify(pra.constants.get("rir_hpf_kwargs")),
                },
                "late": "Gaussian noise, envelope -60 dB per RT60, level fitted to the image sources before the splice",
                "start": "silence before the direct sound cut, half the fractional-delay filter kept",
            },
        }


def _listify(value: Any) -> Any:
    """Tuples as lists, so a recipe equals its JSON round trip."""
    if isinstance(value, dict):
        return {key: _listify(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_listify(item) for item in value]
    return value


def recipe_sha256(recipe: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def ir_name(index: int) -> str:
    return f"ir-{index:06d}.flac"


# --- one room, one response ------------------------------------------------------------


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


def _generators(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
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
    rng, _ = _generators(seed, index)
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


def impulse_response(seed: int, index: int, config: IrSetConfig = IrSetConfig()) -> tuple[np.ndarray, Room]:
    """Response ``index`` of the set ``(config, seed)`` and its room."""
    room = draw_room(seed, index, config.rooms)
    _, noise = _generators(seed, index)
    return render_impulse_response(room, noise, config.sample_rate, config.method), room


def encode_pcm24_flac(response: np.ndarray, sample_rate: int) -> bytes:
    """24-bit FLAC of a response within [-1, 1], rounded as the pair shards round."""
    quantized = np.clip(np.rint(response * _PCM24_SCALE), -_PCM24_SCALE, _PCM24_SCALE - 1).astype(np.int32)
    buffer = io.BytesIO()
    # libsndfile takes int32 input as full-scale 32-bit and keeps its top 24 bits.
    sf.write(buffer, quantized << 8, sample_rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


# --- a set: render, resume, verify ------------------------------------------------------


@dataclass
class IrSetSummary:
    """What :func:`render_ir_set` did."""

    out: Path
    rendered: int = 0
    skipped: int = 0
    seconds: float = 0.0
    manifest_written: bool = False


def render_ir_set(out: str | os.PathLike, config: IrSetConfig = IrSetConfig(), *, workers: int = 0, progress: bool = False) -> IrSetSummary:
    """Render the responses of ``config`` that ``out`` lacks, then write ``manifest.json``
    (last). Safe to re-run after any interruption: files are written atomically and the
    result does not depend on ``workers`` (processes; 0: this one) or on what was there.
    Raises IrError for bad options or a folder holding something else; OSError if
    writing fails midway (files already written are kept)."""
    import time

    from tqdm import tqdm

    from .files import file_sha256, remove_dead_temporaries, write_atomic

    config.validate()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise IrError(f"workers must be an integer >= 0, got {workers!r}")
    out = Path(out)
    recipe = config.recipe()
    _prepare_folder(out, recipe)
    remove_dead_temporaries(out)
    started = time.perf_counter()
    summary = IrSetSummary(out)
    todo = [index for index in range(config.count) if not _readable(out / ir_name(index))]
    summary.skipped = config.count - len(todo)
    manifest_path = out / MANIFEST_NAME
    if todo:
        manifest_path.unlink(missing_ok=True)  # a manifest promises a complete set
        with tqdm(total=len(todo), unit="IR", desc="render impulse responses", disable=not progress) as bar:
            for _ in _render_files(out, config, todo, workers):
                summary.rendered += 1
                bar.update(1)
    summary.seconds = time.perf_counter() - started
    if todo or not manifest_path.is_file():
        entries = []
        for index in range(config.count):
            path = out / ir_name(index)
            digest, size = file_sha256(path)
            entries.append({"name": path.name, "sha256": digest, "size": size, "samples": sf.info(str(path)).frames,
                            "room": draw_room(config.seed, index, config.rooms).to_dict()})
        manifest = {"recipe": recipe, "files": entries, "record": _record(summary.seconds)}
        write_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
        summary.manifest_written = True
    return summary


def _prepare_folder(out: Path, recipe: dict) -> None:
    """Make ``out``; refuse one that holds another recipe's set or audio not ours (the
    trainer loads every .wav/.flac under an IR folder)."""
    from .files import write_atomic

    if out.exists() and not out.is_dir():
        raise IrError(f"{out} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise IrError(f"cannot create {out}: {error.strerror or error}") from None
    recipe_path = out / RECIPE_NAME
    if recipe_path.is_file():
        held = _read_json(recipe_path)
        if held != recipe:
            differ = sorted(k for k in set(recipe) | set(held if isinstance(held, dict) else {}) if not isinstance(held, dict) or held.get(k) != recipe.get(k))
            raise IrError(f"{out} holds impulse responses of another recipe (differs in: {', '.join(differ) or 'everything'}); choose another folder")
        return
    if (out / MANIFEST_NAME).exists():
        raise IrError(f"{out} holds a {MANIFEST_NAME} that is not an impulse-response set's; choose another folder")
    foreign = next((p for p in out.rglob("*") if p.suffix.lower() in (".wav", ".flac") and p.is_file()), None)
    if foreign is not None:
        raise IrError(f"{out} already holds audio that doppelgen irs did not write ({foreign.relative_to(out)}); choose another folder")
    try:
        write_atomic(recipe_path, json.dumps(recipe, indent=1).encode())
    except OSError as error:
        raise IrError(f"cannot write to {out}: {error.strerror or error}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _readable(path: Path) -> bool:
    """An existing file whose header decodes (a complete one: writes are atomic)."""
    try:
        return sf.info(str(path)).frames > 0
    except Exception:  # soundfile raises several types for damaged or missing files
        return False


def _render_files(out: Path, config: IrSetConfig, todo: list[int], workers: int) -> Iterator[int]:
    if workers == 0:
        for index in todo:
            yield _render_file(out, config, index)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the caller may hold threads (torch, tqdm) that a fork would copy mid-state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_render_file, [out] * len(todo), [config] * len(todo), todo, chunksize=8)


def _render_file(out: Path, config: IrSetConfig, index: int) -> int:
    from .files import write_atomic

    response, _ = impulse_response(config.seed, index, config)
    write_atomic(out / ir_name(index), encode_pcm24_flac(response, config.sample_rate))
    return index


def _record(seconds: float) -> dict:
    import datetime
    import platform
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "software": {
            "python": platform.python_version(),
            **{name: version(name) for name in ("numpy", "scipy", "soundfile", "pyroomacoustics", "doppelgangers")},
            "libsndfile": sf.__libsndfile_version__,
        },
        "machine": platform.machine(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "render_seconds": round(seconds, 3),
    }


@dataclass
class IrVerifyReport:
    """What :func:`verify_ir_set` found: one line per problem, each naming its file."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def read_ir_manifest(folder: str | os.PathLike) -> dict:
    """``folder/manifest.json`` of an impulse-response set; IrError (one line) if there is
    none, it does not parse, or it describes something else."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise IrError(f"{folder}: no {MANIFEST_NAME} (not a finished impulse-response set)")
    manifest = _read_json(path)
    if not is_ir_manifest(manifest):
        raise IrError(f"{path}: not an impulse-response manifest (recipe kind {IR_KIND!r} expected)")
    return manifest


def is_ir_manifest(manifest: Any) -> bool:
    return isinstance(manifest, dict) and isinstance(manifest.get("recipe"), dict) and manifest["recipe"].get("kind") == IR_KIND


def is_ir_set(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an impulse-response manifest (``doppelgen verify`` uses it
    to choose its checks)."""
    return is_ir_manifest(_read_json(Path(folder) / MANIFEST_NAME))


UNIT_ENERGY_TOLERANCE = 1e-4  # 24-bit rounding moves a unit-energy response's energy by ~1e-6


def verify_ir_set(folder: str | os.PathLike) -> IrVerifyReport:
    """Check every file of a set against its manifest: present, size and sha256, decodes,
    mono at the recipe's rate, the recorded length, finite, unit energy; and no audio in
    the folder that the manifest does not list (the trainer would load it)."""
    from .files import file_sha256

    folder = Path(folder)
    manifest = read_ir_manifest(folder)
    report = IrVerifyReport(folder)
    recipe, entries = manifest["recipe"], manifest.get("files")
    if not isinstance(entries, list):
        report.problems.append(f"{MANIFEST_NAME}: no list of files")
        return report
    if entries and len(entries) != recipe.get("count"):
        report.problems.append(f"{MANIFEST_NAME}: lists {len(entries)} files, the recipe's count is {recipe.get('count')!r}")
    listed: set[str] = set()
    for position, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            report.problems.append(f"{MANIFEST_NAME}: file entry {position} has no plain file name")
            continue
        if name in listed:
            report.problems.append(f"{name}: listed twice in {MANIFEST_NAME}")
            continue
        listed.add(name)
        path = folder / name
        if not path.is_file():
            report.problems.append(f"{name}: missing")
            continue
        report.files_checked += 1
        digest, size = file_sha256(path)
        if size != entry.get("size"):
            report.problems.append(f"{name}: {size} bytes, the manifest says {entry.get('size')!r}")
        if digest != entry.get("sha256"):
            report.problems.append(f"{name}: sha256 differs from the manifest")
        report.problems.extend(f"{name}: {problem}" for problem in _check_audio(path, recipe, entry))
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.suffix.lower() in (".wav", ".flac") and path.is_file() and relative not in listed:
            report.problems.append(f"{relative}: not in the manifest (the trainer would load it too)")
    return report


def _check_audio(path: Path, recipe: dict, entry: dict) -> list[str]:
    try:
        audio, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as error:  # soundfile raises several types for damaged files
        return [f"undecodable ({' '.join(str(error).split())})"]
    problems = []
    if rate != recipe.get("sample_rate"):
        problems.append(f"sample rate {rate} Hz, the recipe says {recipe.get('sample_rate')!r}")
    if audio.shape[1] != 1:
        problems.append(f"{audio.shape[1]} channels, expected mono")
    if audio.shape[0] != entry.get("samples"):
        problems.append(f"{audio.shape[0]} samples, the manifest says {entry.get('samples')!r}")
    if not np.isfinite(audio).all():
        problems.append("non-finite samples")
    elif abs(float(np.sum(audio**2)) - 1.0) > UNIT_ENERGY_TOLERANCE:
        problems.append(f"energy {float(np.sum(audio ** 2)):.6f}, expected 1 (unit energy)")
    return problems


# --- the default set, rendered into the cache on first use -----------------------------

CACHE_ENV = "DOPPELGANGERS_CACHE"  # as doppelgen.jax_runtime's; not imported from there, which imports JAX


def ir_cache_root() -> Path:
    """``$DOPPELGANGERS_CACHE/irs``, else ``$XDG_CACHE_HOME`` (``~/.cache``)``/doppelgangers/irs``."""
    explicit = os.environ.get(CACHE_ENV)
    base = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "doppelgangers"
    return base / "irs"


def cached_ir_dir(config: IrSetConfig, *, progress: bool = False) -> Path:
    """The set of ``config`` in the cache (``ir_cache_root()/<recipe sha256[:16]>``),
    rendered there first if it is not complete. Processes calling at once render it once
    (a lock file); a damaged set is repaired. Raises IrError if the cache is unwritable."""
    config.validate()
    recipe = config.recipe()
    folder = ir_cache_root() / recipe_sha256(recipe)[:16]
    if _complete(folder, recipe):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(folder.parent / f".{folder.name}.lock", "a+b")
    except OSError as error:
        raise IrError(f"cannot write the impulse-response cache {folder.parent}: {error.strerror or error}") from None
    import fcntl

    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not _complete(folder, recipe):
            _discard_damaged(folder)
            try:
                render_ir_set(folder, config, progress=progress)
            except OSError as error:
                raise IrError(f"rendering impulse responses into {folder} failed: {error.strerror or error}") from None
            if not _complete(folder, recipe):
                raise IrError(f"{folder}: the rendered impulse responses do not match their manifest")
    return folder


def default_ir_dir(sample_rate: int = 16000, *, progress: bool = False) -> Path:
    """The folder of the default set (:class:`IrSetConfig`'s defaults at ``sample_rate``),
    rendered into the cache on first use: what ``doppeltrain fit`` convolves with when no
    ``--ir-dir`` is given."""
    return cached_ir_dir(IrSetConfig(count=DEFAULT_IR_COUNT, sample_rate=sample_rate), progress=progress)


def _complete(folder: Path, recipe: dict) -> bool:
    """A manifest of ``recipe`` whose every file is there with its size and sha256
    (hashing a default set takes milliseconds; decoding is left to verify)."""
    from .files import file_sha256

    manifest = _read_json(folder / MANIFEST_NAME)
    if not is_ir_manifest(manifest) or manifest["recipe"] != recipe or not isinstance(manifest.get("files"), list):
        return False
    if len(manifest["files"]) != recipe["count"]:
        return False
    for entry in manifest["files"]:
        try:
            if file_sha256(folder / entry["name"]) != (entry["sha256"], entry["size"]):
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _discard_damaged(folder: Path) -> None:
    """Before re-rendering a set that failed :func:`_complete`: drop the manifest and the
    files it lists whose bytes changed, so the render writes them again."""
    from .files import file_sha256

    manifest = _read_json(folder / MANIFEST_NAME)
    if not is_ir_manifest(manifest):
        return
    for entry in manifest.get("files") or []:
        try:
            path = folder / Path(entry["name"]).name
            if path.is_file() and file_sha256(path) != (entry["sha256"], entry["size"]):
                path.unlink()
        except (OSError, KeyError, TypeError):
            continue
    (folder / MANIFEST_NAME).unlink(missing_ok=True)
