"""Aten ops and host syncs per augmented view, counted on the CPU: would the augmentation
keep a GPU busy, or make it wait for the host (issue 19)?

One view is what the train loop runs per view: ``ViewPipeline(cfg)(waves, generator)``,
the default ``waveform`` augmentation (all five transforms, the default impulse-response
set), the log-mel and the spectrogram step, on a batch of one-second clips (768 by
default, the reference's batch). It is counted on the path a GPU runs (one pass:
``WaveformAugment(one_pass=True)``); the chosen-rows path the CPU runs is counted too.

Counting rule (``count_view``):

- ops: every aten op the dispatcher runs (``TorchDispatchMode``), views and metadata ops
  included; an upper bound on the kernels a GPU would launch.
- syncs: ops that make the host wait for the device on CUDA:
  ``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``), ops whose output
  size depends on the data (``nonzero``, ``masked_select``, ``unique``, indexing with a
  boolean mask), ``aten.lift_fresh`` (``torch.tensor(host data)``: a copy from pageable
  memory, which blocks), and, seen one level up (``TorchFunctionMode``),
  ``Tensor.tolist``, ``Tensor.numpy`` and ``torch.from_numpy``.
- After one warm-up view: what every step pays, not the tables a process builds and
  uploads once (:func:`doppeltrain.augment.pitch_shift.pitch_plan`).

The targets are issue 19's: at most 1,500 ops and 3 syncs per view. The last line is one
JSON object: counts per path, the targets, ops / target, and CPU seconds per view of the
path the CPU runs (this process's threads; the machine's load beside it).

    .venv/bin/python benchmarks/augment_ops.py [--batch 768] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doppeltrain.augment.chain import make_generator
from doppeltrain.config import TrainConfig
from doppeltrain.views import ViewPipeline

TARGET_OPS = 1500
TARGET_SYNCS = 3
SAMPLE_RATE = 16000
# Ops that read a device value on the host, or whose output size depends on the data.
SYNC_ATEN_OPS = frozenset(
    {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "lift_fresh"}
)
INDEX_ATEN_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
SYNC_PYTHON_CALLS = frozenset({"tolist", "numpy", "from_numpy"})


class _AtenCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0
        self.syncs: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        name = func.__name__.split(".")[0]
        if name in SYNC_ATEN_OPS:
            self.syncs[name] += 1
        elif name in INDEX_ATEN_OPS and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (args[1] or ()) if index is not None
        ):
            self.syncs[f"{name} (boolean mask)"] += 1
        return func(*args, **(kwargs or {}))


class _HostDataCounter(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.syncs: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNC_PYTHON_CALLS:
            self.syncs[name] += 1
        return func(*args, **(kwargs or {}))


def count_calls(run) -> dict:
    """``{"ops", "syncs", "sync_ops"}`` of one call of ``run()``, by the rule above."""
    aten, host = _AtenCounter(), _HostDataCounter()
    with host, aten:
        run()
    syncs = aten.syncs + host.syncs
    return {"ops": aten.ops, "syncs": sum(syncs.values()), "sync_ops": dict(sorted(syncs.items()))}


def test_waves(batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 1 s) of noise at levels from 0.1 to 3 (synth output is not bounded)."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.linspace(0.1, 3.0, batch)[:, None]
    return torch.randn(batch, SAMPLE_RATE, generator=generator) * levels


def view_pipeline(one_pass: bool, cfg: TrainConfig | None = None) -> ViewPipeline:
    pipeline = ViewPipeline(cfg or TrainConfig())
    pipeline.augmenter.waveform_augment.one_pass = one_pass
    return pipeline


def count_view(batch: int, one_pass: bool = True, cfg: TrainConfig | None = None) -> dict:
    """Ops and syncs of one view of ``batch`` clips, after a warm-up view."""
    pipeline = view_pipeline(one_pass, cfg)
    waves = test_waves(batch)
    pipeline(waves, make_generator(0, 0, 0, 0))  # builds and uploads the cached tables
    return count_calls(lambda: pipeline(waves, make_generator(0, 0, 1, 0)))


def cpu_seconds_per_view(batch: int, rounds: int, one_pass: bool = False) -> float:
    """The fewest CPU seconds (this process's threads) one view took over ``rounds`` views."""
    pipeline = view_pipeline(one_pass)
    waves = test_waves(batch)
    pipeline(waves, make_generator(0, 0, 0, 0))
    best = float("inf")
    for step in range(rounds):
        start = time.process_time()
        pipeline(waves, make_generator(0, 0, step + 1, 0))
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=2, help="views timed on the CPU path (the fewest CPU seconds is kept); 0: none")
    args = parser.parse_args(argv)

    one_pass = count_view(args.batch, one_pass=True)
    chosen_rows = count_view(args.batch, one_pass=False)
    met = one_pass["ops"] <= TARGET_OPS and one_pass["syncs"] <= TARGET_SYNCS
    print(f"one pass (a GPU's path)    {one_pass['ops']:6d} ops  {one_pass['syncs']:4d} syncs per view of {args.batch}", flush=True)
    print(f"chosen rows (the CPU's)    {chosen_rows['ops']:6d} ops  {chosen_rows['syncs']:4d} syncs  {chosen_rows['sync_ops']}", flush=True)
    print(f"target <= {TARGET_OPS} ops, <= {TARGET_SYNCS} syncs: {'met' if met else 'NOT met'}", flush=True)
    figures = {
        "benchmark": "augment_ops",
        "batch": args.batch,
        "one_pass": one_pass,
        "chosen_rows": chosen_rows,
        "target_ops": TARGET_OPS,
        "target_syncs": TARGET_SYNCS,
        "ops_over_target": round(one_pass["ops"] / TARGET_OPS, 3),
        "met": met,
    }
    if args.rounds:
        figures["cpu_seconds_per_view"] = round(cpu_seconds_per_view(args.batch, args.rounds), 3)
        figures["torch_threads"] = torch.get_num_threads()
        figures["loadavg"] = os.getloadavg()[0]
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
