"""Pairs rendered on the fly from a recipe by doppelgen's kernel, instead of read from shards.

A recipe file (``manifests/voice.json``, or a dataset's ``manifest.json``) given to
``fit`` is a stream: each step renders its pairs (``stream_plan`` says which indices,
at which delta) with ``doppelgen.render.kernel.render_pairs``, the function a frozen
render of the recipe calls, so pair ``i`` of a stream is pair ``i`` of that render,
non-finite redraws included, before audio coding.

Where it renders (``--render-on``):

- ``cpu``: in DataLoader worker processes, started with ``spawn`` (JAX's threads do not
  survive ``fork``) and kept for the whole run (a worker takes seconds to import JAX and
  load the compiled kernel from the persistent cache); each renders whole steps, the
  DataLoader takes them round robin. With ``--workers 0`` it renders in this process.
- ``gpu``: in this process, on the training GPU, with JAX's preallocation off so that
  torch keeps its memory (``jax_runtime.prepare_jax_backends``).

In this process a thread renders the next batches while the current step trains (JAX
releases the GIL while it computes). The same workers, or the same thread, render the
validation pass.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import multiprocessing.connection
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from doppelgen.format import pair_key
from doppelgen.paper_recipes import load_recipe
from doppelgen.recipe import Recipe, RecipeError
from doppelgen.render.jax_runtime import backends_initialized, prepare_jax_backends, use_cpu_only
from doppeltrain.data.batches import PairBatch
from doppeltrain.data.datasets import DataError
from doppeltrain.data.stream_plan import DeltaRamp, IndexPlan, render_chunk
from doppeltrain.data.worker_processes import (
    WorkerError,
    ignore_interrupts,
    interrupts_ignored,
    raised_in_worker,
    worker_failure,
)

RENDER_PLACES = ("auto", "cpu", "gpu")
# Pairs per kernel call on the CPU: measured on voice, 64 renders as fast per CPU-second
# as 256 (about 320 pairs/CPU-s either way) and holds less memory; on a GPU a whole
# batch is one call.
CPU_RENDER_CHUNK = 64
TRAIN, VALIDATE = 0, 1
# Batches rendered ahead in this process (the GPU path, or --workers 0).
PREFETCH = 2


@dataclass(frozen=True)
class RecipeSource:
    """A recipe given as training data: where it came from and what it is."""

    location: str
    recipe: Recipe
    sha256: str  # of its canonical JSON: the recipe_sha256 a frozen render's shard stats hold

    @property
    def digest(self) -> str:
        """What a checkpoint records for it: the same recipe under another path is the same data."""
        return f"recipe:{self.sha256}"


def is_recipe_location(location: str) -> bool:
    """A local file, or a path ending in ``.json``, is a recipe; a folder or URL is a dataset."""
    if "://" in location or location.startswith("pipe:"):
        return False
    path = Path(location)
    return path.is_file() or (location.endswith(".json") and not path.is_dir())


def read_recipe_source(location: str, sample_rate: int) -> RecipeSource:
    """The recipe in a recipe file or a dataset's ``manifest.json``; one-line DataError if
    the file is missing or unreadable, or the recipe is invalid or of another rate."""
    try:
        recipe = load_recipe(location)
    except RecipeError as error:
        raise DataError(str(error)) from None
    if recipe.sample_rate != sample_rate:
        raise DataError(f"{location}: sample rate {recipe.sample_rate} Hz, but the model is built for {sample_rate} Hz")
    return RecipeSource(location, recipe, recipe.sha256)


@dataclass(frozen=True)
class Stream:
    """One recipe of a run: what it renders, and its index layout."""

    recipe: Recipe
    plan: IndexPlan


def render_rows(recipe: Recipe, indices: np.ndarray, delta: float, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Views a and b of pairs ``indices`` of ``recipe`` at ``delta``, in kernel calls of
    exactly ``chunk`` pairs (the last padded), so that every call reuses one compiled kernel."""
    # Imported here: JAX loads in the process that renders, never in one that forks.
    from doppelgen.render.kernel import RenderError, render_pairs

    n = len(indices)
    padded = np.concatenate([indices, np.full(-n % chunk, indices[-1], np.int64)])
    try:
        a, b, _ = render_pairs(dataclasses.replace(recipe, delta=delta), padded, batch_size=chunk)
    except RenderError as error:  # the recipe renders NaN or infinity, redraw after redraw
        raise DataError(f"{recipe.synth.name} at delta {delta}: {error}") from None
    return a[:n], b[:n]


class StreamedPairs(IterableDataset):
    """One rank's streamed batches; in each DataLoader worker (or in this process) it
    renders the steps, or the validation batches, that fall to it.

    ``state`` (shared with the workers) says what the next pass is: ``[TRAIN, epoch]`` or
    ``[VALIDATE, 0]``; the main process sets it before each pass starts.
    """

    def __init__(
        self,
        streams: Sequence[Stream],
        *,
        rank: int,
        steps_per_epoch: int,
        total_steps: int,
        ramp: DeltaRamp,
        val_batch_size: int,
        chunk: int,
        state,
    ):
        self.streams = list(streams)
        self.rank = rank
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.ramp = ramp
        self.val_batch_size = val_batch_size
        self.chunk = chunk
        self.state = state

    def delta_at(self, stream: Stream, step: int) -> float:
        return self.ramp.at(step, self.total_steps, stream.recipe.delta)

    def train_batch(self, step: int) -> PairBatch:
        """The rank's batch of step ``step`` (counted from the run's start): each recipe's
        share of rows, in the order the recipes were given."""
        parts = [(stream.recipe, stream.plan.train_indices(step, self.rank), self.delta_at(stream, step)) for stream in self.streams]
        return self._render(parts)

    def validation_parts(self) -> list[tuple[int, np.ndarray]]:
        """``(stream, indices)`` of each validation batch, every recipe's held-out pairs in
        order; a recipe's last batch may be short."""
        parts = []
        for number, stream in enumerate(self.streams):
            indices = stream.plan.validation_indices()
            parts += [(number, indices[start : start + self.val_batch_size]) for start in range(0, len(indices), self.val_batch_size)]
        return parts

    def validation_batch(self, number: int, indices: np.ndarray) -> PairBatch:
        recipe = self.streams[number].recipe
        return self._render([(recipe, indices, recipe.delta)])

    def _render(self, parts: list[tuple[Recipe, np.ndarray, float]]) -> PairBatch:
        rows = sum(len(indices) for _, indices, _ in parts)
        views = torch.empty((2, rows, parts[0][0].n_samples))
        keys, row = [], 0
        for recipe, indices, delta in parts:
            a, b = render_rows(recipe, indices, delta, self.chunk)
            views[0, row : row + len(indices)] = torch.from_numpy(a)
            views[1, row : row + len(indices)] = torch.from_numpy(b)
            keys += [pair_key(int(index)) for index in indices]
            row += len(indices)
        return PairBatch(views[0], views[1], keys)

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mode, epoch = int(self.state[0]), int(self.state[1])
        if mode == TRAIN:
            first = epoch * self.steps_per_epoch
            for step in range(worker, self.steps_per_epoch, n_workers):
                yield self.train_batch(first + step)
        else:
            for number, (stream, indices) in enumerate(self.validation_parts()):
                if number % n_workers == worker:
                    yield self.validation_batch(stream, indices)


def init_render_worker(worker_id: int) -> None:
    """A rendering worker's start: Ctrl-C is the main process's; JAX on the CPU (never
    the training GPU); torch on one thread (it only copies here)."""
    ignore_interrupts()
    use_cpu_only()
    torch.set_num_threads(1)


def jax_sees_gpu(device: torch.device) -> bool:
    """Whether JAX in this process renders on a GPU. Initialises JAX's backend, with
    preallocation off first, so that it shares the device with torch (and its CPU backend
    kept: the kernel draws parameters there), and with only the training GPU visible to
    it (a rank of a multi-GPU run renders on its own GPU, where JAX's first device would
    be every rank's GPU 0)."""
    prepare_jax_backends()
    import jax

    if device.type == "cuda" and device.index is not None and not backends_initialized():
        jax.config.update("jax_cuda_visible_devices", str(device.index))
    return jax.default_backend() == "gpu"


def render_place(choice: str, device: torch.device) -> str:
    """Where streamed pairs render: ``cpu`` or ``gpu`` (see the module docstring).
    ``auto``: gpu when training on CUDA and JAX sees a GPU."""
    if choice not in RENDER_PLACES:
        raise DataError(f"unknown --render-on {choice!r}: expected one of {', '.join(RENDER_PLACES)}")
    if choice == "cpu" or (choice == "auto" and device.type != "cuda"):
        return "cpu"
    if jax_sees_gpu(device):
        return "gpu"
    if choice == "gpu":
        raise DataError("--render-on gpu: JAX sees no GPU here (install jax[cuda], or use --render-on cpu)")
    return "cpu"


class StreamedLoader:
    """One rank's streamed pairs: each epoch's training batches and the validation pass,
    from one set of rendering workers (or one thread of this process) kept for the run."""

    def __init__(self, pairs: StreamedPairs, n_workers: int, pin_memory: bool):
        self.pairs = pairs
        self.n_workers = n_workers
        self.loader = None
        self._batches = None  # the DataLoader's iterator, whose workers persist
        if n_workers > 0:
            self.loader = DataLoader(
                pairs,
                batch_size=None,  # each item is a batch
                num_workers=n_workers,
                multiprocessing_context="spawn",
                persistent_workers=True,
                worker_init_fn=init_render_worker,
                pin_memory=pin_memory,
            )

    def batches(self, mode: int, epoch: int, count: int) -> Iterator[PairBatch]:
        """``count`` batches of a pass: ``TRAIN`` batches of ``epoch``, or ``VALIDATE``."""
        self.pairs.state[0], self.pairs.state[1] = mode, epoch
        if self.loader is None:
            source = prefetched(iter(self.pairs), PREFETCH)
        else:
            # The first pass starts the workers: they inherit SIGINT ignored. Later
            # passes reuse them (the workers read the state above when they restart).
            with interrupts_ignored():
                self._batches = iter(self.loader)
            source = self._batches
        try:
            for _ in range(count):
                yield next(source)
        except StopIteration:
            raise WorkerError(f"the rendering workers ended a pass early (expected {count} batches)") from None
        except Exception as error:
            # A batch whose worker died as it was sent fails to arrive (its shared memory
            # is fetched from that worker): whatever the error, a dead worker is the cause.
            failure = worker_failure(error) or self.dead_worker()
            if failure is None:
                raise
            if isinstance(error, DataError):  # raised by a worker: the data's fault, as here
                raise DataError(raised_in_worker(error)[1]) from None
            raise failure from None
        finally:
            if self.loader is None:
                source.close()

    def dead_worker(self, wait: float = 2.0) -> WorkerError | None:
        """The error naming a rendering worker that ended, waiting up to ``wait`` seconds
        for one to (a worker killed while sending is still exiting when its batch fails)."""
        workers = getattr(self._batches, "_workers", [])
        ended = mp.connection.wait([process.sentinel for process in workers], timeout=wait) if workers else []
        for process in workers:
            if process.sentinel in ended:
                code = process.exitcode  # None when the DataLoader's own handler reaped it first
                how = "" if code is None else f", killed by signal {-code}" if code < 0 else f", exit code {code}"
                return WorkerError(f"a loader worker died (pid {process.pid}{how})")
        return None

    def close(self) -> None:
        """Stop the rendering workers now (left to the garbage collector, each waits 5 s)."""
        shutdown = getattr(self._batches, "_shutdown_workers", None)
        self._batches = None
        if shutdown is None:
            return
        try:
            shutdown()
        except RuntimeError as error:
            # The DataLoader's SIGCHLD handler names a worker that died, again, whenever
            # another one exits: the run's error already said so.
            if worker_failure(error) is None:
                raise


def prefetched(batches: Iterator, depth: int) -> Iterator:
    """``batches``, produced by a thread up to ``depth`` ahead of the consumer; an error
    in the thread is raised here. Closing the generator stops the thread at its next batch."""
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
            put((end, None))
        except BaseException as error:
            put((None, error))

    thread = threading.Thread(target=produce, name="render-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = ready.get()
            if error is not None:
                raise error
            if batch is end:
                return
            yield batch
    finally:
        stop.set()


def shared_state():
    """``[mode, epoch]`` in shared memory that spawned workers can be handed."""
    return mp.get_context("spawn").RawArray("q", 2)


def chunk_for(place: str, shares: Sequence[int]) -> int:
    """Pairs per kernel call: at most CPU_RENDER_CHUNK on the CPU, a whole share on a GPU."""
    return render_chunk(list(shares), CPU_RENDER_CHUNK if place == "cpu" else None)


def validation_batch_count(streams: Sequence[Stream], batch_size: int) -> int:
    return sum(math.ceil(len(stream.plan.held) * stream.plan.pairs_per_shard / batch_size) for stream in streams)
