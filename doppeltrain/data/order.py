"""What each rank and loader worker reads in an epoch, and in what order: a function of (seed, epoch, rank, worker) alone."""

from __future__ import annotations

import math
import multiprocessing as mp
import random
from typing import Iterable, Iterator, Sequence

import numpy as np

from doppeltrain.data.datasets import DataError, ShardRef

# Mixed into the sample-shuffle seeds so they never coincide with the shard-order seeds.
_SHUFFLE_STREAM = 1


class SharedEpoch:
    """The epoch number, shared with DataLoader worker processes (open_clip's idea)."""

    def __init__(self, epoch: int = 0):
        self.shared_epoch = mp.Value("i", epoch)

    def set_value(self, epoch: int) -> None:
        self.shared_epoch.value = epoch

    def get_value(self) -> int:
        return self.shared_epoch.value


def shard_order(shards: Sequence[ShardRef], seed: int, epoch: int) -> list[ShardRef]:
    """The epoch's shard order: the same permutation on every rank, a new one each epoch."""
    permutation = np.random.default_rng([seed, epoch]).permutation(len(shards))
    return [shards[i] for i in permutation]


def rank_shards(ordered: Sequence[ShardRef], rank: int, world_size: int) -> list[ShardRef]:
    return list(ordered[rank::world_size])


def worker_shards(shards: Sequence[ShardRef], worker: int, n_workers: int) -> list[ShardRef]:
    return list(shards[worker::n_workers])


def epoch_shards(
    shards: Sequence[ShardRef], *, train: bool, seed: int, epoch: int, rank: int, world_size: int, worker: int, n_workers: int
) -> list[ShardRef]:
    """The shards one worker of one rank reads in an epoch, in order. Training: the epoch's
    shard order, split by rank, then by worker. Validation: every rank reads every shard,
    in a fixed order, split by worker."""
    if not train:
        return worker_shards(shards, worker, n_workers)
    return worker_shards(rank_shards(shard_order(shards, seed, epoch), rank, world_size), worker, n_workers)


def train_steps(
    n_pairs: int, batch_size: int, world_size: int, pairs_per_epoch: int | None, steps_per_epoch: int | None
) -> int:
    """Batches per epoch on every rank: ``steps_per_epoch`` when set, else the epoch's pairs
    (``pairs_per_epoch``; None: one pass over the ``n_pairs`` training pairs) // the global
    batch. One-line DataError when the pairs do not fill one global batch. Fewer pairs than
    a pass: each worker reads the start of its share of a fresh shard order; more: its
    shards again."""
    global_batch = batch_size * world_size
    if n_pairs < global_batch:
        raise DataError(f"{n_pairs} training pairs do not fill one global batch of {global_batch}")
    if steps_per_epoch is not None:
        return steps_per_epoch
    if pairs_per_epoch is None:
        return n_pairs // global_batch
    if pairs_per_epoch < global_batch:
        raise DataError(f"--pairs-per-epoch {pairs_per_epoch} does not fill one global batch of {global_batch}")
    return pairs_per_epoch // global_batch


def validation_batches(shards: Sequence[ShardRef], batch_size: int, n_workers: int) -> int:
    """Batches of a validation pass: every pair once, each worker ending in a partial batch."""
    parts = (worker_shards(shards, worker, n_workers) for worker in range(n_workers))
    return sum(math.ceil(sum(shard.n_pairs for shard in part) / batch_size) for part in parts)


def worker_batch_counts(n_batches: int, worker_pairs: Sequence[int]) -> list[int]:
    """Batches each worker makes, in proportion to the pairs its shards hold (largest
    remainders first, ties to the lower worker), so no worker repeats pairs while another
    leaves some unread. The DataLoader takes them round robin and, once a worker is done,
    from the others: the order is fixed, whatever the timing."""
    total = sum(worker_pairs)
    quotas = [n_batches * pairs / total for pairs in worker_pairs]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda worker: (counts[worker] - quotas[worker], worker))
    for worker in by_remainder[: n_batches - sum(counts)]:
        counts[worker] += 1
    return counts


def stream_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """The seed of one worker's sample shuffle in one epoch."""
    return int(np.random.SeedSequence([seed, epoch, rank, worker, _SHUFFLE_STREAM]).generate_state(1)[0])


def shuffled(samples: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    """Shuffle a stream through a buffer: each item out is a uniform pick from the buffer."""
    buffer: list = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        position = rng.randrange(len(buffer))
        yield buffer[position]
        buffer[position] = sample
    rng.shuffle(buffer)
    yield from buffer
