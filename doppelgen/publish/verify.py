"""``doppelgen verify``: check a finished dataset against its manifest and docs/FORMAT.md.

Every shard is read end to end (``shard_checks``): its sha256, size and pair count
against the manifest and its stats file, its members' names and order, every clip
decoded (mono, the right rate and length, finite), every JSON's fields. Optionally some
pairs are rendered again and compared with what the shards hold (``rerender``).

Problems are one line each, naming the shard and member, so a person can grep them.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from doppelgen.recipe import Recipe, RecipeError
from doppelgen.files import default_workers, workers_problem
from doppelgen.format import (
    MANIFEST_NAME,
    FormatError,
    decode_clip,
    is_packed_recipe,
    iter_tar_members,
    n_samples,
    read_manifest,
    shard_index,
    shard_name,
)
from doppelgen.publish.shard_checks import ShardExpectation, check_shard
from doppelgen.storage import Store, open_store
from doppelgen.render.worker_lifetime import exit_with_parent


# Starting a process costs about a second: not worth it for a handful of shards.
MIN_SHARDS_PER_WORKER = 4


def default_verify_workers() -> int:
    """Processes checking shards: reading and decoding is CPU-bound, a few cores suffice."""
    return default_workers(cap=4)


class VerifyError(ValueError):
    """Verification cannot start (no such folder, bad option); the message is one line."""


@dataclass
class VerifyReport:
    folder: Path | str  # the folder, or the dataset's URL
    problems: list[str] = field(default_factory=list)
    shards_checked: int = 0
    pairs_checked: int = 0
    rerendered: int = 0
    rerender_mode: str | None = None  # "bytes" or a tolerance, when pairs were rendered again

    @property
    def ok(self) -> bool:
        return not self.problems


def shard_expectations(folder: str | os.PathLike | Store, manifest: dict | None) -> tuple[list[ShardExpectation], list[str]]:
    """What each shard must hold, and problems with the manifest itself.

    Without a manifest, every complete-looking shard on disk is checked against its own
    stats file and docs/FORMAT.md alone.
    """
    problems: list[str] = []
    folder = open_store(folder)
    listing = folder.names()
    if manifest is None:
        on_disk = sorted(i for i in map(shard_index, listing) if i is not None)
        base = ShardExpectation(index=0, codec="flac", sample_rate=None, n_samples=None)
        guesses = [_expect_from_disk(folder, base, i) for i in on_disk]
        return guesses, problems

    # read_manifest has checked the recipe's numbers and the record's shard entries.
    recipe = manifest["recipe"]
    record = manifest.get("record") or {}
    packed = is_packed_recipe(recipe)
    rate, duration = recipe["sample_rate"], recipe["duration"]
    per_shard, n_shards = recipe["pairs_per_shard"], recipe["n_shards"]
    codec = recipe.get("codec", "flac")
    if not packed:
        try:
            Recipe.from_dict(recipe)
        except RecipeError as error:
            problems.append(f"{MANIFEST_NAME}: recipe: {error}")
    entries = record.get("shards")
    if entries is None:
        problems.append(f"{MANIFEST_NAME}: no record of shards (rendering not finished?)")
        entries = []
    by_name = {entry["name"]: entry for entry in entries}
    outside = [name for name in listing if shard_index(name) is not None and shard_index(name) >= n_shards]
    for name in sorted(outside):
        problems.append(f"{name}: not part of this dataset (the recipe has {n_shards} shards)")
    param_names = record.get("param_names")
    if not isinstance(param_names, list):
        problems.append(f"{MANIFEST_NAME}: no param_names list in the record")
    # Views are clipped to [eps, 1] in float32, so eps is compared at float32 precision.
    eps = float(np.float32(recipe.get("eps", 0.0))) if not packed else None
    n_layers = 1 if packed else recipe.get("n_layers", 1)
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


def _expect_from_disk(folder: Store, base: ShardExpectation, index: int) -> ShardExpectation:
    """Without a manifest: the rate and length of the first clip of shard ``index`` stand in."""
    rate, length, codec = None, None, "flac"
    try:
        with folder.open_local(shard_name(index)) as handle:
            for name, data in iter_tar_members(handle, shard_name(index)):
                if name.endswith((".a.flac", ".a.wav")):
                    codec = name.rsplit(".", 1)[1]
                    audio, rate = decode_clip(data)
                    length = len(audio)
                    break
    except (FormatError, OSError):
        pass  # check_shard reports the damage
    return replace(base, index=index, codec=codec, sample_rate=rate, n_samples=length)


def verify_dataset(folder: str | os.PathLike, *, rerender: int = 0, workers: int = 0, seed: int = 0) -> VerifyReport:
    """Check every shard of ``folder`` (see the module docstring) and, with ``rerender``
    > 0, render that many pairs again (drawn with ``seed``) and compare them. ``folder``
    may be a ``file://``, ``s3://`` or ``gs://`` URL (StorageError, one line, if it cannot
    be reached)."""
    if rerender < 0 or workers < 0:
        raise VerifyError("--rerender and --workers must be >= 0")
    if workers_problem(workers, "--workers"):
        raise VerifyError(workers_problem(workers, "--workers"))
    store = open_store(folder)
    if not store.found():
        raise VerifyError(f"{store.location}: no such dataset folder")
    report = VerifyReport(folder=store.as_given)
    manifest = None
    if not store.exists(MANIFEST_NAME):
        report.problems.append(f"{MANIFEST_NAME}: missing (an unfinished render?); shards checked against their stats files only")
    else:
        try:
            manifest = read_manifest(store)
        except FormatError as error:
            report.problems.append(f"{MANIFEST_NAME}: {error}")
    if rerender and manifest is not None and is_packed_recipe(manifest["recipe"]):
        raise VerifyError("--rerender needs a synth recipe; this dataset was packed from recordings")
    expectations, problems = shard_expectations(store, manifest)
    report.problems += problems
    for problems, pairs in _map_shards(store.location, expectations, workers):
        report.problems += problems
        report.pairs_checked += pairs
        report.shards_checked += 1
    if rerender:
        if manifest is None:
            report.problems.append(f"{MANIFEST_NAME}: cannot render pairs again without a recipe")
        else:
            from doppelgen.publish.rerender import rerender_pairs

            result = rerender_pairs(store, manifest, rerender, seed)
            report.problems += result.problems
            report.rerendered, report.rerender_mode = result.rerendered, result.mode
    return report


def _map_shards(folder: str, expectations: list[ShardExpectation], workers: int) -> Iterator[tuple[list[str], int]]:
    if workers <= 1 or len(expectations) < MIN_SHARDS_PER_WORKER * workers:
        for exp in expectations:
            yield check_shard(folder, exp)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # JAX may be loaded; never fork it
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),))
    with pool:
        yield from pool.map(check_shard, [folder] * len(expectations), expectations, chunksize=4)
