"""Room impulse responses for the convolution augmentation: ``doppelgen irs``.

A set is ``count`` mono FLAC files, ``ir-000000.flac`` ..., plus ``manifest.json`` (the
recipe, the room of every file, and every file's sha256 and size). Each response is a
pure function of ``(seed, index)`` and the recipe, so a set rendered in any order, in
any number of processes, or resumed after a kill, holds the same bytes.

Rooms and how a response is made: :mod:`doppelgen.irs.rooms`; checking a set:
:mod:`doppelgen.irs.verify`. ``doppeltrain`` calls :func:`default_ir_dir`.

**Storage.** 24-bit FLAC, like the pair shards: lossless, about half of float32 WAV.
Responses are scaled to unit energy (the sum of squares is 1, before 24-bit rounding),
so a convolution keeps a broadband signal's power whatever the room; a peak-1 scaling
would make the default set's reverberant rooms up to 18 dB louder than its dry ones.
Unit energy bounds the peak by 1, so no clipping; rounding steps are 2**-23, far below
the 60 dB tail.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from doppelgen.files import cache_root, file_sha256, is_regular_file, remove_dead_temporaries, workers_problem, write_atomic
from doppelgen.format import MANIFEST_NAME, MAX_MANIFEST_BYTES, FormatError, read_json_file, recipe_sha256, shown
from doppelgen.irs.rooms import SPEED_OF_SOUND, IrError, IrMethod, Room, RoomRanges, draw_room, render_impulse_response, response_generators
from doppelgen.storage import open_store

__all__ = ["IrError", "IrSetConfig", "cached_ir_dir", "default_ir_dir", "impulse_response", "render_ir_set"]

IR_KIND = "impulse_responses"  # its manifest has a pair dataset's name: `doppelgen verify` reads either
IR_FORMAT_VERSION = 1

RECIPE_NAME = "recipe.json"  # written first: tells a resumed render which recipe the files follow
_PCM24_SCALE = float(2**23)
# 300 rooms: about 3 CPU-seconds to render, 5.5 MB; the trainer holds them all in memory.
DEFAULT_IR_COUNT = 300


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
                raise IrError(f"{name} must be an integer in [{low}, {high}], got {shown(value)}")

    def recipe(self) -> dict[str, Any]:
        """The manifest's recipe: this config plus the library and its settings that the
        bytes depend on. Equal recipes hash alike (``doppelgen.format.recipe_sha256``)."""
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


def ir_name(index: int) -> str:
    return f"ir-{index:06d}.flac"


def impulse_response(seed: int, index: int, config: IrSetConfig = IrSetConfig()) -> tuple[np.ndarray, Room]:
    """Response ``index`` of the set ``(config, seed)`` and its room."""
    room = draw_room(seed, index, config.rooms)
    _, noise = response_generators(seed, index)
    return render_impulse_response(room, noise, config.sample_rate, config.method), room


def encode_pcm24_flac(response: np.ndarray, sample_rate: int) -> bytes:
    """24-bit FLAC of a response within [-1, 1], rounded as the pair shards round."""
    quantized = np.clip(np.rint(response * _PCM24_SCALE), -_PCM24_SCALE, _PCM24_SCALE - 1).astype(np.int32)
    buffer = io.BytesIO()
    # libsndfile takes int32 input as full-scale 32-bit and keeps its top 24 bits.
    sf.write(buffer, quantized << 8, sample_rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


# --- a set: render and resume -----------------------------------------------------------


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

    config.validate()
    if workers_problem(workers):
        raise IrError(workers_problem(workers))
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
        write_atomic(manifest_path, json.dumps(manifest, indent=1, allow_nan=False).encode())
        summary.manifest_written = True
    return summary


def _prepare_folder(out: Path, recipe: dict) -> None:
    """Make ``out``; refuse one that holds another recipe's set or audio not ours (the
    trainer loads every .wav/.flac under an IR folder)."""
    if out.exists() and not out.is_dir():
        raise IrError(f"{out} is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise IrError(f"cannot create {out}: {error.strerror or error}") from None
    recipe_path = out / RECIPE_NAME
    if recipe_path.is_file():
        held = read_json_or_none(recipe_path)
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
        # Created only if absent (LocalStore.create: a hard link, atomic): two renders of
        # different recipes started together cannot both claim the folder.
        claimed = open_store(out).create(RECIPE_NAME, json.dumps(recipe, indent=1, allow_nan=False).encode())
    except OSError as error:
        raise IrError(f"cannot write to {out}: {error.strerror or error}") from None
    if not claimed and read_json_or_none(recipe_path) != recipe:
        raise IrError(f"{out} is being rendered with impulse responses of another recipe; choose another folder")


def read_json_or_none(path: Path) -> Any:
    """A JSON file within the format's limits (size, depth, no NaN), or None when it is
    missing or unreadable: the same reader as every dataset manifest's."""
    try:
        return read_json_file(path, MAX_MANIFEST_BYTES)
    except (OSError, FormatError):
        return None


def _readable(path: Path) -> bool:
    """An existing regular file whose header decodes (a complete one: writes are atomic);
    a FIFO in its place is not opened (that would block) and is replaced."""
    if not is_regular_file(path):
        return False
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
    response, _ = impulse_response(config.seed, index, config)
    write_atomic(out / ir_name(index), encode_pcm24_flac(response, config.sample_rate))
    return index


def _record(seconds: float) -> dict:
    import datetime
    import platform

    from doppelgen.render.manifest import _version, software_versions

    return {
        # The pair datasets' list (its JAX entries do not matter here) and what IRs use.
        "software": {**software_versions(), **{name: _version(name) for name in ("scipy", "pyroomacoustics")}},
        "machine": platform.machine(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "render_seconds": round(seconds, 3),
    }


def is_ir_manifest(manifest: Any) -> bool:
    return isinstance(manifest, dict) and isinstance(manifest.get("recipe"), dict) and manifest["recipe"].get("kind") == IR_KIND


# --- the default set, rendered into the cache on first use -----------------------------

def ir_cache_root() -> Path:
    """The default impulse-response sets: ``irs`` in the project's cache folder."""
    return cache_root() / "irs"


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
    manifest = read_json_or_none(folder / MANIFEST_NAME)
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
    manifest = read_json_or_none(folder / MANIFEST_NAME)
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
