"""``doppelgen render --distributor ray`` against the local distributor, on this machine's cores.

Measures the same recipe, rendered from scratch into a fresh folder, as the best of
``--rounds`` alternating rounds (the cores may be shared with other work):

- ``local``: ``render_dataset`` in this process with its default encoding workers (one
  per core), as ``doppelgen render`` runs it;
- ``ray``: ``render_dataset(distributor="ray")`` on a local Ray cluster of the same cores, tasks of the
  default one CPU and ``--shards-per-task`` shards (so one task per core at a time), with
  the default encoding workers per task (none in a CPU task); ``ray_task_encoder``: the
  same with one encoding process in each task (``--workers 1``), which each task starts;
- ``ray_one_worker``: the same tasks, one at a time (each asks for every CPU of the
  cluster), for the scaling from 1 to 2 workers.

Ray's worker processes are warmed first (JAX imported, kernel loaded), as they are for
every task after a worker's first on a long render; the local kernel is warmed too.

Figures: ``overhead_ratio`` = ray pairs/s / local pairs/s on the same cores (target >=
0.9); ``scaling_efficiency`` = ray pairs/s / (cores x ray_one_worker pairs/s). The cores
may be shared with other work, which wall rates feel and CPU time hardly does, so each
measure also counts the CPU-seconds it used: this process, its reaped children (the local
encoding workers) and the live processes under it (the Ray cluster: raylet, GCS, task
workers), read from /proc; not ``ray_task_encoder``'s, whose encoding processes end
inside a task, out of this process's sight. ``cpu_overhead_ratio`` = local CPU-s per pair / ray CPU-s per
pair (1: Ray adds no work); ``cores_busy`` = CPU-s / wall s of each measure's fastest
round: how many cores it got. ``load_average`` is the machine's 1-minute load before and
after. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.cpu_clock import cpu_seconds
from benchmarks.process_table import descendants, process_table
from doppelgen.files import default_workers
from doppelgen.format import json_text
from doppelgen.recipe import make_recipe
from doppelgen.render.distributors import RayOptions
from doppelgen.render.loop import render_dataset

TARGET = 0.9
CPU_COUNTED = ("local", "ray", "ray_one_worker")


def render_on_ray(recipe, out, options: RayOptions, batch_size: int, workers: int | None = None):
    return render_dataset(recipe, out, batch_size=batch_size, workers=workers, progress=False, distributor="ray", ray_options=options)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def live_descendants_cpu() -> dict[int, float]:
    """CPU-seconds so far of every live process under this one, by pid (Linux /proc)."""
    table = process_table()
    return {pid: table[pid].cpu_s for pid in descendants(os.getpid(), table)}


def cpu_seconds_and_live() -> tuple[float, dict[int, float]]:
    """This process's and its reaped children's CPU-seconds, and those of its live descendants."""
    return cpu_seconds(), live_descendants_cpu()


def measured(render) -> tuple[float, float]:
    """(wall seconds, CPU-seconds) of ``render()``; a live process that started during it
    counts from zero, one that ended (not reaped by this process) is lost."""
    own, live = cpu_seconds_and_live()
    started = time.perf_counter()
    render()
    wall = time.perf_counter() - started
    own_after, live_after = cpu_seconds_and_live()
    return wall, own_after - own + sum(seconds - live.get(pid, 0.0) for pid, seconds in live_after.items())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1024, help="pairs per measurement")
    parser.add_argument("--pairs-per-shard", type=int, default=64)
    parser.add_argument("--shards-per-task", type=int, default=RayOptions.shards_per_task)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measure; the best one counts")
    args = parser.parse_args(argv)

    import ray

    cores = usable_cores()
    n_shards = max(1, args.pairs // args.pairs_per_shard)
    recipe = make_recipe("voice", n_shards=n_shards, pairs_per_shard=args.pairs_per_shard)
    # One task per worker, of the measured tasks' batch shape: each worker loads that kernel.
    warm = make_recipe("voice", n_shards=cores * args.shards_per_task, pairs_per_shard=args.pairs_per_shard, seed=1)
    load_before = os.getloadavg()[0]
    scratch = Path(tempfile.mkdtemp(prefix="doppelgen-bench-ray-"))
    ray_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must be short
    measures = {
        "local": lambda out: render_dataset(recipe, out, batch_size=args.batch_size, progress=False),
        "ray": lambda out: render_on_ray(recipe, out, RayOptions(shards_per_task=args.shards_per_task), args.batch_size),
        "ray_task_encoder": lambda out: render_on_ray(recipe, out, RayOptions(shards_per_task=args.shards_per_task), args.batch_size, workers=1),
        "ray_one_worker": lambda out: render_on_ray(recipe, out, RayOptions(shards_per_task=args.shards_per_task, cpus_per_task=cores), args.batch_size),
    }
    best = dict.fromkeys(measures, 0.0)
    least_cpu = dict.fromkeys(measures, float("inf"))  # CPU-seconds per pair
    cores_busy = dict.fromkeys(measures, 0.0)
    try:
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=ray_temp, log_to_driver=False, logging_level=logging.ERROR)
        print(f"local Ray cluster of {cores} CPUs up in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        render_on_ray(warm, scratch / "warm-ray", RayOptions(shards_per_task=args.shards_per_task), args.batch_size)
        render_dataset(warm, scratch / "warm-local", batch_size=args.batch_size, progress=False)
        print(f"warmed in {time.perf_counter() - started:.1f} s", flush=True)
        for round_ in range(max(1, args.rounds)):
            for name, render in measures.items():
                out = scratch / f"{name}-{round_}"
                wall, cpu = measured(lambda: render(out))
                if recipe.n_pairs / wall > best[name]:
                    best[name], cores_busy[name] = recipe.n_pairs / wall, cpu / wall
                least_cpu[name] = min(least_cpu[name], cpu / recipe.n_pairs)
                shutil.rmtree(out, ignore_errors=True)
            print(f"round {round_ + 1}/{args.rounds}, best so far: " + ", ".join(f"{name} {rate:.1f}/s" for name, rate in best.items()), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)

    overhead = best["ray"] / best["local"]
    cpu_overhead = least_cpu["local"] / least_cpu["ray"]
    scaling = best["ray"] / (cores * best["ray_one_worker"])
    labels = {
        "local": f"local distributor ({default_workers()} encoders)",
        "ray": f"ray, {cores} tasks of 1 CPU at once",
        "ray_task_encoder": "ray, 1 encoder in each task",
        "ray_one_worker": "ray, one task at a time",
    }
    for name, label in labels.items():
        cpu = f"{1e3 * least_cpu[name]:6.2f} ms CPU a pair  {cores_busy[name]:5.2f} cores busy" if name in CPU_COUNTED else "(CPU not counted)"
        print(f"{label:36s} {best[name]:8.1f} pairs/s  {cpu}")
    print(f"overhead ratio ray/local            {overhead:8.3f}  (target >= {TARGET}: {'met' if overhead >= TARGET else 'NOT met'})")
    print(f"CPU overhead ratio local/ray        {cpu_overhead:8.3f}")
    print(f"scaling efficiency 1 -> {cores} workers    {scaling:8.3f}")
    figures = {
        "benchmark": "render_ray",
        "synth": "voice",
        "pairs": recipe.n_pairs,
        "pairs_per_shard": args.pairs_per_shard,
        "shards_per_task": args.shards_per_task,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "cores": cores,
        "measured": "wall pairs/s of a render from scratch into a fresh folder, best of the rounds; Ray workers warm",
        "local_pairs_per_s": round(best["local"], 1),
        "local_encoding_workers": default_workers(),
        "ray_pairs_per_s": round(best["ray"], 1),
        "ray_task_encoder_pairs_per_s": round(best["ray_task_encoder"], 1),
        "ray_one_worker_pairs_per_s": round(best["ray_one_worker"], 1),
        "overhead_ratio": round(overhead, 3),
        "overhead_rule": f"ray pairs/s / local pairs/s, both on {cores} cores",
        "target": TARGET,
        "cpu_ms_per_pair": {name: round(1e3 * value, 3) for name, value in least_cpu.items() if name in CPU_COUNTED},
        "cpu_overhead_ratio": round(cpu_overhead, 3),
        "cpu_overhead_rule": "local CPU-s per pair / ray CPU-s per pair (this process, its reaped children and the live Ray processes under it)",
        "cores_busy": {name: round(value, 2) for name, value in cores_busy.items() if name in CPU_COUNTED},
        "scaling_efficiency": round(scaling, 3),
        "scaling_rule": f"ray pairs/s ({cores} one-CPU tasks at once) / ({cores} x pairs/s of one task at a time)",
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json_text(figures))
    return figures


if __name__ == "__main__":
    main()
