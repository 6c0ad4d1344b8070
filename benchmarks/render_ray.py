"""``doppelgen render --distributor ray`` against the local distributor, on this machine's cores.

Measures the same recipe, rendered from scratch into a fresh folder, as the best of
``--rounds`` alternating rounds (the cores may be shared with other work):

- ``local``: ``render_dataset`` in this process with its default encoding workers (one
  per core), as ``doppelgen render`` runs it;
- ``ray``: ``render_with_ray`` on a local Ray cluster of the same cores, tasks of the
  default one CPU and ``--shards-per-task`` shards (so one task per core at a time), with
  the default encoding workers per task (none in a CPU task); ``ray_task_encoder``: the
  same with one encoding process in each task (``--workers 1``), which each task starts;
- ``ray_one_worker``: the same tasks, one at a time (each asks for every CPU of the
  cluster), for the scaling from 1 to 2 workers.

Ray's worker processes are warmed first (JAX imported, kernel loaded), as they are for
every task after a worker's first on a long render; the local kernel is warmed too.

Figures: ``overhead_ratio`` = ray pairs/s / local pairs/s on the same cores (target >=
0.9); ``scaling_efficiency`` = ray pairs/s / (cores x ray_one_worker pairs/s). Wall rates
only (Ray's workers are not this process's children, so their CPU time is not counted);
``load_average`` is the machine's 1-minute load before and after. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doppelgen.config import make_recipe  # noqa: E402
from doppelgen.dataset import render_dataset  # noqa: E402
from doppelgen.distributors import RayOptions, render_with_ray  # noqa: E402
from doppelgen.files import default_workers  # noqa: E402

TARGET = 0.9


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def timed(render) -> float:
    started = time.perf_counter()
    render()
    return time.perf_counter() - started


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
        "ray": lambda out: render_with_ray(recipe, out, RayOptions(shards_per_task=args.shards_per_task), batch_size=args.batch_size, progress=False),
        "ray_task_encoder": lambda out: render_with_ray(
            recipe, out, RayOptions(shards_per_task=args.shards_per_task, workers_per_task=1), batch_size=args.batch_size, progress=False
        ),
        "ray_one_worker": lambda out: render_with_ray(
            recipe, out, RayOptions(shards_per_task=args.shards_per_task, cpus_per_task=cores), batch_size=args.batch_size, progress=False
        ),
    }
    best = dict.fromkeys(measures, 0.0)
    try:
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=ray_temp, log_to_driver=False, logging_level=logging.ERROR)
        print(f"local Ray cluster of {cores} CPUs up in {time.perf_counter() - started:.1f} s", flush=True)
        started = time.perf_counter()
        render_with_ray(warm, scratch / "warm-ray", RayOptions(shards_per_task=args.shards_per_task), batch_size=args.batch_size, progress=False)
        render_dataset(warm, scratch / "warm-local", batch_size=args.batch_size, progress=False)
        print(f"warmed in {time.perf_counter() - started:.1f} s", flush=True)
        for round_ in range(max(1, args.rounds)):
            for name, render in measures.items():
                out = scratch / f"{name}-{round_}"
                best[name] = max(best[name], recipe.n_pairs / timed(lambda: render(out)))
                shutil.rmtree(out, ignore_errors=True)
            print(f"round {round_ + 1}/{args.rounds}, best so far: " + ", ".join(f"{name} {rate:.1f}/s" for name, rate in best.items()), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)

    overhead = best["ray"] / best["local"]
    scaling = best["ray"] / (cores * best["ray_one_worker"])
    print(f"local distributor ({default_workers()} encoders)   {best['local']:8.1f} pairs/s")
    print(f"ray, {cores} tasks of 1 CPU              {best['ray']:8.1f} pairs/s")
    print(f"ray, 1 encoder in each task         {best['ray_task_encoder']:8.1f} pairs/s")
    print(f"ray, one task at a time             {best['ray_one_worker']:8.1f} pairs/s")
    print(f"overhead ratio ray/local            {overhead:8.3f}  (target >= {TARGET}: {'met' if overhead >= TARGET else 'NOT met'})")
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
        "scaling_efficiency": round(scaling, 3),
        "scaling_rule": f"ray pairs/s ({cores} one-CPU tasks at once) / ({cores} x pairs/s of one task at a time)",
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
