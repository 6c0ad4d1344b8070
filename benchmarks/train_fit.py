"""How much of a training step waits for data: a short CPU fit with the small network.

``measure_fit_wait_fraction(dataset_dir)`` runs ``fit`` for a few steps in a temporary
run folder and returns the fraction of step time spent in ``next(loader)``, over every
step but each epoch's first (which also starts the loader workers). Target: under 5%.

    .venv/bin/python benchmarks/train_fit.py DATASET_DIR [--steps 20 --batch-size 32 --workers 2]

Without DATASET_DIR it renders a small voice dataset with doppelgen first.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Optional

from doppelgen.format import json_text
from doppeltrain.config import TrainConfig
from doppeltrain.train import fit

TARGET_WAIT_FRACTION = 0.05


def measure_fit(
    dataset_dir: str | Path,
    *,
    steps: int = 20,
    batch_size: int = 32,
    workers: int = 2,
    width: int = 16,
    augment: bool = True,
    device: str = "cpu",
    runs_dir: Optional[str | Path] = None,
) -> dict[str, Any]:
    """The summary of a one-epoch fit of ``steps`` steps (see ``doppeltrain.train.fit``)."""
    with tempfile.TemporaryDirectory(prefix="doppeltrain-bench-") as scratch:
        cfg = TrainConfig()
        cfg.data.datasets = [str(dataset_dir)]
        cfg.data.batch_size = batch_size
        cfg.data.workers = workers
        cfg.data.val_shards = 0  # every shard trains; validation is not what is measured
        cfg.model.model, cfg.model.width = "small", width
        cfg.augment.mode = "waveform" if augment else "none"
        cfg.epochs, cfg.steps_per_epoch = 1, steps
        cfg.val_every, cfg.log_every = 0, steps
        cfg.device, cfg.progress = device, False
        cfg.runs_dir, cfg.run = str(runs_dir or scratch), "bench"
        return fit(cfg)


def measure_fit_wait_fraction(dataset_dir: str | Path, **options: Any) -> float:
    """Fraction of step time spent waiting for data (options as :func:`measure_fit`)."""
    return measure_fit(dataset_dir, **options)["data_wait_fraction"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", help="a pair dataset folder (default: render a small one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="doppeltrain-bench-data-") as scratch:
        from train_pipeline import render_benchmark_dataset  # beside this script

        dataset = args.dataset or render_benchmark_dataset(Path(scratch) / "shards", n_shards=4, pairs_per_shard=64)
        summary = measure_fit(
            dataset, steps=args.steps, batch_size=args.batch_size, workers=args.workers,
            width=args.width, augment=not args.no_augment,
        )
    wait = summary["data_wait_fraction"]
    print(json_text({
        "data_wait_fraction": round(wait, 4),
        "target": TARGET_WAIT_FRACTION,
        "ok": wait < TARGET_WAIT_FRACTION,
        "pairs_per_s": round(summary["pairs_per_s"], 1),
        "steps": summary["step"],
        "batch_size": args.batch_size,
        "workers": args.workers,
    }))


if __name__ == "__main__":
    main()
