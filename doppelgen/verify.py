"""``doppelgen verify``: check a finished dataset against its manifest and FORMAT.md.

Every shard is read end to end: its sha256, size and pair count against the manifest
and its stats file, its members' names and order, every clip decoded (mono, the right
rate and length, finite), every JSON's fields. Optionally some pairs are rendered
again and compared with what the shards hold: byte for byte when the platform and
software match the manifest's record, within ``RERENDER_TOLERANCE`` × peak otherwise.

Problems are one line each, naming the shard and member, so a person can grep them.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .config import Recipe, RecipeError
from .format import (
    MANIFEST_NAME,
    FormatError,
    decode_clip,
    is_packed_recipe,
    member_names,
    n_samples,
    pair_key,
    parse_sample_json,
    read_manifest,
    shard_index,
    shard_name,
    split_member_name,
    stats_name,
    iter_tar_members,
)
from .files import default_workers, file_sha256
from .shard_writer import pair_sample

# Audio rendered on another platform (CPU vs GPU) or with other software versions must
# agree with the stored audio within this fraction of the clip's peak. FLAC's own
# quantisation is at most 2**-22 of the peak and float32 reassociation errors are of order
# 1e-6, so 1e-4 leaves room for both while a different parameter draw or synth change
# (errors of order 1) still fails. Not yet measured against a GPU render.
RERENDER_TOLERANCE = 1e-4
# Software whose version changes rendered bytes; the same versions on the same backend
# must reproduce a shard bit for bit.
BYTE_EXACT_SOFTWARE = ("jax", "jaxlib", "synthax", "numpy", "libsndfile")
MAX_PROBLEMS_PER_SHARD = 20


def default_verify_workers() -> int:
    """Processes checking shards: reading and decoding is CPU-bound, a few cores suffice."""
    return default_workers(cap=4)


class VerifyError(ValueError):
    """Verification cannot start (no such folder, bad option); the message is one line."""


@dataclass(frozen=True)
class ShardExpectation:
    """What one shard must hold, from the manifest (fields are None where it is silent)."""

    index: int
    codec: str
    sample_rate: int | None  # None: unknown (no manifest and no readable clip)
    n_samples: int | None
    first_pair: int | None = None
    n_pairs: int | None = None
    sha256: str | None = None
    bytes: int | None = None
    seed: int | None = None
    n_params: int | None = None
    n_layers: int = 1  # synth layers: the JSON has ``layers`` exactly when > 1
    view_bounds: tuple[float, float] | None = None  # synth views live in [eps, 1]
    packed: bool = False  # real audio from ``doppelgen pack``: JSON names its source

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass
class VerifyReport:
    folder: Path
    problems: list[str] = field(default_factory=list)
    shards_checked: int = 0
    pairs_checked: int = 0
    rerendered: int = 0
    rerender_mode: str | None = None  # "bytes" or a tolerance, when pairs were rendered again

    @property
    def ok(self) -> bool:
        return not self.problems


# --- one shard -----------------------------------------------------------------------


def group_members(members: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """Consecutive members sharing a WebDataset key, as ``(key, [(name, bytes), ...])``."""
    key, group = None, []
    for name, data in members:
        member_key, _ = split_member_name(name)
        if key is not None and member_key != key:
            yield key, group
            group = []
        key = member_key
        group.append((name, data))
    if key is not None:
        yield key, group


def check_sample_json(meta: dict, expected_index: int, exp: ShardExpectation) -> list[str]:
    """FORMAT.md's JSON fields of one pair, beyond their presence."""
    problems = []
    if meta["index"] != expected_index:
        problems.append(f"index {meta['index']!r}, expected {expected_index}")
    if exp.seed is not None and meta["seed"] != exp.seed:
        problems.append(f"seed {meta['seed']!r}, expected {exp.seed}")
    if not all(math.isfinite(g) and g > 0 for g in meta["gain"]):
        problems.append(f"gain {meta['gain']} is not two positive finite numbers")
    layers = meta.get("layers")
    if exp.n_layers > 1:
        if not (isinstance(layers, list) and len(layers) == exp.n_layers):
            problems.append(f"layers must list {exp.n_layers} params objects")
            layers = None
    elif layers is not None:
        problems.append("layers present, but the recipe has one layer")
    for params in [meta["params"]] + (layers or []):
        problems += check_params(params, exp)
    if exp.packed and not isinstance(meta.get("source"), str):
        problems.append("source (the recording's relative path) is missing")
    return problems


def check_params(params: Any, exp: ShardExpectation) -> list[str]:
    if not (isinstance(params, dict) and set(params) >= {"base", "a", "b"}):
        return ["params must be an object with base, a and b"]
    problems = []
    for part in ("base", "a", "b"):
        values = params[part]
        if not (isinstance(values, list) and all(isinstance(v, (int, float)) for v in values)):
            problems.append(f"params.{part} is not a list of numbers")
            continue
        if exp.n_params is not None and len(values) != exp.n_params:
            problems.append(f"params.{part} has {len(values)} values, the manifest names {exp.n_params}")
        elif not all(math.isfinite(v) for v in values):
            problems.append(f"params.{part} holds a non-finite value")
        elif exp.view_bounds is not None and values:
            low, high = (0.0, 1.0) if part == "base" else exp.view_bounds
            if min(values) < low or max(values) > high:
                problems.append(f"params.{part} leaves [{low:g}, {high:g}]")
    return problems


def check_pair(key: str, group: list[tuple[str, bytes]], expected_index: int, exp: ShardExpectation) -> list[str]:
    """Names, order, audio and JSON of one pair's members; problems as ``member: what``."""
    expected_names = list(member_names(expected_index, exp.codec))
    names = [name for name, _ in group]
    if names != expected_names:
        return [f"{key}: members {', '.join(names)}; expected {', '.join(expected_names)}"]
    data = dict(group)
    name_a, name_b, name_json = expected_names
    try:
        meta = parse_sample_json(data[name_json])
    except FormatError as error:
        return [f"{name_json}: {error}"]
    problems = [f"{name_json}: {p}" for p in check_sample_json(meta, expected_index, exp)]
    if key != pair_key(expected_index):
        problems.append(f"{name_json}: key {key} does not match index {expected_index}")
    for name, gain in ((name_a, meta["gain"][0]), (name_b, meta["gain"][1])):
        try:
            audio, rate = decode_clip(data[name], gain)
        except FormatError as error:
            problems.append(f"{name}: {error}")
            continue
        if exp.sample_rate is not None and rate != exp.sample_rate:
            problems.append(f"{name}: {rate} Hz, expected {exp.sample_rate}")
        if exp.n_samples is not None and len(audio) != exp.n_samples:
            problems.append(f"{name}: {len(audio)} samples, expected {exp.n_samples}")
        if not np.isfinite(audio).all():
            problems.append(f"{name}: non-finite audio")
    return problems


def check_shard(folder: str, exp: ShardExpectation) -> tuple[list[str], int]:
    """Every check of one shard; returns ``(problems, pairs read)``. Pure given the files,
    so shards can be checked in any order or process."""
    folder_path = Path(folder)
    tar, stats = folder_path / exp.name, folder_path / stats_name(exp.index)
    if not tar.is_file():
        return [f"{exp.name}: missing"], 0
    problems: list[str] = []
    try:
        digest, size = file_sha256(tar)
    except OSError as error:
        return [f"{exp.name}: unreadable ({error.strerror or error})"], 0
    if exp.sha256 is not None and digest != exp.sha256:
        problems.append(f"{exp.name}: sha256 {digest[:16]}... differs from the manifest's {exp.sha256[:16]}...")
    if exp.bytes is not None and size != exp.bytes:
        problems.append(f"{exp.name}: {size} bytes, the manifest says {exp.bytes}")
    stats_n_pairs = None
    try:
        record = json.loads(stats.read_text())
        stats_n_pairs = record.get("n_pairs")
        if record.get("sha256") != digest:
            problems.append(f"{stats.name}: sha256 does not match {exp.name} (shard changed after it was written)")
    except FileNotFoundError:
        problems.append(f"{stats.name}: missing, so {exp.name} is not complete")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        problems.append(f"{stats.name}: unreadable ({error})")

    n_expected = exp.n_pairs if exp.n_pairs is not None else stats_n_pairs
    pairs, first = 0, exp.first_pair
    try:
        for key, group in group_members(iter_tar_members(tar)):
            if first is None:  # no manifest: trust the first key and check the rest follow it
                first = int(key) if key.isdigit() else 0
            expected_index = first + pairs
            problems += [f"{exp.name}: {p}" for p in check_pair(key, group, expected_index, exp)]
            pairs += 1
            if len(problems) > MAX_PROBLEMS_PER_SHARD:
                break
    except FormatError as error:
        message = str(error)  # iter_tar_members names the shard already
        problems.append(message if message.startswith(f"{exp.name}: ") else f"{exp.name}: {message}")
    else:
        if n_expected is not None and pairs != n_expected and len(problems) <= MAX_PROBLEMS_PER_SHARD:
            problems.append(f"{exp.name}: holds {pairs} pairs, the manifest says {n_expected}")
    if len(problems) > MAX_PROBLEMS_PER_SHARD:
        hidden = len(problems) - MAX_PROBLEMS_PER_SHARD
        problems = problems[:MAX_PROBLEMS_PER_SHARD] + [f"{exp.name}: {hidden}+ more problems not shown"]
    return problems, pairs


# --- the whole dataset ---------------------------------------------------------------


def shard_expectations(folder: Path, manifest: dict | None) -> tuple[list[ShardExpectation], list[str]]:
    """What each shard must hold, and problems with the manifest itself.

    Without a manifest, every complete-looking shard on disk is checked against its own
    stats file and FORMAT.md alone.
    """
    problems: list[str] = []
    if manifest is None:
        on_disk = sorted(i for i in (shard_index(e) for e in os.listdir(folder)) if i is not None)
        base = ShardExpectation(index=0, codec="flac", sample_rate=None, n_samples=None)
        guesses = [_expect_from_disk(folder, base, i) for i in on_disk]
        return guesses, problems

    recipe = manifest["recipe"]
    record = manifest.get("record") if isinstance(manifest.get("record"), dict) else {}
    packed = is_packed_recipe(recipe)
    try:
        rate, duration = int(recipe["sample_rate"]), float(recipe["duration"])
        per_shard, n_shards = int(recipe["pairs_per_shard"]), int(recipe["n_shards"])
        codec = str(recipe.get("codec", "flac"))
    except (KeyError, TypeError, ValueError) as error:
        return [], [f"{MANIFEST_NAME}: recipe lacks a valid {error}"]
    if not packed:
        try:
            Recipe.from_dict(recipe)
        except RecipeError as error:
            problems.append(f"{MANIFEST_NAME}: recipe: {error}")
    entries = record.get("shards") if isinstance(record.get("shards"), list) else None
    if entries is None:
        problems.append(f"{MANIFEST_NAME}: no record of shards (rendering not finished?)")
        entries = []
    by_name = {e.get("name"): e for e in entries if isinstance(e, dict)}
    expected_names = {shard_name(i) for i in range(n_shards)}
    for name in sorted(set(by_name) - expected_names):
        problems.append(f"{MANIFEST_NAME}: lists {name}, outside the recipe's {n_shards} shards")
    for name in sorted(n for n in os.listdir(folder) if shard_index(n) is not None and n not in expected_names):
        problems.append(f"{name}: not part of this dataset (the recipe has {n_shards} shards)")
    param_names = record.get("param_names")
    if not isinstance(param_names, list):
        problems.append(f"{MANIFEST_NAME}: no param_names list in the record")
    try:
        # Views are clipped to [eps, 1] in float32, so eps is compared at float32 precision.
        eps = float(np.float32(recipe.get("eps", 0.0))) if not packed else None
        n_layers = 1 if packed else int(recipe.get("n_layers", 1))
    except (TypeError, ValueError):
        return [], problems + [f"{MANIFEST_NAME}: recipe eps or n_layers is not a number; shards not checked"]
    expectations = []
    for index in range(n_shards):
        entry = by_name.get(shard_name(index))
        if entry is None:
            problems.append(f"{MANIFEST_NAME}: no record of {shard_name(index)}")
            entry = {}
        full = per_shard  # a synth recipe fills every shard
        expected_pairs = entry.get("n_pairs") if packed else full
        missing = [field for field in ("n_pairs", "bytes", "sha256") if entry and field not in entry]
        if missing:
            problems.append(f"{MANIFEST_NAME}: the record of {shard_name(index)} lacks {', '.join(missing)}")
        if not packed and entry.get("n_pairs") not in (None, full):
            problems.append(f"{MANIFEST_NAME}: records {entry.get('n_pairs')} pairs in {shard_name(index)}, the recipe makes {full}")
        expectations.append(
            ShardExpectation(
                index=index,
                codec=codec,
                sample_rate=rate,
                n_samples=n_samples(duration, rate),
                first_pair=index * per_shard,
                n_pairs=expected_pairs,
                sha256=entry.get("sha256"),
                bytes=entry.get("bytes"),
                seed=recipe.get("seed"),
                n_params=len(param_names) if isinstance(param_names, list) else None,
                n_layers=n_layers,
                view_bounds=None if packed else (eps, 1.0),
                packed=packed,
            )
        )
    return expectations, problems


def _expect_from_disk(folder: Path, base: ShardExpectation, index: int) -> ShardExpectation:
    """Without a manifest: the rate and length of the first clip of shard ``index`` stand in."""
    rate, length, codec = None, None, "flac"
    try:
        for name, data in iter_tar_members(folder / shard_name(index)):
            if name.endswith((".a.flac", ".a.wav")):
                codec = name.rsplit(".", 1)[1]
                audio, rate = decode_clip(data)
                length = len(audio)
                break
    except FormatError:
        pass  # check_shard reports the damage
    return replace(base, index=index, codec=codec, sample_rate=rate, n_samples=length)


def verify_dataset(folder: str | os.PathLike, *, rerender: int = 0, workers: int = 0, seed: int = 0) -> VerifyReport:
    """Check every shard of ``folder`` (see the module docstring) and, with ``rerender``
    > 0, render that many pairs again (drawn with ``seed``) and compare them."""
    folder = Path(folder)
    if rerender < 0 or workers < 0:
        raise VerifyError("--rerender and --workers must be >= 0")
    if not folder.is_dir():
        raise VerifyError(f"{folder}: no such dataset folder")
    report = VerifyReport(folder=folder)
    manifest = None
    if not (folder / MANIFEST_NAME).is_file():
        report.problems.append(f"{MANIFEST_NAME}: missing (an unfinished render?); shards checked against their stats files only")
    else:
        try:
            manifest = read_manifest(folder)
        except FormatError as error:
            report.problems.append(f"{MANIFEST_NAME}: {error}")
    if rerender and manifest is not None and is_packed_recipe(manifest["recipe"]):
        raise VerifyError("--rerender needs a synth recipe; this dataset was packed from recordings")
    expectations, problems = shard_expectations(folder, manifest)
    report.problems += problems
    for problems, pairs in _map_shards(str(folder), expectations, workers):
        report.problems += problems
        report.pairs_checked += pairs
        report.shards_checked += 1
    if rerender:
        if manifest is None:
            report.problems.append(f"{MANIFEST_NAME}: cannot render pairs again without a recipe")
        else:
            rerender_pairs(folder, manifest, rerender, seed, report)
    return report


def _map_shards(folder: str, expectations: list[ShardExpectation], workers: int) -> Iterator[tuple[list[str], int]]:
    # Starting processes costs about a second each: not worth it for a handful of shards.
    if workers <= 1 or len(expectations) < 4 * workers:
        for exp in expectations:
            yield check_shard(folder, exp)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # JAX may be loaded; never fork it
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(check_shard, [folder] * len(expectations), expectations, chunksize=4)


# --- rendering again -----------------------------------------------------------------


def same_platform(record: dict) -> bool:
    """Whether this machine should reproduce the record's bytes exactly."""
    import jax

    from .manifest import software_versions

    platform = record.get("platform") or {}
    ours = software_versions()
    theirs = record.get("software") or {}
    same_device = platform.get("backend") == jax.default_backend() and platform.get("device_kind") == jax.devices()[0].device_kind
    return same_device and all(ours.get(k) == theirs.get(k) for k in BYTE_EXACT_SOFTWARE)


def read_pairs(folder: Path, indices: Iterable[int], per_shard: int) -> dict[int, dict[str, bytes]]:
    """``{index: {member suffix: bytes}}`` of the given pairs, reading each shard once."""
    wanted: dict[int, set[int]] = {}
    for index in indices:
        wanted.setdefault(index // per_shard, set()).add(index)
    found: dict[int, dict[str, bytes]] = {}
    for shard, members in sorted(wanted.items()):
        keys = {pair_key(i): i for i in members}
        try:
            for name, data in iter_tar_members(folder / shard_name(shard)):
                key, suffix = split_member_name(name)
                if key in keys:
                    found.setdefault(keys[key], {})[suffix] = data
        except FormatError:
            continue  # the shard check has reported it
    return found


def rerender_pairs(folder: Path, manifest: dict, count: int, seed: int, report: VerifyReport) -> None:
    """Render ``count`` sampled pairs again and compare them with the stored ones."""
    recipe_dict, record = manifest["recipe"], manifest.get("record") or {}
    try:
        recipe = Recipe.from_dict(recipe_dict)
    except RecipeError as error:
        report.problems.append(f"{MANIFEST_NAME}: cannot render again: {error}")
        return
    from .kernel import render_pairs  # JAX: loaded only when pairs are rendered again

    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(recipe.n_pairs, size=min(count, recipe.n_pairs), replace=False))
    stored = read_pairs(folder, indices.tolist(), recipe.pairs_per_shard)
    indices = np.array([i for i in indices if i in stored], dtype=np.int64)
    if not len(indices):
        report.problems.append("no sampled pair could be read back to compare")
        return
    a, b, params = render_pairs(recipe, indices, batch_size=min(len(indices), 64))
    exact = same_platform(record)
    report.rerender_mode = "bytes" if exact else f"audio within {RERENDER_TOLERANCE:g} x peak, params exact"
    for row, index in enumerate(indices.tolist()):
        fresh = pair_sample(index, recipe.seed, a[row], b[row], params[row], recipe.sample_rate, recipe.codec)
        problems = compare_pair(fresh, stored[index], exact)
        shard = shard_name(index // recipe.pairs_per_shard)
        report.problems += [f"{shard}: {pair_key(index)}.{p}" for p in problems]
        report.rerendered += 1


def compare_pair(fresh: dict, stored: dict[str, bytes], exact: bool) -> list[str]:
    """Problems as ``suffix: what``; ``fresh`` is a ``pair_sample`` of the new render."""
    suffixes = [s for s in fresh if s != "__key__"]
    if exact:
        differing = [s for s in suffixes if fresh[s] != stored.get(s)]
        if not differing:
            return []
        # Say how far apart they are: rounding-level differences point at the platform
        # (e.g. another CPU's vector units), large ones at the data or the software.
        beyond = {p.split(":")[0] for p in compare_pair(fresh, stored, exact=False)}
        agree = f" (but agree within {RERENDER_TOLERANCE:g} x peak)"
        return [f"{s}: re-rendered bytes differ" + ("" if s in beyond else agree) for s in differing]
    try:
        new_meta, old_meta = json.loads(fresh["json"]), parse_sample_json(stored.get("json", b""))
    except FormatError as error:
        return [f"json: {error}"]
    problems = []
    for field_name in ("index", "seed", "params", "layers"):
        if new_meta.get(field_name) != old_meta.get(field_name):
            problems.append(f"json: {field_name} differs from the new render")
    audio_suffixes = [s for s in suffixes if s != "json"]
    for suffix, new_gain, old_gain in zip(audio_suffixes, new_meta["gain"], old_meta["gain"]):
        try:
            new, _ = decode_clip(fresh[suffix], new_gain)
            old, _ = decode_clip(stored.get(suffix, b""), old_gain)
        except FormatError as error:
            problems.append(f"{suffix}: {error}")
            continue
        peak = max(float(np.max(np.abs(new))) if new.size else 0.0, 1e-12)
        error = float(np.max(np.abs(new - old))) if new.shape == old.shape else math.inf
        if error > RERENDER_TOLERANCE * peak:
            problems.append(f"{suffix}: differs from the new render by {error / peak:.2e} x peak (> {RERENDER_TOLERANCE:g})")
    return problems
