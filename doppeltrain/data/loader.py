"""The loader: each worker's pipeline (PairStream) and one rank's batches per epoch (PairLoader, make_loader)."""

from __future__ import annotations

import itertools
import logging
import random
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from doppeltrain.config import TrainConfig
from doppeltrain.data.batches import (
    BatchBuilder,
    BlockPool,
    PairBatch,
    cut_batches,
    keep_freed_heap,
    new_pool_flags,
    release_slots,
)
from doppeltrain.data.datasets import DataError, ShardRef
from doppeltrain.data.order import (
    SharedEpoch,
    epoch_shards,
    shuffled,
    stream_seed,
    train_steps,
    validation_batches,
    worker_batch_counts,
)
from doppeltrain.data.samples import SampleReader

logger = logging.getLogger(__name__)


class PairStream(IterableDataset):
    """The per-worker pipeline; yields whole batches (the DataLoader does not collate)."""

    def __init__(
        self,
        shards: Sequence[ShardRef],
        *,
        train: bool,
        batch_size: int,
        n_batches: int,
        n_workers: int,
        shuffle_buffer: int,
        sample_rate: int,
        seed: int,
        epoch_ref: SharedEpoch,
        rank: int,
        world_size: int,
    ):
        self.shards = list(shards)
        self.train = train
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.n_workers = n_workers
        self.shuffle_buffer = shuffle_buffer
        self.n_samples = self.shards[0].n_samples
        self.seed = seed
        self.epoch_ref = epoch_ref
        self.rank = rank
        self.world_size = world_size
        self.reader = SampleReader(sample_rate)  # its skip count is shared with the workers
        self.renew_pool_flags()

    def renew_pool_flags(self):
        """Fresh pool flags for the workers about to start, which inherit them."""
        self.pool_flags = new_pool_flags(self.n_workers)
        return self.pool_flags

    def shards_of(self, epoch: int, worker: int) -> list[ShardRef]:
        return epoch_shards(
            self.shards, train=self.train, seed=self.seed, epoch=epoch, rank=self.rank,
            world_size=self.world_size, worker=worker, n_workers=self.n_workers,
        )

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        pool = None
        if info is not None:
            keep_freed_heap()
            pool = BlockPool(self.pool_flags, worker)
        epoch = self.epoch_ref.get_value()
        builder = BatchBuilder(self.batch_size, self.n_samples, pool)
        if not self.train:
            keys = self.reader.decode(self.reader.samples(self.shards_of(epoch, worker)), builder)
            yield from cut_batches(keys, builder, None, partial=True)
            return
        worker_pairs = [sum(shard.n_pairs for shard in self.shards_of(epoch, w)) for w in range(self.n_workers)]
        count = worker_batch_counts(self.n_batches, worker_pairs)[worker]
        yield from cut_batches(self.train_pairs(epoch, worker, builder), builder, count, partial=False)

    def train_pairs(self, epoch: int, worker: int, builder: BatchBuilder) -> Iterator[str]:
        """Pairs of this worker's shards decoded into ``builder`` (their keys), pass after
        pass, each pass shuffled through the buffer on its own (a buffer spanning two passes
        could put a pair twice in a batch). The first pass reads the epoch's shard order,
        later ones reshuffle it. Only a pass that yields no pair at all stops the epoch."""
        rng = random.Random(stream_seed(self.seed, epoch, self.rank, worker))
        shards = self.shards_of(epoch, worker)
        buffer_size = min(self.shuffle_buffer, sum(shard.n_pairs for shard in shards))
        for n_pass in itertools.count():
            if n_pass > 0:
                shards = rng.sample(shards, len(shards))
            produced = 0
            for key in self.reader.decode(shuffled(self.reader.samples(shards), buffer_size, rng), builder):
                produced += 1
                yield key
            if produced == 0:  # another pass would not do better
                raise DataError(f"no readable pairs in {', '.join(shard.url for shard in shards)}")


class PairLoader:
    """Batches of pairs for one rank. Iterating yields :class:`PairBatch` ``(a, b, keys)``.

    Training: exactly ``len()`` full batches per epoch, the same on every rank.
    Validation: ``len()`` batches unless pairs were skipped as unreadable (then fewer).
    """

    def __init__(self, stream: PairStream, loader: DataLoader, n_batches: int):
        self.stream = stream
        self.loader = loader
        self.n_batches = n_batches

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers

    @property
    def skipped(self) -> int:
        """Corrupt members, samples or shards skipped so far, over all workers and epochs."""
        return self.stream.reader.skipped.value

    @property
    def n_pairs(self) -> int:
        """Pairs per epoch this rank's loader delivers (validation: all validation pairs)."""
        if self.stream.train:
            return self.n_batches * self.stream.batch_size
        return sum(shard.n_pairs for shard in self.stream.shards)

    def set_epoch(self, epoch: int) -> None:
        self.stream.epoch_ref.set_value(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[PairBatch]:
        flags = self.stream.renew_pool_flags()  # before the workers start: they inherit them
        batches = iter(self.loader)  # new worker processes, which read the epoch now
        failure = None
        try:
            yield from release_slots(itertools.islice(batches, self.n_batches), flags)
        except DataError as error:
            # From a worker process it comes with the worker's traceback in its message.
            failure = str(error).strip().splitlines()[-1].split("DataError: ", 1)[-1]
        finally:
            stop_workers(batches)
        if failure is not None:
            raise DataError(failure)


def stop_workers(batches: Iterator) -> None:
    """Stop a DataLoader iterator's worker processes now. Left to the garbage collector
    (a traceback holding the iterator is a reference cycle), their queues may be closed
    first, and stopping them then waits 5 s for each."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def loader_workers(wanted: int, shards_per_rank: int) -> int:
    return max(0, min(wanted, shards_per_rank))


def make_loader(
    shards: Sequence[ShardRef],
    cfg: TrainConfig,
    *,
    train: bool,
    epoch_ref: SharedEpoch,
    rank: int = 0,
    world_size: int = 1,
) -> PairLoader:
    """A loader over ``shards`` for one rank (see the package docstring).

    Training loaders shuffle shards by (seed, epoch), split them by rank and worker, shuffle
    samples and deliver exactly ``len()`` full batches: ``cfg.steps_per_epoch``, else
    ``cfg.pairs_per_epoch`` (None: one pass over ``shards``) // the global batch.
    Validation loaders (``train=False``) read every shard on every rank in a fixed order,
    each pair once, the last batch of each worker possibly short. Workers:
    ``cfg.data.workers``, fewer when a rank has fewer shards (logged).
    """
    if not shards:
        raise DataError("no shards to load")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside a world of {world_size}")
    lengths = {shard.n_samples for shard in shards}
    if len(lengths) > 1:
        raise DataError(f"shards differ in clip length ({', '.join(str(n) for n in sorted(lengths))} samples)")
    batch_size = cfg.data.batch_size
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    if train and len(shards) < world_size:
        raise DataError(f"{len(shards)} training shards cannot be split over {world_size} ranks")
    shards_per_rank = len(shards) // world_size if train else len(shards)
    n_workers = loader_workers(cfg.data.workers, shards_per_rank)
    if n_workers < cfg.data.workers:
        logger.warning(
            "%s: %d shard%s %s, so %d loader worker%s instead of %d",
            "training data" if train else "validation data",
            shards_per_rank,
            "" if shards_per_rank == 1 else "s",
            "per rank" if train else "in all",
            n_workers,
            "" if n_workers == 1 else "s",
            cfg.data.workers,
        )
    if train:
        total = sum(shard.n_pairs for shard in shards)
        n_batches = train_steps(total, batch_size, world_size, cfg.pairs_per_epoch, cfg.steps_per_epoch)
    else:
        n_batches = validation_batches(shards, batch_size, max(1, n_workers))
    stream = PairStream(
        shards,
        train=train,
        batch_size=batch_size,
        n_batches=n_batches,
        n_workers=max(1, n_workers),
        shuffle_buffer=max(1, cfg.data.shuffle_buffer),
        sample_rate=cfg.data.sample_rate,
        seed=cfg.seed,
        epoch_ref=epoch_ref,
        rank=rank,
        world_size=world_size,
    )
    loader = DataLoader(
        stream,
        batch_size=None,  # the stream batches in the workers
        num_workers=n_workers,
        # Workers live for one epoch: none are left for a garbage collector to stop slowly.
        persistent_workers=False,
        pin_memory=_pin_memory(cfg.device),
    )
    return PairLoader(stream, loader, n_batches)


def _pin_memory(device: str) -> bool:
    return torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
