"""Does the training input pipeline keep up with reading and decoding alone?

``measure_pipeline(dataset_dir)``: pairs/s out of ``doppeltrain.data.make_loader`` (shard
shuffle, rank/worker split, sample shuffle buffer, FLAC decode with gain, batching,
transfer from the worker processes), timed from the first batch on so that starting the
workers does not count. The measured epoch is made long enough to outlast the clock
(workers go over their shards again): each epoch start refills the shuffle buffers, which
on a small benchmark dataset would weigh far more than on a real one (``long_epoch=False``
measures it anyway).

``measure_raw(dataset_dir)``: pairs/s of the work the pipeline cannot avoid, done the way
the pipeline does it: tar reading and FLAC decoding with ``doppelgen.format`` straight into
preallocated batch rows, in the same number of plain processes.

Target: pipeline / raw >= 0.8 on the same cores, by wall time and by CPU time.
``compare(dataset_dir)`` gives both, each the best of several rounds.

    .venv/bin/python benchmarks/train_pipeline.py [DATASET_DIR] [--workers 2 --batch-size 64 --seconds 10 --rounds 2]

Without DATASET_DIR it renders a small voice dataset with doppelgen first.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.cpu_clock import cpu_seconds
from doppelgen.format import decode_pair, group_members, iter_tar_members, json_text, split_member_name
from doppeltrain.config import TrainConfig
from doppeltrain.data import SharedEpoch, discover, make_loader, split_shards

TARGET_RATIO = 0.8
LIMIT = (
    "raw: the same shards read with tarfile and each pair decoded into preallocated batch rows (gain applied) "
    "by as many plain processes as the pipeline has workers, nothing else; ratio = pipeline/raw pairs per wall "
    "second, cpu_ratio = pipeline/raw pairs per CPU second (workers and main process), each the best of `rounds`"
)


def _shards(dataset_dir: str | Path, sample_rate: int = 16000):
    return split_shards(discover([str(dataset_dir)], sample_rate), 0, seed=0)[0]


def measure_pipeline(
    dataset_dir: str | Path,
    workers: int = 2,
    batch_size: int = 64,
    seconds: float = 10.0,
    shuffle_buffer: int = 1000,
    long_epoch: bool = True,
    per_cpu_second: bool = False,
) -> float:
    """Pairs per second delivered by one rank's training loader over ``seconds`` of wall
    time (from its first batch on), or per second of CPU time of the loader's processes,
    main and workers, start-up included, which other work on the same cores does not
    change."""
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.data.workers, cfg.data.shuffle_buffer = batch_size, workers, shuffle_buffer
    cfg.pairs_per_epoch = None  # an epoch is one pass, as long_epoch=False means
    if long_epoch:
        cfg.steps_per_epoch = 10**9
    loader = make_loader(_shards(dataset_dir), cfg, train=True, epoch_ref=SharedEpoch(0))
    cpu_start = cpu_seconds()
    pairs, start, epoch = 0, None, 0
    while start is None or time.perf_counter() - start < seconds:
        loader.set_epoch(epoch)
        batches = iter(loader)
        for batch in batches:
            if start is None:  # the wall clock starts once the workers are up
                start, first = time.perf_counter(), batch.a.shape[0]
                continue
            pairs += batch.a.shape[0]
            if time.perf_counter() - start >= seconds:
                break
        batches.close()  # stops and reaps the workers, so their CPU time is counted
        epoch += 1
    if per_cpu_second:
        return (pairs + first) / (cpu_seconds() - cpu_start)
    return pairs / (time.perf_counter() - start)


def _decode_for(shards: list, batch_size: int, seconds: float, start_at: float, results) -> None:
    """Read ``shards`` over and over and decode every pair into the rows of one
    preallocated batch, as the pipeline's workers do, for ``seconds``."""
    rows = np.empty((2, batch_size, shards[0].n_samples), np.float32)
    while time.time() < start_at:
        time.sleep(0.001)
    pairs, begin, cpu_begin = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - begin < seconds:
        for shard in shards:
            for key, group in group_members(iter_tar_members(shard.url)):
                members = {split_member_name(name)[1]: data for name, data in group}
                decode_pair(key, members, out=(rows[0, pairs % batch_size], rows[1, pairs % batch_size]))
                pairs += 1
            if time.perf_counter() - begin >= seconds:
                break
    results.put((pairs, time.perf_counter() - begin, time.process_time() - cpu_begin))


def measure_raw(
    dataset_dir: str | Path, processes: int = 2, seconds: float = 10.0, per_cpu_second: bool = False, batch_size: int = 64
) -> float:
    """Pairs per second of the work the pipeline cannot avoid: reading the tars and
    decoding each pair into preallocated batch rows (gain applied), summed over
    ``processes`` processes that each read their share of the shards over and over; or
    per second of their CPU time. No shuffle, no checks, no shared memory, no transfer."""
    shards = _shards(dataset_dir)
    context = mp.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 0.5
    workers = [
        context.Process(target=_decode_for, args=(shards[i::processes] or shards, batch_size, seconds, start_at, results))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    counts = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    if per_cpu_second:
        return sum(pairs for pairs, _, _ in counts) / sum(cpu for _, _, cpu in counts)
    return sum(pairs / wall for pairs, wall, _ in counts)


def compare(dataset_dir: str | Path, workers: int = 2, batch_size: int = 64, seconds: float = 10.0, rounds: int = 2) -> dict:
    """Both rates and their ratio, by wall time (the best of ``rounds`` alternating rounds:
    the cores may be shared with other work) and by CPU time (which sharing leaves alone)."""
    wall, cpu = {"raw": 0.0, "pipeline": 0.0}, {"raw": 0.0, "pipeline": 0.0}
    for _ in range(rounds):
        for per_cpu_second, rates in ((False, wall), (True, cpu)):
            raw = measure_raw(
                dataset_dir, processes=workers, seconds=seconds, per_cpu_second=per_cpu_second, batch_size=batch_size
            )
            pipeline = measure_pipeline(
                dataset_dir, workers=workers, batch_size=batch_size, seconds=seconds, per_cpu_second=per_cpu_second
            )
            rates["raw"], rates["pipeline"] = max(rates["raw"], raw), max(rates["pipeline"], pipeline)
    return {
        "raw_pairs_per_s": round(wall["raw"], 1),
        "pipeline_pairs_per_s": round(wall["pipeline"], 1),
        "ratio": round(wall["pipeline"] / wall["raw"], 3),
        "raw_pairs_per_cpu_s": round(cpu["raw"], 1),
        "pipeline_pairs_per_cpu_s": round(cpu["pipeline"], 1),
        "cpu_ratio": round(cpu["pipeline"] / cpu["raw"], 3),
        "target_ratio": TARGET_RATIO,
        "limit": LIMIT,
        "rounds": rounds,
        "seconds": seconds,
        "workers": workers,
        "batch_size": batch_size,
    }


def render_benchmark_dataset(out: str | Path, n_shards: int = 8, pairs_per_shard: int = 128) -> Path:
    """A small voice dataset (about 90 MB at the defaults) to measure on when none is given.

    Rendered by ``doppelgen`` in another process: rendering here would load JAX's threads
    into this process before the loader forks its workers."""
    command = [sys.executable, "-m", "doppelgen", "render", str(out), "--synth", "voice", "--shards", str(n_shards),
               "--pairs-per-shard", str(pairs_per_shard), "--quiet"]
    subprocess.run(command, check=True)
    return Path(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", nargs="?", help="a pair dataset; rendered into a temporary folder when omitted")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="doppeltrain-pipeline-") as scratch:
        dataset = args.dataset_dir or render_benchmark_dataset(Path(scratch) / "voice")
        result = compare(dataset, args.workers, args.batch_size, args.seconds, args.rounds)
    print(json_text(result))
    return result


if __name__ == "__main__":
    main()
