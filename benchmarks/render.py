"""Render throughput, measured side by side in one run on this machine (issue 2, item 9).

Prints pairs/s for: the pair kernel alone, encoding alone (same workers, same cores),
end-to-end ``render_dataset``, and the reference code's in-memory generation
(``synth.init`` and ``synth.apply`` jitted separately, called per batch). The ratio
end-to-end / limit is the figure of merit, with limit = 1/(1/kernel + 1/encode) on a CPU
(synthesis and encoding share the cores) and min(kernel, encode) on a GPU.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doppelgen.config import make_recipe  # noqa: E402
from doppelgen.dataset import default_workers, render_dataset, write_batches  # noqa: E402
from doppelgen.jax_runtime import configure_jax, platform  # noqa: E402
from doppelgen.kernel import render_batch  # noqa: E402


def rate(pairs: int, seconds: float) -> float:
    return pairs / seconds if seconds > 0 else float("inf")


def measure_kernel(recipe, batch_size: int) -> tuple[float, list]:
    indices = np.arange(recipe.n_pairs)
    render_batch(recipe, indices[:batch_size], batch_size)  # compile outside the timing
    started = time.perf_counter()
    batches = [render_batch(recipe, indices[i : i + batch_size], batch_size) for i in range(0, len(indices), batch_size)]
    return rate(len(indices), time.perf_counter() - started), batches


def measure_encode(recipe, batches: list, workers: int, folder: Path) -> float:
    folder.mkdir(parents=True)
    started = time.perf_counter()
    write_batches(recipe, folder, list(range(recipe.n_shards)), iter(batches), workers)
    return rate(recipe.n_pairs, time.perf_counter() - started)


def measure_end_to_end(recipe, batch_size: int, workers: int, folder: Path) -> float:
    started = time.perf_counter()
    render_dataset(recipe, folder, batch_size=batch_size, workers=workers, progress=False)
    return rate(recipe.n_pairs, time.perf_counter() - started)


def measure_reference(recipe, batch_size: int) -> float:
    """The reference code's generator: one synth at the batch size, init and apply jitted
    apart, flatten/perturb/unflatten between them in Python."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from doppelgen.synths import build_synth

    synth = build_synth(recipe, batch_size=batch_size)
    init, apply = jax.jit(synth.init), jax.jit(synth.apply)

    def one_batch(key):
        key, k_init, k_a, k_b = jax.random.split(key, 4)
        flat, unravel = ravel_pytree(init(k_init))
        views = [unravel(jnp.clip(flat + recipe.delta * jax.random.normal(k, flat.shape), recipe.eps, 1.0)) for k in (k_a, k_b)]
        a, b = apply(views[0]), apply(views[1])
        jax.block_until_ready((a, b))
        return key, np.asarray(a), np.asarray(b)

    key = jax.random.PRNGKey(0)
    key, *_ = one_batch(key)  # compile
    n_batches = max(1, recipe.n_pairs // batch_size)
    started = time.perf_counter()
    for _ in range(n_batches):
        key, *_ = one_batch(key)
    return rate(n_batches * batch_size, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8192, help="pairs per measurement")
    parser.add_argument("--pairs-per-shard", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args(argv)

    configure_jax()
    n_shards = max(1, args.pairs // args.pairs_per_shard)
    recipe = make_recipe("voice", n_shards=n_shards, pairs_per_shard=args.pairs_per_shard)
    where = platform()
    scratch = Path(tempfile.mkdtemp(prefix="doppelgen-bench-"))
    try:
        kernel, batches = measure_kernel(recipe, args.batch_size)
        print(f"pair kernel alone        {kernel:10.1f} pairs/s", flush=True)
        encode = measure_encode(recipe, batches, args.workers, scratch / "encode")
        print(f"encoding alone ({args.workers} proc) {encode:10.1f} pairs/s", flush=True)
        del batches
        end_to_end = measure_end_to_end(recipe, args.batch_size, args.workers, scratch / "render")
        print(f"end-to-end render        {end_to_end:10.1f} pairs/s", flush=True)
        reference = measure_reference(recipe, args.batch_size)
        print(f"reference in memory      {reference:10.1f} pairs/s (no encoding, nothing written)", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    on_gpu = where["backend"] != "cpu"
    limit = min(kernel, encode) if on_gpu else 1.0 / (1.0 / kernel + 1.0 / encode)
    target = 0.9 if on_gpu else 0.95
    ratio = end_to_end / limit
    print(f"limit ({'min' if on_gpu else 'shared cores'})      {limit:10.1f} pairs/s")
    print(f"ratio end-to-end/limit   {ratio:10.3f}  (target >= {target}: {'met' if ratio >= target else 'NOT met'})")
    figures = {
        "benchmark": "render",
        "synth": "voice",
        "pairs": recipe.n_pairs,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "platform": where,
        "kernel_pairs_per_s": round(kernel, 1),
        "encode_pairs_per_s": round(encode, 1),
        "end_to_end_pairs_per_s": round(end_to_end, 1),
        "reference_pairs_per_s": round(reference, 1),
        "limit_pairs_per_s": round(limit, 1),
        "ratio": round(ratio, 3),
        "target": target,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
