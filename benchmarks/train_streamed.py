"""Streamed training: does the loader keep up with the kernel, and does fit wait for it?

Measured side by side in one run, each the best of ``--rounds`` alternating rounds (the
cores may be shared with other work):

- ``loader``: pairs/s out of the training loader of a streamed recipe
  (``doppeltrain.data.make_run_loaders``: spawned rendering workers, index plan, batch
  assembly, transfer to the main process), timed from its first batch on so that
  starting the workers (importing JAX, loading the compiled kernel) does not count;
- ``kernel``: pairs/s of ``render_pairs`` alone, in the same number of plain spawned
  processes with the same pairs per kernel call: the work the loader cannot avoid.

Target: loader / kernel >= 0.8, by wall time and by CPU time (CPU-seconds over the
measured span: the loader's main process and workers, read from /proc; the kernel's
processes). Starting a process (importing JAX, loading the compiled kernel) is reported
apart, as ``worker_start_cpu_s``: a run pays it once per worker.

Then ``fit``'s data-wait fraction for the small model trained on the streamed recipe
(``train_fit.measure_fit``, width 16), with the waveform augmentations (as the frozen
benchmark measures it) and without them (the fastest step, where rendering shows most):
on a CPU the renderer and the network share the cores, so this says how much of a step
is rendering that the workers could not hide.

    python -m benchmarks.train_streamed [--workers 2 --batch-size 64 --seconds 20 --rounds 2]

The last line is one JSON object with every figure, the machine's load average before
and after, and the render rate per CPU-second (pairs a core renders in a second).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import train_fit
from benchmarks.cpu_clock import cpu_seconds
from doppelgen.format import json_text
from doppelgen.paper_recipes import recipe_text
from doppelgen.recipe import make_recipe
from doppeltrain.config import TrainConfig
from doppeltrain.data import SharedEpoch, find_sources, make_run_loaders
from doppeltrain.data.streamed import CPU_RENDER_CHUNK

TARGET_RATIO = 0.8
LIMIT = (
    "kernel: render_pairs alone on disjoint pair indices in as many spawned processes as the loader has workers, "
    "the same pairs per kernel call; ratio = loader/kernel pairs per wall second, cpu_ratio = loader/kernel pairs "
    "per CPU second (the loader's main process and workers; the kernel's processes), each the best of `rounds`"
)


def write_recipe(folder: Path, synth: str = "voice") -> Path:
    """The paper's recipe of ``synth`` as a recipe file (its delta, its 512 x 1,000 pairs)."""
    path = folder / f"{synth}.json"
    path.write_text(recipe_text(make_recipe(synth, n_shards=512, pairs_per_shard=1000)))
    return path


def process_cpu_seconds(pid: int) -> float:
    """CPU-seconds (user + system) process ``pid`` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_loader(recipe_path: Path, workers: int, batch_size: int, seconds: float) -> tuple[float, float]:
    """Pairs per wall second of a streamed training loader from its first batch on, and
    pairs per CPU-second of its main process and workers over the same span."""
    cfg = TrainConfig()
    cfg.data.datasets = [str(recipe_path)]
    cfg.data.batch_size, cfg.data.workers, cfg.data.val_shards = batch_size, workers, 0
    cfg.data.render_on, cfg.device = "cpu", "cpu"
    cfg.epochs, cfg.steps_per_epoch = 1, 10**6
    loaders = make_run_loaders(find_sources(cfg.data.datasets, cfg.data.sample_rate), cfg, epoch_ref=SharedEpoch(0),
                               rank=0, world_size=1, device=torch.device("cpu"), validate=False)
    pairs, start = 0, None
    try:
        batches = iter(loaders.train)
        for batch in batches:
            if start is None:  # the clocks start once the workers are up
                pids = [process.pid for process in loaders.streamed._batches._workers]
                start, cpu_start = time.perf_counter(), time.process_time() + sum(map(process_cpu_seconds, pids))
                continue
            pairs += batch.a.shape[0]
            if time.perf_counter() - start >= seconds:
                break
        wall = time.perf_counter() - start
        cpu = time.process_time() + sum(map(process_cpu_seconds, pids)) - cpu_start
        batches.close()
    finally:
        loaders.close()
    return pairs / wall, pairs / cpu


def _render_for(first_index: int, chunk: int, seconds: float, ready, results) -> None:
    """Render consecutive pairs from ``first_index`` in calls of ``chunk`` for ``seconds``,
    once the kernel is loaded and every process is (``ready``, a barrier)."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    from doppelgen.render.kernel import render_pairs

    recipe = make_recipe("voice", n_shards=512, pairs_per_shard=1000)
    render_pairs(recipe, np.arange(first_index, first_index + chunk), batch_size=chunk)  # load the kernel
    cpu_at_load = time.process_time()
    ready.wait()
    pairs, begin, cpu_begin = 0, time.perf_counter(), time.process_time()
    index = first_index + chunk
    while time.perf_counter() - begin < seconds:
        render_pairs(recipe, np.arange(index, index + chunk), batch_size=chunk)
        pairs, index = pairs + chunk, index + chunk
    results.put((pairs, time.perf_counter() - begin, time.process_time() - cpu_begin, cpu_at_load))


def measure_kernel(processes: int, chunk: int, seconds: float) -> tuple[float, float, float]:
    """Pairs per wall second summed over ``processes`` spawned processes rendering apart,
    pairs per CPU-second of their rendering, and the CPU-seconds one took to start
    (import JAX, load the compiled kernel)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    # Starting a process takes seconds (JAX, the kernel); all render from the same moment.
    ready = context.Barrier(processes)
    workers = [context.Process(target=_render_for, args=(10**6 * (p + 1), chunk, seconds, ready, results)) for p in range(processes)]
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    rate = sum(pairs / wall for pairs, wall, _, _ in counts)
    cpu_rate = sum(pairs for pairs, *_ in counts) / sum(cpu for _, _, cpu, _ in counts)
    return rate, cpu_rate, max(start for *_, start in counts)


def compare(recipe_path: Path, workers: int, batch_size: int, seconds: float, rounds: int) -> dict:
    chunk = min(batch_size, CPU_RENDER_CHUNK)
    best = {"loader": 0.0, "loader_cpu": 0.0, "kernel": 0.0, "kernel_cpu": 0.0}
    startup = 0.0
    for round_ in range(rounds):
        kernel, kernel_cpu, startup = measure_kernel(workers, chunk, seconds)
        loader, loader_cpu = measure_loader(recipe_path, workers, batch_size, seconds)
        for key, value in (("loader", loader), ("loader_cpu", loader_cpu), ("kernel", kernel), ("kernel_cpu", kernel_cpu)):
            best[key] = max(best[key], value)
        print(f"round {round_ + 1}/{rounds}: loader {loader:.1f} pairs/s ({loader_cpu:.1f}/CPU-s), "
              f"kernel {kernel:.1f} pairs/s ({kernel_cpu:.1f}/CPU-s)", flush=True)
    return {
        "loader_pairs_per_s": round(best["loader"], 1),
        "kernel_pairs_per_s": round(best["kernel"], 1),
        "ratio": round(best["loader"] / best["kernel"], 3),
        "loader_pairs_per_cpu_s": round(best["loader_cpu"], 1),
        "kernel_pairs_per_cpu_s": round(best["kernel_cpu"], 1),
        "cpu_ratio": round(best["loader_cpu"] / best["kernel_cpu"], 3),
        "render_pairs_per_core_s": round(best["kernel_cpu"], 1),
        "worker_start_cpu_s": round(startup, 1),
        "target_ratio": TARGET_RATIO,
        "limit": LIMIT,
        "render_chunk": chunk,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each loader/kernel measurement")
    parser.add_argument("--rounds", type=int, default=2)
    # Steps enough that the batches the workers render ahead while the first step waits
    # for them to start (2 per worker) do not hide the steady state.
    parser.add_argument("--fit-steps", type=int, default=40)
    parser.add_argument("--fit-batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    cpu_start = cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="doppeltrain-streamed-") as scratch:
        recipe_path = write_recipe(Path(scratch))
        figures = compare(recipe_path, args.workers, args.batch_size, args.seconds, max(1, args.rounds))
        for label, key in (("wall time", "ratio"), ("CPU time", "cpu_ratio")):
            met = "met" if figures[key] >= TARGET_RATIO else "NOT met"
            print(f"ratio loader/kernel, {label:9} {figures[key]:8.3f}  (target >= {TARGET_RATIO}: {met})", flush=True)
        fits = {}
        for augment in (True, False):
            fits[augment] = fit = train_fit.measure_fit(recipe_path, steps=args.fit_steps, batch_size=args.fit_batch_size,
                                                        workers=args.workers, width=16, augment=augment)
            print(f"fit on streamed pairs, small model, {'waveform augmentation' if augment else 'no augmentation'}: "
                  f"waiting {fit['data_wait_fraction']:.1%} of step time, {fit['pairs_per_s']:.1f} pairs/s", flush=True)
    figures = {
        "benchmark": "train_streamed",
        "synth": "voice",
        "workers": args.workers,
        "batch_size": args.batch_size,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        **figures,
        "fit_data_wait_fraction": round(fits[True]["data_wait_fraction"], 4),
        "fit_pairs_per_s": round(fits[True]["pairs_per_s"], 1),
        "fit_no_augment_data_wait_fraction": round(fits[False]["data_wait_fraction"], 4),
        "fit_no_augment_pairs_per_s": round(fits[False]["pairs_per_s"], 1),
        "fit_steps": args.fit_steps,
        "fit_batch_size": args.fit_batch_size,
        "cpu_seconds": round(cpu_seconds() - cpu_start, 1),
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    print(json_text(figures))
    return figures


if __name__ == "__main__":
    main()
