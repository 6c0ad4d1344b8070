"""Rendering sampled pairs of a dataset again and comparing them with the stored ones.

Byte for byte when this machine is the platform the manifest records (backend, device
kind, machine, the CPU instruction set XLA compiles for, matmul precision:
``doppelgen.render.platform_identity``) with the same software versions; otherwise by
what survives a change of platform (``doppelgen.publish.cross_platform``): index, seed and
layers exactly, the parameters within float32 rounding, the audio by a log-mel distance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from doppelgen.format import (
    MANIFEST_NAME,
    FormatError,
    Manifest,
    decode_clip,
    iter_tar_members,
    pair_key,
    parse_sample_json,
    shard_index,
    shard_name,
    split_member_name,
)
from doppelgen.publish.cross_platform import (
    CLIP_TOLERANCE,
    DESCRIPTION,
    MEDIAN_TOLERANCE,
    PARAMS_TOLERANCE,
    log_mel_distance,
    params_difference,
)
from doppelgen.recipe import Recipe, RecipeError
from doppelgen.render.shard_writer import pair_sample
from doppelgen.storage import Store, open_store

# Software whose version changes rendered bytes; the same versions on the same platform
# must reproduce a shard bit for bit.
BYTE_EXACT_SOFTWARE = ("jax", "jaxlib", "synthax", "numpy", "libsndfile")


@dataclass
class RerenderResult:
    problems: list[str] = field(default_factory=list)
    rerendered: int = 0
    mode: str | None = None  # "bytes", or cross_platform.DESCRIPTION
    # Across platforms: what was measured (the worst and the median clip's log-mel
    # distance, the largest parameter difference); None for a byte comparison.
    measured: dict | None = None


@dataclass
class PairComparison:
    """One pair rendered again against the stored one, across platforms."""

    problems: list[str] = field(default_factory=list)
    params_difference: float = 0.0
    audio_distances: dict[str, float] = field(default_factory=dict)  # member suffix -> log-mel distance


def same_platform(manifest: Manifest) -> bool:
    """Whether this machine should reproduce the bytes the manifest records exactly: the
    same platform (``platform_identity.same_platform``) and the same versions of the
    software that shapes the bytes."""
    from doppelgen.render.manifest import software_versions
    from doppelgen.render.platform_identity import render_platform
    from doppelgen.render.platform_identity import same_platform as same_identity

    platform, ours, theirs = manifest.platform, software_versions(), manifest.software
    return same_identity(platform, render_platform()) and all(ours.get(k) == theirs.get(k) for k in BYTE_EXACT_SOFTWARE)


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
    result.mode = "bytes" if exact else DESCRIPTION
    distances, params_worst = [], 0.0
    for row, index in enumerate(indices.tolist()):
        fresh = pair_sample(index, recipe.seed, a[row], b[row], params[row], recipe.sample_rate, recipe.codec)
        shard = shard_name(index // recipe.pairs_per_shard)
        if exact:
            problems = compare_pair(fresh, stored[index], exact=True)
        else:
            comparison = compare_across_platforms(fresh, stored[index])
            problems = comparison.problems
            distances += comparison.audio_distances.values()
            params_worst = max(params_worst, comparison.params_difference)
        result.problems += [f"{shard}: {pair_key(index)}.{p}" for p in problems]
        result.rerendered += 1
    if not exact and distances:
        median = float(np.median(distances))
        result.measured = {"worst_clip": max(distances), "median_clip": median, "params_difference": params_worst}
        if median > MEDIAN_TOLERANCE:
            result.problems.append(
                f"re-rendered audio: the median clip's log-mel distance is {median:.3g} (> {MEDIAN_TOLERANCE:g}): "
                "the sound changed throughout, beyond any platform's rounding"
            )
    return result


def compare_pair(fresh: dict, stored: dict[str, bytes], exact: bool) -> list[str]:
    """Problems as ``suffix: what``; ``fresh`` is a ``pair_sample`` of the new render.
    ``exact``: byte for byte, saying of each differing member whether the pair still
    agrees as a render from another platform would; otherwise as one from another
    platform (:func:`compare_across_platforms`)."""
    if not exact:
        return compare_across_platforms(fresh, stored).problems
    suffixes = [s for s in fresh if s != "__key__"]
    differing = [s for s in suffixes if fresh[s] != stored.get(s)]
    if not differing:
        return []
    # Say how far apart they are: a pair that still agrees as a render from another platform
    # points at the platform (e.g. another CPU's vector units), one beyond that at the
    # data or the software. Pair by pair: the JSON's gain scales the audio.
    agree = "" if compare_across_platforms(fresh, stored).problems else " (but agree as a render from another platform would)"
    return [f"{s}: re-rendered bytes differ{agree}" for s in differing]


def compare_across_platforms(fresh: dict, stored: dict[str, bytes]) -> PairComparison:
    """Compare a new render with the stored pair as renders from two platforms
    (``cross_platform``): index, seed and layers exactly, params within
    ``PARAMS_TOLERANCE``, each clip within ``CLIP_TOLERANCE`` of log-mel distance."""
    comparison = PairComparison()
    try:
        new_meta, old_meta = json.loads(fresh["json"]), parse_sample_json(stored.get("json", b""))
    except FormatError as error:
        comparison.problems.append(f"json: {error}")
        return comparison
    for field_name in ("index", "seed"):
        if new_meta.get(field_name) != old_meta.get(field_name):
            comparison.problems.append(f"json: {field_name} differs from the new render")
    for field_name in ("params", "layers"):
        difference = params_difference(new_meta.get(field_name), old_meta.get(field_name))
        comparison.params_difference = max(comparison.params_difference, difference)
        if difference > PARAMS_TOLERANCE:
            how = f"by up to {difference:.2g} (> {PARAMS_TOLERANCE:g})" if math.isfinite(difference) else "in its structure"
            comparison.problems.append(f"json: {field_name} differs from the new render {how}")
    audio_suffixes = [s for s in fresh if s not in ("__key__", "json")]
    for suffix, new_gain, old_gain in zip(audio_suffixes, new_meta["gain"], old_meta["gain"]):
        try:
            new, rate = decode_clip(fresh[suffix], new_gain)
            old, _ = decode_clip(stored.get(suffix, b""), old_gain)
        except FormatError as error:
            comparison.problems.append(f"{suffix}: {error}")
            continue
        distance = log_mel_distance(old, new, rate)
        comparison.audio_distances[suffix] = distance
        if distance > CLIP_TOLERANCE:
            comparison.problems.append(f"{suffix}: log-mel distance {distance:.3g} from the new render (> {CLIP_TOLERANCE:g})")
    return comparison
