"""One run of shards, rendered in this process: what every distributor runs, here or on a cluster node.

A :class:`RenderJob` holds what a run needs wherever it runs (it is sent to Ray tasks):
``claim`` claims the output folder for the recipe once, before any run (``output_claim``;
with ``overwrite`` it first clears another recipe's dataset); ``render`` holds that claim
while it skips the complete shards, renders the missing ones batch by batch and writes
them through the encoding workers; ``finish`` writes ``manifest.json`` once every shard of
the recipe is complete. All are safe to re-run after any interruption.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from doppelgen.console import InputError
from doppelgen.format import MANIFEST_NAME, complete_shards
from doppelgen.recipe import Recipe
from doppelgen.render.encoding_workers import EncoderPool, InlineWriter, SlotLayout, shared_memory_room
from doppelgen.render.manifest import build_manifest, existing_recipe_hashes, write_manifest
from doppelgen.render.output_claim import FolderTakenError, claimed_folder, clear_dataset
from doppelgen.render.shard_writer import ShardOptions
from doppelgen.storage import StorageError, Store, open_store


class DatasetError(InputError):
    """The output folder cannot take this render; the message is one line."""


@dataclass
class RenderSummary:
    out: Path | str  # the folder, or the URL of an object store
    rendered: list[int] = field(default_factory=list)  # shards written by this call
    skipped: list[int] = field(default_factory=list)  # shards in range that were already complete
    pairs: int = 0
    seconds: float = 0.0
    manifest_written: bool = False
    complete: bool = False  # every shard of the recipe is complete and manifest.json exists


def parse_shard_range(text: str | None, n_shards: int) -> range:
    """``A:B`` (B exclusive, either side may be empty) -> range of shard indices."""
    if text is None or text == "":
        return range(n_shards)
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start = int(parts[0]) if parts[0] else 0
        stop = int(parts[1]) if parts[1] else n_shards
    except ValueError:
        raise DatasetError(f"bad shard range {text!r}: expected A:B, e.g. 0:64") from None
    if not 0 <= start < stop <= n_shards:
        raise DatasetError(f"bad shard range {text!r}: needs 0 <= A < B <= {n_shards}")
    return range(start, stop)


def open_output(out: str | os.PathLike | Store) -> Store:
    try:
        return open_store(out)
    except StorageError as error:
        raise DatasetError(str(error)) from None


@contextmanager
def prepared_output(recipe: Recipe, out: Store, overwrite: bool) -> Iterator[None]:
    """Make the folder (check the bucket takes objects), clear a killed run's temporaries,
    and hold the folder for this recipe for the ``with`` block (``output_claim``): a
    different recipe is refused, or, with ``overwrite``, cleared first."""
    try:
        out.prepare()
    except StorageError as error:
        raise DatasetError(str(error)) from None
    try:
        with claimed_folder(out, recipe.sha256, existing_recipe_hashes, overwrite, clear_dataset):
            yield
    except FolderTakenError as error:
        raise DatasetError(str(error)) from None


@dataclass(frozen=True)
class RenderJob:
    """What rendering runs of a recipe's shards into OUT needs, wherever a run happens."""

    recipe: Recipe
    out: str | os.PathLike  # a folder or a storage URL: the same place for every process
    batch_size: int
    workers: int | None = None  # encoding processes of a run; None: the distributor's choice
    overwrite: bool = False  # the claim replaces a dataset of another recipe in OUT

    def claim(self) -> None:
        """Claim OUT for the recipe before any run (with ``overwrite``, clear a dataset of
        another recipe first): a folder holding another recipe is refused at once, and no
        run ever clears anything. DatasetError (one line) if OUT cannot be used."""
        with prepared_output(self.recipe, open_output(self.out), self.overwrite):
            pass

    def render(self, shards: range | list[int], workers: int, progress: bool = False) -> RenderSummary:
        """Render the shards of ``shards`` that OUT lacks, in this process with ``workers``
        encoding processes (0: here), holding the folder's claim for the recipe."""
        store = open_output(self.out)
        with prepared_output(self.recipe, store, overwrite=False):
            started = time.perf_counter()
            done = set(complete_shards(store))
            summary = RenderSummary(out=store.as_given, skipped=[s for s in shards if s in done])
            todo = [s for s in shards if s not in done]
            if todo:
                _render_shards(self.recipe, store, todo, self.batch_size, workers, progress, summary)
            summary.seconds = time.perf_counter() - started
        return summary

    def finish(self, rendered: bool, seconds: float) -> RenderSummary:
        """Write manifest.json once every shard of the recipe is complete, if it is missing
        or ``rendered`` (shards were written since), recording ``seconds`` of rendering;
        the summary says whether it was written and whether the dataset is complete. Run
        where the shards were rendered: the manifest records that platform."""
        store = open_output(self.out)
        summary = RenderSummary(out=store.as_given)
        all_shards = len(complete_shards(store)) >= self.recipe.n_shards
        if all_shards and (rendered or not store.exists(MANIFEST_NAME)):
            _finish_manifest(self.recipe, store, seconds)
            summary.manifest_written = True
        summary.complete = all_shards and store.exists(MANIFEST_NAME)
        return summary


def _render_shards(recipe: Recipe, out: Store, todo: list[int], batch_size: int, workers: int, progress: bool, summary: RenderSummary) -> None:
    from doppelgen.render.kernel import render_batch

    indices = np.concatenate([np.arange(r.start, r.stop) for r in map(recipe.shard_pairs, todo)])
    batch_size = min(batch_size, len(indices))
    batches = (render_batch(recipe, indices[start : start + batch_size], batch_size) for start in range(0, len(indices), batch_size))
    with tqdm(total=len(indices), unit="pair", desc=f"render {recipe.synth.name}", disable=not progress, smoothing=0.1) as bar:

        def advance(batch) -> None:
            summary.pairs += len(batch.indices)
            bar.update(len(batch.indices))

        summary.rendered.extend(write_batches(recipe, out, todo, batches, workers, on_batch=advance))


def write_batches(recipe: Recipe, out: str | os.PathLike | Store, todo: list[int], batches: Iterable, workers: int,
                  on_batch: Callable | None = None) -> list[int]:
    """Fill shards ``todo`` (in order) from rendered batches and write each one as soon as it
    is full, in ``workers`` encoding processes (0: here) into ``out`` (a folder, URL or
    store). Batches may straddle shards. Returns the shards written."""
    out = open_store(out)
    from doppelgen.render.synths import param_layout

    layout = SlotLayout(rows=recipe.pairs_per_shard, samples=recipe.n_samples, param_shape=(recipe.n_layers, 3, len(param_layout(recipe))))
    options = ShardOptions(seed=recipe.seed, sample_rate=recipe.sample_rate, codec=recipe.codec, recipe_sha256=recipe.sha256)
    if workers > 0:
        # One slot filling here while every worker encodes one, as far as /dev/shm holds
        # them (a container's default is 64 MB; a slot is a whole shard), and no more
        # workers than shards to write.
        slots = min(workers + 1, len(todo) + 1, shared_memory_room() // max(1, layout.nbytes))
        if slots < 2:
            raise DatasetError(
                f"not enough shared memory for the encoding workers ({layout.nbytes / 2**20:.0f} MB a shard): "
                "use fewer --pairs-per-shard, --workers 0, or a larger /dev/shm"
            )
        writer = EncoderPool(slots, layout, out.location, options)
    else:
        writer = InlineWriter(layout, out, options)
    queue, written = list(todo), []
    current = arrays = None  # [shard, slot, arrays, rows filled]
    try:
        for batch in batches:
            row = 0
            while row < len(batch.indices):
                if current is None:
                    current = [queue.pop(0), *writer.acquire(), 0]
                shard, slot, arrays, filled = current
                size = len(recipe.shard_pairs(shard))
                take = min(size - filled, len(batch.indices) - row)
                source, target = slice(row, row + take), slice(filled, filled + take)
                for name in ("indices", "a", "b", "params", "redraws"):
                    getattr(arrays, name)[target] = getattr(batch, name)[source]
                current[3] = filled + take
                row += take
                if current[3] == size:
                    writer.submit(slot, shard, size)
                    written.append(shard)
                    current = None
            if on_batch is not None:
                on_batch(batch)
        writer.drain()
    finally:
        current = arrays = None  # views into a shared-memory slot keep it from closing
        writer.close()
        out.remove_dead_temporaries()
    return written


def _finish_manifest(recipe: Recipe, out: Store, seconds: float) -> None:
    from doppelgen.render.platform_identity import render_platform
    from doppelgen.render.synths import param_layout

    names = [info.to_dict() for info in param_layout(recipe)]
    write_manifest(out, build_manifest(recipe, out, names, render_platform(), seconds))
