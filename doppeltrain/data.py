"""Streaming pair shards into batches (FORMAT.md readers, open_clip's pipeline shape).

Shard list -> shard order, a function of (seed, epoch), the same on every rank -> split
by rank -> split by DataLoader worker -> tar members (local tars by random access, URLs
through webdataset's gopen) grouped into samples by webdataset -> sample shuffle buffer
seeded from (seed, epoch, rank, worker) -> decode FLAC/WAV straight into the rows of the
batch and apply the gain there, in the workers; the batch lives in shared memory, in a
block the worker reuses once the main process has released it. A bad member, sample or
shard is logged, counted and skipped.

Training: every rank delivers the same number of batches per epoch, computed from the
manifests' sizes (``total pairs // (batch size * world size)``); each worker makes a share
in proportion to its pairs and starts another pass over its shards if it runs out, so
DDP never waits on a rank that has fewer pairs. Data order depends on nothing but (seed,
epoch, rank, worker, number of workers), so a run resumed at an epoch boundary reads
exactly what an uninterrupted one reads.

Validation (``train=False``): every rank reads every validation pair once, in a fixed
order; each worker's last batch may be short.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import logging
import math
import multiprocessing as mp
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from doppelgen.console import one_line
from doppelgen.format import (
    MANIFEST_NAME,
    FormatError,
    check_manifest,
    complete_shards,
    decode_pair,
    dump_json,
    n_samples,
    read_manifest,
    shard_index,
)

from .config import TrainConfig

logger = logging.getLogger(__name__)

# Mixed into the sample-shuffle seeds so they never coincide with the shard-order seeds.
_SHUFFLE_STREAM = 1


class DataError(ValueError):
    """The input data cannot be used; the message is one line."""


# --- datasets ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardRef:
    """One shard to read: where it is and what the manifest says it holds."""

    url: str  # a local path or a URL webdataset's gopen opens
    n_pairs: int
    n_samples: int  # samples per clip, from the manifest's duration and sample rate


@dataclass(frozen=True)
class DatasetInfo:
    """One pair dataset (a folder or URL in FORMAT.md) and its complete shards."""

    location: str
    manifest: dict
    shards: tuple[ShardRef, ...]
    sample_rate: int
    n_samples: int

    @property
    def n_pairs(self) -> int:
        return sum(shard.n_pairs for shard in self.shards)

    @property
    def recipe_digest(self) -> int:
        """A number fixed by the recipe alone: the same dataset gets the same validation
        split wherever it is stored."""
        digest = hashlib.sha256(dump_json(self.manifest["recipe"])).digest()
        return int.from_bytes(digest[:8], "little")


def is_url(location: str) -> bool:
    return "://" in location or location.startswith("pipe:")


def member_url(location: str, name: str) -> str:
    """The URL of file ``name`` of a URL dataset: ``pipe:`` commands name it with a
    ``{name}`` placeholder, other URLs are folders that ``name`` is appended to."""
    if location.startswith("pipe:"):
        if "{name}" not in location:
            raise DataError(
                f"{location}: a pipe: dataset needs a {{name}} placeholder for {MANIFEST_NAME} and the shard names"
            )
        return location.replace("{name}", name)
    return location.rstrip("/") + "/" + name


def read_url_manifest(location: str) -> dict:
    """Read and check ``manifest.json`` of a URL dataset through webdataset's gopen."""
    url = member_url(location, MANIFEST_NAME)
    try:
        with wds.gopen(url, "rb") as stream:
            manifest = json.loads(stream.read().decode("utf-8"))
    except Exception as error:  # gopen raises whatever its scheme's tool raises
        raise DataError(f"{location}: cannot read {MANIFEST_NAME} ({one_line(error)})") from None
    try:
        return check_manifest(manifest, location)
    except FormatError as error:
        raise DataError(str(error)) from None


def _record_shards(location: str, manifest: dict) -> list[dict]:
    record = manifest.get("record")
    shards = record.get("shards") if isinstance(record, dict) else None
    if not isinstance(shards, list):
        raise DataError(f"{location}: manifest has no record of its shards (rendering not finished?)")
    for entry in shards:
        if not (isinstance(entry, dict) and shard_index(str(entry.get("name", ""))) is not None):
            raise DataError(f"{location}: manifest record has a shard entry without a valid name")
        if not isinstance(entry.get("n_pairs"), int) or entry["n_pairs"] < 0:
            raise DataError(f"{location}: manifest record of {entry['name']} lacks n_pairs")
    return shards


def discover_dataset(location: str, sample_rate: int) -> DatasetInfo:
    """Read one dataset's manifest and list its complete shards with their sizes."""
    if is_url(location):
        manifest = read_url_manifest(location)
        # A URL cannot be listed: the manifest, written last, vouches for its shards.
        entries = _record_shards(location, manifest)
        urls = {entry["name"]: member_url(location, entry["name"]) for entry in entries}
    else:
        folder = Path(location)
        if not folder.is_dir():
            raise DataError(f"{location}: no such dataset folder")
        complete = set(complete_shards(folder))
        if not complete:
            raise DataError(f"{location}: no complete shards (pairs-NNNNNN.tar with its .stats.json)")
        try:
            manifest = read_manifest(folder)
        except FormatError as error:
            raise DataError(one_line(error)) from None
        entries = []
        for entry in _record_shards(location, manifest):
            if shard_index(entry["name"]) in complete:
                entries.append(entry)
            else:
                logger.warning("%s: %s is in the manifest but not complete on disk; skipped", location, entry["name"])
        urls = {entry["name"]: str(folder / entry["name"]) for entry in entries}
    recipe = manifest["recipe"]
    rate = recipe.get("sample_rate")
    if rate != sample_rate:
        raise DataError(f"{location}: sample rate {rate} Hz, but the model is built for {sample_rate} Hz")
    try:
        clip = n_samples(float(recipe["duration"]), int(rate))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{location}: manifest recipe lacks a valid duration") from None
    shards = tuple(
        ShardRef(url=urls[entry["name"]], n_pairs=entry["n_pairs"], n_samples=clip)
        for entry in sorted(entries, key=lambda entry: entry["name"])
        if entry["n_pairs"] > 0
    )
    if not shards:
        raise DataError(f"{location}: no shards with pairs")
    return DatasetInfo(location=location, manifest=manifest, shards=shards, sample_rate=rate, n_samples=clip)


def discover(datasets: Sequence[str], sample_rate: int) -> list[DatasetInfo]:
    """Every dataset's manifest and complete shards; one-line DataError on the first
    dataset that is missing, empty, of an unknown format version or of another rate."""
    if not datasets:
        raise DataError("no datasets given")
    infos = [discover_dataset(str(location), sample_rate) for location in datasets]
    lengths = {info.n_samples for info in infos}
    if len(lengths) > 1:
        # Batches stack clips, so a run reads one clip length.
        raise DataError(f"datasets differ in clip length ({', '.join(str(n) for n in sorted(lengths))} samples)")
    return infos


def n_val_shards(n_shards: int, val_shards: float) -> int:
    """How many of a dataset's shards to hold out: a fraction (< 1) or a count (>= 1), at
    least one when asked for any, and never all of them."""
    if val_shards <= 0:
        return 0
    wanted = max(1, round(val_shards * n_shards)) if val_shards < 1 else int(val_shards)
    return min(wanted, n_shards - 1)


def split_shards(
    infos: Sequence[DatasetInfo], val_shards: float, seed: int
) -> tuple[list[ShardRef], list[ShardRef]]:
    """Hold out validation shards per dataset; returns ``(train, val)``.

    The held-out shards are a function of ``seed`` and the dataset's recipe only, so moving
    a dataset or listing datasets in another order keeps its split. A dataset of a single
    shard keeps it for training and gets no validation shard (logged): training without
    data is worse than validating without it.
    """
    if val_shards < 0:
        raise DataError(f"--val-shards must be >= 0, got {val_shards}")
    train, val = [], []
    for info in infos:
        n = len(info.shards)
        held = n_val_shards(n, val_shards)
        if val_shards > 0 and held == 0:
            logger.warning("%s: only %d shard; none held out for validation", info.location, n)
        rng = np.random.default_rng([seed, info.recipe_digest])
        chosen = set(rng.permutation(n)[:held].tolist())
        for position, shard in enumerate(info.shards):
            (val if position in chosen else train).append(shard)
    return train, val


# --- order -----------------------------------------------------------------------------


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


# --- samples ---------------------------------------------------------------------------


class PairBatch(NamedTuple):
    """A batch: ``a`` and ``b`` are float32 (B, n_samples) CPU tensors, gain applied;
    ``keys`` the pairs' WebDataset keys (``{index:010d}``)."""

    a: torch.Tensor
    b: torch.Tensor
    keys: list[str]


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


class PooledBatch(NamedTuple):
    """What a worker with a :class:`BlockPool` sends: the batch and the pool slot it is in
    (-1: none); :class:`PairLoader` passes the batch on and frees the slot later."""

    batch: PairBatch
    slot: int


# Slot states in the shared flags; only a worker sets BUSY, only the main process FREE.
_FREE, _BUSY = 0, 1
SLOTS_PER_WORKER = 6  # the DataLoader's 2 prefetched batches per worker, the trainer's, spare
POOL_BYTES = 512 << 20  # at most this much kept per worker (fewer slots for huge batches)


class BlockPool:
    """One worker's batch blocks in shared memory, reused once the main process has let go
    of them. A fresh shared-memory block costs the kernel a zeroed page per 4 KiB, a sixth
    of the decoding; a reused one costs nothing. ``flags`` (shared, one byte per slot)
    says which of this worker's slots the main process has released (see
    :meth:`PairLoader._release_slots`); with none free and all slots taken, a batch gets a
    block of its own, as it would without a pool."""

    def __init__(self, flags, first: int, count: int):
        self.flags, self.first, self.count = flags, first, count
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
        self.sample_rate = sample_rate
        self.n_samples = self.shards[0].n_samples
        self.seed = seed
        self.epoch_ref = epoch_ref
        self.rank = rank
        self.world_size = world_size
        # Shared with the workers so the main process can report what they skipped.
        self.skipped = mp.Value("i", 0)
        self.slot_flags = self.new_slot_flags()

    def new_slot_flags(self):
        """Flags for the block pools of the workers about to start (all free): which slots
        the main process has released. Each set of workers gets its own, so workers of an
        iteration still running never take a slot on another iteration's word."""
        self.slot_flags = mp.RawArray("b", self.n_workers * SLOTS_PER_WORKER)
        return self.slot_flags

    # -- the shards this process reads

    def my_shards(self, epoch: int, worker: int) -> list[ShardRef]:
        if not self.train:
            # Validation: every rank reads every validation shard, in a fixed order.
            return worker_shards(self.shards, worker, self.n_workers)
        ordered = shard_order(self.shards, self.seed, epoch)
        return worker_shards(rank_shards(ordered, self.rank, self.world_size), worker, self.n_workers)

    def _handle(self, error: BaseException) -> bool:
        """webdataset's error handler: log, count, carry on with the next member or shard."""
        with self.skipped.get_lock():
            self.skipped.value += 1
        logger.warning("skipped unreadable data: %s", one_line(error))
        return True

    def raw_samples(self, shards: Sequence[ShardRef]) -> Iterator[dict]:
        """Samples (members grouped by key) of ``shards`` in order, bad data skipped."""
        return group_by_keys(self.tar_members(shards), handler=self._handle)

    def tar_members(self, shards: Sequence[ShardRef]) -> Iterator[dict]:
        for shard in shards:
            if is_url(shard.url):
                yield from tar_file_expander(url_opener([{"url": shard.url}], handler=self._handle), handler=self._handle)
            else:
                yield from self.local_tar_members(shard.url)

    def local_tar_members(self, path: str) -> Iterator[dict]:
        """webdataset's member records for a local tar, read by random access: tarfile's
        stream mode (webdataset's, for URLs) costs a fifth of the FLAC decoding."""
        try:
            with tarfile.open(path, mode="r:") as archive:
                for info in archive:
                    if info.isfile():
                        data = archive.extractfile(info).read()
                        if len(data) != info.size:
                            raise OSError(f"{info.name} is truncated")
                        yield {"fname": info.name, "data": data, "__url__": path}
        except (tarfile.TarError, EOFError, OSError) as error:
            self._handle(FormatError(f"{path}: unreadable tar ({one_line(error)})"))
        yield {}  # end of shard: samples never span two shards

    def decode(self, samples: Iterable[dict], batch: BatchBuilder) -> Iterator[str]:
        """Decode each sample into ``batch``'s free rows; yields the key of each pair decoded
        (the caller adds it to the batch). A bad sample is skipped: its rows stay free."""
        for sample in samples:
            key = sample.get("__key__", "?")
            try:
                members = {name: value for name, value in sample.items() if not name.startswith("__")}
                self.decode_pair_into(key, members, *batch.free_rows())
            except FormatError as error:
                self._handle(FormatError(f"{error} @ {sample.get('__url__')}"))
                continue
            yield key

    def decode_pair_into(self, key: str, members: dict[str, bytes], row_a: np.ndarray, row_b: np.ndarray) -> None:
        """``doppelgen.format.decode_pair`` into two given rows, checked against this stream's
        sample rate (the rows fix the clip length); FormatError if the sample is unusable."""
        pair = decode_pair(key, members, out=(row_a, row_b))
        if pair.sample_rate != self.sample_rate:
            raise FormatError(f"{key}: {pair.sample_rate} Hz, expected {self.sample_rate} Hz")

    # -- the stream

    def train_pairs(self, epoch: int, worker: int, rng: random.Random, batch: BatchBuilder) -> Iterator[str]:
        """Pairs of this worker's shards decoded into ``batch`` (their keys), pass after
        pass, each pass shuffled through the buffer on its own (a buffer spanning two passes
        could put a pair twice in a batch). The first pass reads the epoch's shard order,
        later ones reshuffle it."""
        shards = self.my_shards(epoch, worker)
        buffer_size = min(self.shuffle_buffer, sum(shard.n_pairs for shard in shards))
        for n_pass in itertools.count():
            if n_pass > 0:
                shards = rng.sample(shards, len(shards))
            produced = 0
            for key in self.decode(shuffled(self.raw_samples(shards), buffer_size, rng), batch):
                produced += 1
                yield key
            if produced == 0:  # another pass would not do better
                raise DataError(f"no readable pairs in {', '.join(shard.url for shard in shards)}")

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        pool = None
        if info is not None:
            keep_freed_heap()
            pool = BlockPool(self.slot_flags, worker * SLOTS_PER_WORKER, SLOTS_PER_WORKER)
        epoch = self.epoch_ref.get_value()
        batch = BatchBuilder(self.batch_size, self.n_samples, pool)
        if not self.train:
            keys = self.decode(self.raw_samples(self.my_shards(epoch, worker)), batch)
            yield from self._batches(keys, batch, None, partial=True)
            return
        rng = random.Random(stream_seed(self.seed, epoch, self.rank, worker))
        worker_pairs = [sum(s.n_pairs for s in self.my_shards(epoch, w)) for w in range(self.n_workers)]
        count = worker_batch_counts(self.n_batches, worker_pairs)[worker]
        yield from self._batches(self.train_pairs(epoch, worker, rng, batch), batch, count, partial=False)

    def _batches(self, keys: Iterator[str], batch: BatchBuilder, count: int | None, partial: bool) -> Iterator[PairBatch]:
        """Batches of the pairs ``keys`` decodes into ``batch``: ``count`` full ones (None:
        until the pairs run out, then the partial one if ``partial``)."""
        made = 0
        if count == 0:
            return
        for key in keys:
            if batch.add(key):
                yield batch.take()
                made += 1
                if count is not None and made == count:
                    return
        if batch.keys and partial:
            yield batch.take()


# --- loader ----------------------------------------------------------------------------


def batches_per_epoch(shards: Sequence[ShardRef], batch_size: int, world_size: int, train: bool, n_workers: int) -> int:
    """Training: the pairs of all shards // the global batch (every rank the same).
    Validation: every pair once, each worker ending in a partial batch."""
    if train:
        return sum(shard.n_pairs for shard in shards) // (batch_size * world_size)
    per_worker = (worker_shards(shards, worker, max(1, n_workers)) for worker in range(max(1, n_workers)))
    return sum(math.ceil(sum(shard.n_pairs for shard in part) / batch_size) for part in per_worker)


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
        return self.stream.skipped.value

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
        flags = self.stream.new_slot_flags()  # before the workers start: they inherit them
        batches = iter(self.loader)  # new worker processes, which read the epoch now
        failure = None
        try:
            yield from self._release_slots(itertools.islice(batches, self.n_batches), flags)
        except DataError as error:
            # From a worker process it comes with the worker's traceback in its message.
            failure = str(error).strip().splitlines()[-1].split("DataError: ", 1)[-1]
        finally:
            stop_workers(batches)
        if failure is not None:
            raise DataError(failure)


    @staticmethod
    def _release_slots(items: Iterator, flags) -> Iterator[PairBatch]:
        """The batches; a pool slot is handed back to its worker once nothing in this
        process holds its batch any more (its storage has expired), never before."""
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
    """A loader over ``shards`` for one rank (see the module docstring).

    Training loaders shuffle shards by (seed, epoch), split them by rank and worker, shuffle
    samples and deliver exactly ``len()`` full batches. Validation loaders (``train=False``)
    read every shard on every rank in a fixed order, each pair once, the last batch of each
    worker possibly short. Workers: ``cfg.data.workers``, fewer when a rank has fewer
    shards (logged).
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
    n_batches = batches_per_epoch(shards, batch_size, world_size, train, n_workers)
    if train:
        if n_batches == 0:
            total = sum(shard.n_pairs for shard in shards)
            raise DataError(f"{total} training pairs do not fill one global batch of {batch_size * world_size}")
        if cfg.steps_per_epoch is not None:
            n_batches = cfg.steps_per_epoch
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
