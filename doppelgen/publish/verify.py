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

from doppelgen.console import InputError
from doppelgen.files import default_workers, workers_problem
from doppelgen.format import (
    MANIFEST_NAME,
    FormatError,
    Manifest,
    decode_clip,
    iter_tar_members,
    read_manifest,
    shard_index,
    shard_name,
)
from doppelgen.publish.shard_checks import ShardExpectation, check_shard
from doppelgen.recipe import Recipe, RecipeError
from doppelgen.render.worker_lifetime import exit_with_parent
from doppelgen.storage import Store, open_store

# Starting a process costs about a second: not worth it for a handful of shards.
MIN_SHARDS_PER_WORKER = 4


def default_verify_workers() -> int:
    """Processes checking shards: reading and decoding is CPU-bound, a few cores suffice."""
    return default_workers(cap=4)


class VerifyError(InputError):
    """Verification cannot start (no such folder, bad option); the message is one line."""


@dataclass
class VerifyReport:
    folder: Path | str  # the folder, or the dataset's URL
    problems: list[str] = field(default_factory=list)
    shards_checked: int = 0
    pairs_checked: int = 0
    rerendered: int = 0
    rerender_mode: str | None = None  # "bytes" or what was compared, when pairs were rendered again
    rerender_measured: dict | None = None  # across platforms: worst and median clip distance, params difference

    @property
    def ok(self) -> bool:
        return not self.problems


def shard_expectations(folder: str | os.PathLike | Store, manifest: Manifest | None) -> tuple[list[ShardExpectation], list[str]]:
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

    # read_manifest has checked the recipe's numbers and the record's shard entries; what
    # the dataset's kind expects of its shards is on manifest.kind.
    kind, n_shards = manifest.kind, manifest.n_shards
    if kind.renders_again:
        try:
            Recipe.from_dict(manifest.recipe)
        except RecipeError as error:
            problems.append(f"{MANIFEST_NAME}: recipe: {error}")
    if manifest.shards is None:
        problems.append(f"{MANIFEST_NAME}: no record of shards (rendering not finished?)")
    by_name = {entry.name: entry for entry in manifest.shards or ()}
    outside = [name for name in listing if shard_index(name) is not None and shard_index(name) >= n_shards]
    for name in sorted(outside):
        problems.append(f"{name}: not part of this dataset (the recipe has {n_shards} shards)")
    if manifest.param_names is None:
        problems.append(f"{MANIFEST_NAME}: no param_names list in the record")
    # Views are clipped to [eps, 1] in float32, so eps is compared at float32 precision.
    view_bounds = (float(np.float32(manifest.eps or 0.0)), 1.0) if kind.bounded_views else None
    expectations = []
    for index in range(n_shards):
        entry = by_name.get(shard_name(index))
        if entry is None:
            problems.append(f"{MANIFEST_NAME}: no record of {shard_name(index)}")
        missing = [field for field in ("bytes", "sha256") if entry is not None and getattr(entry, field) is None]
        if missing:
            problems.append(f"{MANIFEST_NAME}: the record of {shard_name(index)} lacks {', '.join(missing)}")
        recorded = entry.n_pairs if entry is not None else None
        if kind.full_shards and recorded not in (None, manifest.pairs_per_shard):
            problems.append(f"{MANIFEST_NAME}: records {recorded} pairs in {shard_name(index)}, the recipe makes {manifest.pairs_per_shard}")
        expectations.append(
            ShardExpectation(
                index=index,
                codec=manifest.codec,
                sample_rate=manifest.sample_rate,
                n_samples=manifest.n_samples,
                first_pair=index * manifest.pairs_per_shard,
                n_pairs=manifest.pairs_per_shard if kind.full_shards else recorded,
                sha256=entry.sha256 if entry is not None else None,
                bytes=entry.bytes if entry is not None else None,
                seed=manifest.seed,
                n_params=len(manifest.param_names) if manifest.param_names is not None else None,
                n_layers=manifest.n_layers if kind.layered_params else 1,
                view_bounds=view_bounds,
                sample_text_fields=kind.required_text_fields,
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
    if rerender and manifest is not None and not manifest.kind.renders_again:
        raise VerifyError(f"--rerender needs a synth recipe; this dataset was {manifest.kind.made_by}")
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
            report.rerendered, report.rerender_mode, report.rerender_measured = result.rerendered, result.mode, result.measured
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
