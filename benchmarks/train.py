"""Training-side throughput, measured side by side in one run on this machine (issue 4, item 10).

Prints: pairs/s the input pipeline delivers (read, decode, gain, batch) with 2 workers;
the raw limit of the same shards (tar read and FLAC decode into preallocated rows alone,
same number of processes) and their ratio by wall time and by CPU time, each the best of
``--rounds`` (target >= 0.8); the reference code's in-memory generation of the same pairs on the
same cores (the decoupling pays when the pipeline delivers at least 2x that); and the
fraction of step time a short CPU fit of the small model spends waiting for data
(target < 5%). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks import train_fit, train_pipeline
from doppelgen.format import json_text


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset_dir", nargs="?", help="a pair dataset; a small voice one is rendered when omitted")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each pipeline/raw measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fit-steps", type=int, default=20)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="doppeltrain-bench-") as scratch:
        dataset = Path(args.dataset_dir) if args.dataset_dir else train_pipeline.render_benchmark_dataset(Path(scratch) / "voice")
        pipeline = train_pipeline.compare(dataset, args.workers, args.batch_size, args.seconds, args.rounds)
        target = train_pipeline.TARGET_RATIO
        print(f"input pipeline ({args.workers} workers)  {pipeline['pipeline_pairs_per_s']:10.1f} pairs/s"
              f"  {pipeline['pipeline_pairs_per_cpu_s']:8.1f} pairs/CPU-s", flush=True)
        print(f"raw read + decode into rows  {pipeline['raw_pairs_per_s']:10.1f} pairs/s"
              f"  {pipeline['raw_pairs_per_cpu_s']:8.1f} pairs/CPU-s", flush=True)
        for label, key in (("wall time", "ratio"), ("CPU time", "cpu_ratio")):
            met = "met" if pipeline[key] >= target else "NOT met"
            print(f"ratio pipeline/raw, {label:9} {pipeline[key]:8.3f}  (target >= {target}: {met})", flush=True)
        fit = train_fit.measure_fit(dataset, steps=args.fit_steps, batch_size=32, workers=args.workers, width=16)
        wait_ok = fit["data_wait_fraction"] < train_fit.TARGET_WAIT_FRACTION
        print(f"fit, small model: waiting    {fit['data_wait_fraction']:10.1%}  of step time (target < 5%: {'met' if wait_ok else 'NOT met'})", flush=True)

    # Last: it loads JAX into this process, after every DataLoader fork is done.
    from benchmarks import render as render_benchmark
    from doppelgen.recipe import make_recipe
    from doppelgen.render.jax_runtime import configure_jax

    configure_jax()
    reference = render_benchmark.measure_reference(make_recipe("voice", n_shards=8, pairs_per_shard=256), batch_size=256)
    advantage = pipeline["pipeline_pairs_per_s"] / reference
    print(f"reference in-memory synthesis {reference:9.1f} pairs/s: pipeline delivers {advantage:.1f}x (decoupling pays at >= 2x)")
    figures = {
        "benchmark": "train",
        "cpus": os.cpu_count(),
        **pipeline,
        "reference_pairs_per_s": round(reference, 1),
        "pipeline_over_reference": round(advantage, 2),
        "fit_data_wait_fraction": round(fit["data_wait_fraction"], 4),
        "fit_pairs_per_s": round(fit["pairs_per_s"], 1),
        "fit_target_wait_fraction": train_fit.TARGET_WAIT_FRACTION,
    }
    print(json_text(figures))
    return figures


if __name__ == "__main__":
    main()
