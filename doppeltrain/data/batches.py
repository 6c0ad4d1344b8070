"""Batches in memory: the builder, the shared-memory block pool, and the platform tuning (malloc) behind them."""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import get_worker_info


class PairBatch(NamedTuple):
    """A batch: ``a`` and ``b`` are float32 (B, n_samples) CPU tensors, gain applied;
    ``keys`` the pairs' WebDataset keys (``{index:010d}``)."""

    a: torch.Tensor
    b: torch.Tensor
    keys: list[str]


class PooledBatch(NamedTuple):
    """What a worker with a :class:`BlockPool` sends: the batch and the pool slot it is in
    (-1: none); the main process passes the batch on and frees the slot later
    (:func:`release_slots`)."""

    batch: PairBatch
    slot: int


class BatchBuilder:
    """The batch being filled: pairs are decoded straight into its rows (no per-pair arrays
    or copies); in a worker process it lives in shared memory from the start."""

    def __init__(self, batch_size: int, n_samples: int, pool: BlockPool | None = None):
        self.batch_size = batch_size
        self.n_samples = n_samples
        self.pool = pool
        self.views: torch.Tensor | None = None  # (2, batch_size, n_samples): views a and b
        self.slot = -1  # the pool slot of views, -1 if none
        self.rows: np.ndarray | None = None
        self.keys: list[str] = []

    def free_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows (a, b) the next pair goes into; the same until :meth:`add` takes them."""
        if self.views is None:
            # Both views in one block: one shared-memory transfer per batch instead of two.
            shape = (2, self.batch_size, self.n_samples)
            self.slot, self.views = self.pool.acquire(shape) if self.pool is not None else (-1, batch_tensor(shape))
            self.rows = self.views.numpy()
        row = len(self.keys)
        return self.rows[0, row], self.rows[1, row]

    def add(self, key: str) -> bool:
        """The free rows now hold pair ``key``; True when the batch is full."""
        self.keys.append(key)
        return len(self.keys) == self.batch_size

    def take(self) -> PairBatch | PooledBatch:
        """The batch of the pairs added so far (fewer than batch_size: the first rows); a
        new one starts. With a pool: the batch and its slot, for the main process."""
        filled, views, keys, slot = len(self.keys), self.views, self.keys, self.slot
        self.views, self.rows, self.keys, self.slot = None, None, [], -1
        batch = PairBatch(views[0, :filled], views[1, :filled], keys)
        return batch if self.pool is None else PooledBatch(batch, slot)


def cut_batches(
    keys: Iterator[str], builder: BatchBuilder, count: int | None, partial: bool
) -> Iterator[PairBatch | PooledBatch]:
    """Batches of the pairs that ``keys`` decodes into ``builder``: ``count`` full ones
    (None: until the pairs run out, then the partial one if ``partial``)."""
    made = 0
    if count == 0:
        return
    for key in keys:
        if builder.add(key):
            yield builder.take()
            made += 1
            if count is not None and made == count:
                return
    if builder.keys and partial:
        yield builder.take()


# --- the shared-memory block pool ----------------------------------------------------

# Slot states in the shared flags; only a worker sets BUSY, only the main process FREE.
_FREE, _BUSY = 0, 1
SLOTS_PER_WORKER = 6  # the DataLoader's 2 prefetched batches per worker, the trainer's, spare
POOL_BYTES = 512 << 20  # at most this much kept per worker (fewer slots for huge batches)


def new_pool_flags(n_workers: int):
    """Flags for the block pools of a set of workers about to start (all free): which slots
    the main process has released. Each set of workers gets its own, so workers of an
    iteration still running never take a slot on another iteration's word."""
    return mp.RawArray("b", n_workers * SLOTS_PER_WORKER)


class BlockPool:
    """One worker's batch blocks in shared memory, reused once the main process has let go
    of them. A fresh shared-memory block costs the kernel a zeroed page per 4 KiB, a sixth
    of the decoding; a reused one costs nothing. ``flags`` (shared, one byte per slot)
    says which of this worker's slots the main process has released (see
    :func:`release_slots`); with none free and all slots taken, a batch gets a block of
    its own, as it would without a pool."""

    def __init__(self, flags, worker: int):
        self.flags, self.first, self.count = flags, worker * SLOTS_PER_WORKER, SLOTS_PER_WORKER
        self.blocks: list[torch.Tensor] = []

    def acquire(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        for index, block in enumerate(self.blocks):
            slot = self.first + index
            if self.flags[slot] == _FREE:
                self.flags[slot] = _BUSY
                return slot, block
        if len(self.blocks) < min(self.count, POOL_BYTES // (4 * math.prod(shape))):
            slot = self.first + len(self.blocks)
            self.blocks.append(batch_tensor(shape))
            self.flags[slot] = _BUSY
            return slot, self.blocks[-1]
        return -1, batch_tensor(shape)


def release_slots(items: Iterator[PairBatch | PooledBatch], flags) -> Iterator[PairBatch]:
    """The batches, in the main process; a pool slot is handed back to its worker once
    nothing in this process holds its batch any more (its storage has expired), never
    before."""
    held: list[tuple[int, StorageWeakRef]] = []
    for item in items:
        if isinstance(item, PooledBatch):
            batch, slot = item
            del item
            if slot >= 0:
                held.append((slot, StorageWeakRef(batch.a.untyped_storage())))
        else:
            batch = item
        still = []
        for slot, ref in held:
            if ref.expired():
                flags[slot] = _FREE
            else:
                still.append((slot, ref))
        held = still
        yield batch
        del batch


# --- platform tuning -----------------------------------------------------------------


def batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float32 tensor; in a worker process, in shared memory from the start (as
    DataLoader's default_collate makes it), so handing it to the main process copies
    nothing: that copy cost a tenth of the decoding."""
    if get_worker_info() is None:
        return torch.empty(shape)
    storage = torch.empty(0)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0).new(storage).view(shape)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_heap() -> None:
    """Let this (worker) process's malloc keep freed memory for reuse instead of handing it
    back to the kernel. The shuffle buffer holds its samples' bytes and empties at the end
    of every pass; memory given back then comes back as fresh pages, zeroed and faulted
    in one by one, which cost the pipeline a twentieth of the decoding. Only glibc has
    mallopt; elsewhere nothing changes."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    # Setting one threshold fixes the other, which glibc would otherwise raise as large
    # blocks are freed: keep blocks up to its ceiling (32 MiB) on the heap too.
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
