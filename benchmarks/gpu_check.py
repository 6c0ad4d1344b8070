"""GPU evidence in one run (issue 9): GPU rendering, then the paper's recipe training.

1. Renders a voice dataset with JAX's default device (the GPU on a GPU machine), then
   renders its first shard again on the CPU in a subprocess (``JAX_PLATFORMS=cpu``) and
   checks that every pair's JSON parameters are identical and its audio agrees within
   ``verify``'s stated tolerance (``RERENDER_TOLERANCE`` x peak).
2. Trains the paper's ResNet-18 recipe (batch 768, bf16 autocast on GPU, waveform
   augmentations, the reference's 200-epoch schedule of 117-step epochs) for as many
   whole epochs as fit the budget: one epoch is timed, then the run is resumed for as
   many more as the remaining time allows.
3. Prints one JSON line: render pairs/s, the CPU-vs-GPU comparison, training pairs/s,
   the data-wait fraction, and held-out recall@1 of the untrained and the trained
   network (groups of 512 pairs).

``benchmarks/gpu_check.sh`` runs it on a lent GPU machine (at most 8 minutes); the test
suite runs ``--tiny`` on the CPU, where both renders are CPU renders, to keep it working.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from doppelgen.recipe import make_recipe  # noqa: E402
from doppelgen.render.loop import render_dataset  # noqa: E402
from doppelgen.files import default_workers  # noqa: E402
from doppelgen.format import iter_shard_pairs, shard_name  # noqa: E402
from doppelgen.publish.rerender import RERENDER_TOLERANCE  # noqa: E402

# (shards, pairs per shard, render batch, model, width, batch size, precision)
FULL = dict(shards=64, pairs_per_shard=1000, render_batch=1024, model="resnet18", width=64, batch_size=768, precision="auto")
TINY = dict(shards=4, pairs_per_shard=16, render_batch=16, model="small", width=8, batch_size=8, precision="fp32")


def compare_renders(first: Path, second: Path, shard: int) -> dict:
    """Pair by pair: identical index, seed and params; audio within the tolerance."""
    worst, pairs = 0.0, 0
    for one, other in zip(iter_shard_pairs(first / shard_name(shard)), iter_shard_pairs(second / shard_name(shard)), strict=True):
        if one.key != other.key or one.meta["params"] != other.meta["params"] or one.meta["seed"] != other.meta["seed"]:
            raise SystemExit(f"gpu_check: pair {one.key}: the parameters differ between the two renders")
        for view in ("a", "b"):
            x, y = getattr(one, view), getattr(other, view)
            peak = max(float(np.abs(x).max()), 1e-12)
            worst = max(worst, float(np.abs(x - y).max()) / peak)
        pairs += 1
    return {"pairs": pairs, "params_identical": True, "max_error_over_peak": worst, "tolerance": RERENDER_TOLERANCE, "within_tolerance": worst <= RERENDER_TOLERANCE}


def render_on_cpu(recipe_file: Path, out: Path, shard: int) -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "doppelgen", "render", str(out), "--manifest", str(recipe_file), "--shard-range", f"{shard}:{shard + 1}", "-q"]
    subprocess.run(command, cwd=REPO, env=env, check=True)


def train(dataset: Path, runs: Path, size: dict, budget_s: float, workers: int) -> dict:
    """The paper's recipe for as many whole epochs as fit ``budget_s``."""
    from doppeltrain.config import TrainConfig
    from doppeltrain.train import fit

    cfg = TrainConfig()
    cfg.data.datasets = [str(dataset)]
    cfg.data.batch_size = size["batch_size"]
    cfg.data.workers = workers
    cfg.model.model, cfg.model.width = size["model"], size["width"]
    cfg.precision = size["precision"]
    cfg.val_every, cfg.checkpoint_every, cfg.progress = 1, 1000, False
    cfg.runs_dir, cfg.run = str(runs), "paper-recipe"
    if size is TINY:
        cfg.pairs_per_epoch = 4 * size["batch_size"]
    started = time.perf_counter()
    cfg.until_epoch = 1
    first = fit(cfg)
    epoch_s = time.perf_counter() - started
    more = int((budget_s - epoch_s) // epoch_s) if size is FULL else 1
    last = first
    if more > 0:
        cfg.resume, cfg.until_epoch = True, 1 + min(more, cfg.epochs - 1)
        last = fit(cfg)
    return {
        "steps": last["step"],
        "batch_size": cfg.data.batch_size,
        "model": f"{cfg.model.model} width {cfg.model.width}",
        "precision": cfg.precision,
        "device": last["device"],
        "seconds": round(time.perf_counter() - started, 1),
        "pairs_per_s": last["pairs_per_s"],
        "data_wait_fraction": last["data_wait_fraction"],
        "recall_at_1": {"untrained": first["val_untrained"]["recall_at_1"], "trained": last["val"]["recall_at_1"]},
        "recall_at_10": {"untrained": first["val_untrained"]["recall_at_10"], "trained": last["val"]["recall_at_10"]},
        "group": last["val"]["group"],
        "loss": last["loss"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "gpu-check")
    parser.add_argument("--budget-s", type=float, default=300.0, help="seconds of training (whole epochs)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for the CPU dry run in the tests")
    parser.add_argument("--workers", type=int, default=None, help="encoding and loader workers (default: CPU count - 2)")
    args = parser.parse_args(argv)
    size = TINY if args.tiny else FULL
    workers = args.workers if args.workers is not None else max(1, default_workers() - 2)

    import jax

    platform = {"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind)}
    recipe = make_recipe("voice", delta=0.25, n_shards=size["shards"], pairs_per_shard=size["pairs_per_shard"])
    gpu_dir, cpu_dir = args.out / "render-default-device", args.out / "render-cpu"
    started = time.perf_counter()
    render_dataset(recipe, gpu_dir, batch_size=size["render_batch"], workers=workers, progress=False)
    render_s = time.perf_counter() - started
    render_on_cpu(gpu_dir / "manifest.json", cpu_dir, shard=0)
    comparison = compare_renders(gpu_dir, cpu_dir, shard=0)
    training = train(gpu_dir, args.out / "runs", size, args.budget_s, workers)
    result = {
        "benchmark": "gpu_check",
        "platform": platform,
        "render": {"pairs": recipe.n_shards * recipe.pairs_per_shard, "seconds": round(render_s, 1), "pairs_per_s": recipe.n_shards * recipe.pairs_per_shard / render_s, "cpu_comparison": comparison},
        "train": training,
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
