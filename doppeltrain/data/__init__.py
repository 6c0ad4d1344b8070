"""Streaming pair shards into batches (docs/FORMAT.md readers, open_clip's pipeline shape).

The modules, in the order data flows through them:

- ``datasets``: manifests -> complete shards (names checked, sizes bounded by the files)
  -> the validation split, per dataset;
- ``order``: the epoch's shard order, a function of (seed, epoch), the same on every rank
  -> split by rank -> split by DataLoader worker; the epoch's length; the sample shuffle
  buffer seeded from (seed, epoch, rank, worker);
- ``samples``: tar members (local tars by random access, URLs through webdataset's gopen)
  grouped into samples, each decoded straight into the rows of the batch with its gain
  applied and checked; a bad member, sample or shard is logged, counted and skipped;
- ``batches``: the batch being filled, in shared memory in a block the worker reuses once
  the main process has released it, and the platform tuning (malloc) behind it;
- ``loader``: each worker's pipeline (``PairStream``) and one rank's ``PairLoader``.

Streamed recipes (pairs rendered on the fly instead of read from shards):

- ``stream_plan``: which pair indices and which delta each step renders (pure functions);
- ``streamed``: the rendering, in spawned loader workers or in this process;
- ``worker_processes``: workers deaf to Ctrl-C, and a dead worker as one line;
- ``sources``: which of a run's inputs are datasets and which recipes, and the loaders
  that mix them (``find_sources``, ``make_run_loaders``).

Training: every rank delivers the same number of batches per epoch (``pairs_per_epoch //
(batch size * world size)``, or ``steps_per_epoch``); each worker makes a share in
proportion to its pairs, reading the start of its shards when the epoch is shorter than a
pass and starting another pass when it is longer, so DDP never waits on a rank that has
fewer pairs. Data order depends on nothing but (seed, epoch, rank, worker, number of
workers), so a run resumed at an epoch boundary reads exactly what an uninterrupted one
reads.

Validation (``train=False``): every rank reads every validation pair once, in a fixed
order; each worker's last batch may be short.

The names below are the package's public interface (``from doppeltrain import data``).
"""

from doppeltrain.data.batches import SLOTS_PER_WORKER, BatchBuilder, BlockPool, PairBatch
from doppeltrain.data.datasets import (
    DataError,
    DatasetInfo,
    ShardRef,
    discover,
    discover_dataset,
    is_shard_name,
    manifest_digests,
    split_shards,
)
from doppeltrain.data.loader import PairLoader, PairStream, make_loader
from doppeltrain.data.order import (
    SharedEpoch,
    rank_shards,
    shard_order,
    train_steps,
    worker_batch_counts,
    worker_shards,
)
from doppeltrain.data.samples import SampleReader
from doppeltrain.data.sources import RunLoaders, RunSources, find_sources, make_run_loaders
from doppeltrain.data.stream_plan import DeltaRamp, IndexPlan
from doppeltrain.data.worker_processes import WorkerError, worker_failure

__all__ = [
    "SLOTS_PER_WORKER",
    "BatchBuilder",
    "BlockPool",
    "DataError",
    "DatasetInfo",
    "DeltaRamp",
    "IndexPlan",
    "PairBatch",
    "PairLoader",
    "PairStream",
    "RunLoaders",
    "RunSources",
    "SampleReader",
    "ShardRef",
    "SharedEpoch",
    "WorkerError",
    "discover",
    "discover_dataset",
    "find_sources",
    "is_shard_name",
    "manifest_digests",
    "make_loader",
    "make_run_loaders",
    "rank_shards",
    "shard_order",
    "split_shards",
    "train_steps",
    "worker_failure",
    "worker_batch_counts",
    "worker_shards",
]
