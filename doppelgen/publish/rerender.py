"""Rendering sampled pairs of a dataset again and comparing them with the stored ones.

Byte for byte when the platform and software match the manifest's record, within the
codec's tolerance (:func:`rerender_tolerance`) x peak otherwise (audio rendered on another
device or with other library versions differs by rounding, a different draw or synth by
order 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from doppelgen.recipe import Recipe, RecipeError
from doppelgen.format import (
    MANIFEST_NAME,
    RERENDER_TOLERANCE,
    FormatError,
    Manifest,
    codec_info,
    decode_clip,
    iter_tar_members,
    pair_key,
    parse_sample_json,
    shard_index,
    shard_name,
    split_member_name,
)
from doppelgen.render.shard_writer import pair_sample
from doppelgen.storage import Store, open_store

# Software whose version changes rendered bytes; the same versions on the same backend
# must reproduce a shard bit for bit.
BYTE_EXACT_SOFTWARE = ("jax", "jaxlib", "synthax", "numpy", "libsndfile")


@dataclass
class RerenderResult:
    problems: list[str] = field(default_factory=list)
    rerendered: int = 0
    mode: str | None = None  # "bytes" or the tolerance the audio was compared within


def rerender_tolerance(codec: str) -> float:
    """How far (x peak) audio rendered again on another platform may lie from the stored
    audio of a dataset in ``codec`` (its row of ``format.CODEC_TABLE``)."""
    return codec_info(codec).rerender_tolerance


def same_platform(manifest: Manifest) -> bool:
    """Whether this machine should reproduce the bytes the manifest records exactly."""
    import jax

    from doppelgen.render.manifest import software_versions

    platform, ours, theirs = manifest.platform, software_versions(), manifest.software
    same_device = platform.get("backend") == jax.default_backend() and platform.get("device_kind") == jax.devices()[0].device_kind
    return same_device and all(ours.get(k) == theirs.get(k) for k in BYTE_EXACT_SOFTWARE)


def read_pairs(folder: Store, indices: Iterable[int], per_shard: int) -> dict[int, dict[str, bytes]]:
    """``{index: {member suffix: bytes}}`` of the given pairs, reading each shard once."""
    wanted: dict[int, set[int]] = {}
    for index in indices:
        wanted.setdefault(index // per_shard, set()).add(index)
    found: dict[int, dict[str, bytes]] = {}
    for shard, members in sorted(wanted.items()):
        keys = {pair_key(i): i for i in members}
        try:
            with folder.open_local(shard_name(shard)) as handle:
                for name, data in iter_tar_members(handle, shard_name(shard)):
                    key, suffix = split_member_name(name)
                    if key in keys:
                        found.setdefault(keys[key], {})[suffix] = data
        except (FormatError, OSError):
            continue  # the shard check has reported it
    return found


def rerender_pairs(folder: str | Store, manifest: Manifest, count: int, seed: int) -> RerenderResult:
    """Render ``count`` pairs sampled with ``seed`` again and compare them with the stored
    ones of the dataset at ``folder`` (a path, URL or store)."""
    folder = open_store(folder)
    result = RerenderResult()
    try:
        recipe = Recipe.from_dict(manifest.recipe)
    except RecipeError as error:
        result.problems.append(f"{MANIFEST_NAME}: cannot render again: {error}")
        return result
    from doppelgen.render.kernel import render_pairs  # JAX: loaded only when pairs are rendered again

    # At most as many pairs as the shards on disk could hold: a manifest's claims do not
    # size the draw (choice keeps only the drawn indices for a small sample).
    on_disk = sum(1 for index in map(shard_index, folder.names()) if index is not None and index < recipe.n_shards)
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(recipe.n_pairs, size=min(count, recipe.n_pairs, on_disk * recipe.pairs_per_shard), replace=False))
    stored = read_pairs(folder, indices.tolist(), recipe.pairs_per_shard)
    indices = np.array([i for i in indices if i in stored], dtype=np.int64)
    if not len(indices):
        result.problems.append("no sampled pair could be read back to compare")
        return result
    a, b, params = render_pairs(recipe, indices, batch_size=min(len(indices), 64))
    exact = same_platform(manifest)
    tolerance = rerender_tolerance(recipe.codec)
    result.mode = "bytes" if exact else f"audio within {tolerance:g} x peak, params exact"
    for row, index in enumerate(indices.tolist()):
        fresh = pair_sample(index, recipe.seed, a[row], b[row], params[row], recipe.sample_rate, recipe.codec)
        problems = compare_pair(fresh, stored[index], exact, tolerance)
        shard = shard_name(index // recipe.pairs_per_shard)
        result.problems += [f"{shard}: {pair_key(index)}.{p}" for p in problems]
        result.rerendered += 1
    return result


def compare_pair(fresh: dict, stored: dict[str, bytes], exact: bool, tolerance: float = RERENDER_TOLERANCE) -> list[str]:
    """Problems as ``suffix: what``; ``fresh`` is a ``pair_sample`` of the new render, the
    audio compared within ``tolerance`` x peak unless ``exact``."""
    suffixes = [s for s in fresh if s != "__key__"]
    if exact:
        differing = [s for s in suffixes if fresh[s] != stored.get(s)]
        if not differing:
            return []
        # Say how far apart they are: rounding-level differences point at the platform
        # (e.g. another CPU's vector units), large ones at the data or the software.
        beyond = {p.split(":")[0] for p in compare_pair(fresh, stored, False, tolerance)}
        agree = f" (but agree within {tolerance:g} x peak)"
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
        if error > tolerance * peak:
            problems.append(f"{suffix}: differs from the new render by {error / peak:.2e} x peak (> {tolerance:g})")
    return problems
