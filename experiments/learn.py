"""Evidence that training learns, at CPU scale: ``make learn``.

For each delta (0.05 and 0.25 by default) it renders a small voice dataset (cached),
trains the small network on the CPU for a fixed number of steps, and sets the trained
network against the same network untrained (same seed, so the same initial weights):

- pair retrieval: view a -> view b recall@1 among the 512 pairs of a held-out shard,
  without augmentation (``fit``'s own validation, before the first step and at the end);
- a linear probe on real recorded drum hits (``experiments/probe_set/``): accuracy
  pooled over the leave-one-kit-out folds (every clip is tested once, by a classifier
  that never saw its kit), the L2 strength of each fold chosen by leave-one-kit-out
  within its training kits, so no kit leaks into the choice. Log-mel statistics are
  scored on the same folds for scale.

It prints one JSON line (recall and accuracy as fractions in [0, 1])::

    {"benchmark": "learn", "budget_s": ..., "settings": {...},
     "delta_0.05": {"recall_at_1": {"untrained": u, "trained": t},
                    "probe": {"untrained": pu, "trained": pt, "logmel": pl}, ...},
     "delta_0.25": {...}}

The budget is a number of optimizer steps, so results reproduce; ``budget_s`` is the
wall time of the training it took here, with the machine's load beside it. The default
settings are the fastest-learning ones found for this budget (``experiments/learn_notes.md``
logs the search).

    .venv/bin/python -m experiments.learn [--deltas 0.05 0.25] [--steps N] [--log FILE] ...
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cpu_clock import cpu_seconds
from doppelgen.files import cache_root
from doppelgen.format import json_text
from doppeltrain import data
from doppeltrain.checkpoint import load_checkpoint_network as load_checkpoint_model
from doppeltrain.config import TrainConfig
from doppeltrain.evaluate import evaluate
from doppeltrain.use.inference import AudioEmbedder, embed_files, load_model
from doppeltrain.model import TwoViewEncoder, build_model
from doppeltrain.use.probe import (
    Standardizer,
    accuracy,
    baseline_model,
    fit_logistic_regression,
)
from doppeltrain.train import fit
from doppeltrain.views import ViewPipeline

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PROBE_MAX_ITER = 300


@dataclass
class LearnSettings:
    """One benchmark run's training settings; the defaults are the ones ``make learn`` uses."""

    steps: int = 600
    model: str = "small"
    width: int = 8
    embedding_dim: int = 512
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = 3e-3  # None: the trainer's default for the optimizer
    weight_decay: float | None = None
    milestones: tuple[float, ...] = (0.775, 0.85, 0.925)
    gamma: float = 0.1
    augment: str = "none"
    # Deltas whose pairs a run also trains on, mixed shard by shard with its own (a
    # curriculum-like mix: close pairs beside the run's own); each run is still scored on
    # a held-out shard of its own delta. Empty: each delta trains on its own pairs only.
    # Alone, delta 0.25 does not learn in this budget; beside delta 0.05 it starts to.
    mix_with: tuple[float, ...] = (0.05,)
    eval_every: int = 100  # steps between validations (the learning curve)
    seed: int = 0
    workers: int = 1
    threads: int = 2
    # The data: voice pairs, one shard of which is held out for validation (512 pairs:
    # one retrieval group).
    shards: int = 32
    pairs_per_shard: int = 512
    data_seed: int = 0


# --- data ------------------------------------------------------------------------------


def dataset_dir(root: Path, delta: float, settings: LearnSettings) -> Path:
    return root / f"voice-d{delta:g}-seed{settings.data_seed}-{settings.shards}x{settings.pairs_per_shard}"


def ensure_dataset(root: Path, delta: float, settings: LearnSettings) -> Path:
    """The voice dataset of ``delta``, rendered on first use (a re-run resumes a partial
    render). Rendered in another process: JAX's threads must not live in this one before
    the loader forks its workers."""
    out = dataset_dir(root, delta, settings)
    if not (out / "manifest.json").is_file():
        command = [
            sys.executable, "-m", "doppelgen", "render", str(out), "--synth", "voice", "--delta", str(delta),
            "--shards", str(settings.shards), "--pairs-per-shard", str(settings.pairs_per_shard),
            "--seed", str(settings.data_seed), "--quiet",
        ]
        subprocess.run(command, check=True)
    return out


# --- training --------------------------------------------------------------------------


def train_config(settings: LearnSettings, datasets: Sequence[Path], runs_dir: Path, run: str) -> TrainConfig:
    """The fit configuration of ``settings``: ``steps`` steps in epochs of ``eval_every``
    steps (validation after each), one held-out shard per dataset."""
    if settings.steps % settings.eval_every:
        raise ValueError(f"steps ({settings.steps}) must be a multiple of eval_every ({settings.eval_every})")
    cfg = TrainConfig()
    cfg.data.datasets = [str(d) for d in datasets]
    cfg.data.batch_size = settings.batch_size
    cfg.data.workers = settings.workers
    cfg.data.val_shards = 1
    cfg.model.model, cfg.model.width, cfg.model.embedding_dim = settings.model, settings.width, settings.embedding_dim
    cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay = settings.optimizer, settings.lr, settings.weight_decay
    cfg.optim.milestones, cfg.optim.gamma = tuple(settings.milestones), settings.gamma
    cfg.augment.mode = settings.augment
    cfg.epochs = settings.steps // settings.eval_every
    cfg.steps_per_epoch = settings.eval_every
    cfg.val_every, cfg.checkpoint_every, cfg.log_every = 1, cfg.epochs, 10
    cfg.val_audio_pairs = 0
    cfg.seed = settings.seed
    cfg.device, cfg.precision, cfg.progress = "cpu", "fp32", False
    cfg.runs_dir, cfg.run = str(runs_dir), run
    return cfg


def read_curve(run_dir: Path) -> dict[str, list]:
    """The run's learning curve from metrics.jsonl: validation recall@1 by step, and the
    training losses' means over each validation interval."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r for r in records if r.get("split") == "val"]
    train = [r for r in records if r.get("split") == "train"]
    curve: dict[str, list] = {
        "step": [r["step"] for r in val],
        "recall_at_1": [round(r["recall_at_1"], 4) for r in val],
        "alignment": [],
        "uniformity": [],
    }
    for previous, step in zip([-1] + curve["step"][:-1], curve["step"]):
        window = [r for r in train if previous < r["step"] <= step]
        for key in ("alignment", "uniformity"):
            curve[key].append(round(float(np.mean([r[key] for r in window])), 3) if window else None)
    return curve


def train(settings: LearnSettings, datasets: Sequence[Path], runs_dir: Path, run: str) -> dict[str, Any]:
    """Fit, timed: the summary plus ``wall_s``, ``cpu_s`` (this process and its loader
    workers), ``load`` (1-minute load averages before and after) and ``curve``."""
    cfg = train_config(settings, datasets, runs_dir, run)
    torch.set_num_threads(settings.threads)
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    summary = fit(cfg)
    summary["wall_s"] = time.perf_counter() - started
    summary["cpu_s"] = cpu_seconds() - cpu_before
    summary["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    summary["curve"] = read_curve(Path(summary["run_dir"]))
    return summary


def held_out_retrieval(network: torch.nn.Module | None, cfg: TrainConfig, dataset: Path) -> dict[str, float]:
    """View a -> view b retrieval (and the validation losses) of ``network`` on the shard
    of ``dataset`` that a run of ``cfg`` holds out, exactly as fit validates; None: the
    run's untrained network (``cfg.seed``'s initial weights)."""
    if network is None:
        torch.manual_seed(cfg.seed)  # as fit does before building the network
        network = build_model(cfg.model)
    _, val_shards = data.split_shards(data.discover([str(dataset)], cfg.data.sample_rate), cfg.data.val_shards, cfg.seed)
    loader = data.make_loader(val_shards, cfg, train=False, epoch_ref=data.SharedEpoch(0))
    return evaluate(TwoViewEncoder(network), ViewPipeline(cfg), loader, cfg.loss, cfg.retrieval_group, torch.device("cpu"), nullcontext())


# --- the probe -------------------------------------------------------------------------


@dataclass
class ProbeClips:
    paths: list[Path]
    labels: list[str]
    groups: list[str]


def read_probe_clips(probe_set: Path) -> ProbeClips:
    """The clips of a probe set's ``clips.csv`` (``path,label,group``)."""
    table = probe_set / "clips.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: build the probe set first (make probe-set)")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return ProbeClips(
        paths=[probe_set / row["path"] for row in rows],
        labels=[row["label"] for row in rows],
        groups=[row["group"] for row in rows],
    )


def _fit_score(x: torch.Tensor, y: torch.Tensor, fit_idx: np.ndarray, test_idx: np.ndarray, n_classes: int, l2: float) -> int:
    """Correct answers on ``test_idx`` of a classifier fit on ``fit_idx``, standardised
    with ``fit_idx``'s statistics."""
    scaler = Standardizer.fit(x[fit_idx])
    linear = fit_logistic_regression(scaler(x[fit_idx]), y[fit_idx], n_classes, l2, PROBE_MAX_ITER)
    return round(accuracy(linear, scaler(x[test_idx]), y[test_idx]) * len(test_idx))


def grouped_probe(features: np.ndarray, labels: Sequence[str], groups: Sequence[str], l2_grid: Sequence[float] = L2_GRID) -> dict[str, Any]:
    """Leave-one-group-out linear probe: each group is tested by a classifier fit on the
    others, its L2 strength chosen by leave-one-group-out among those others (pooled
    accuracy; ties: the stronger). Returns ``accuracy`` pooled over every clip, and per
    fold its accuracy and chosen L2."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    groups = np.asarray(groups)
    names = sorted(set(groups.tolist()))
    if len(names) < 3:
        raise ValueError(f"a grouped probe needs at least 3 groups (test, validation, fit), got {len(names)}")
    correct, folds = 0, {}
    for test_group in names:
        test_idx = np.flatnonzero(groups == test_group)
        inner = [g for g in names if g != test_group]
        scores = {}
        for l2 in l2_grid:
            scores[l2] = sum(
                _fit_score(x, y, np.flatnonzero((groups != test_group) & (groups != held)), np.flatnonzero(groups == held), len(classes), l2)
                for held in inner
            )
        best = max(l2_grid, key=lambda l2: (scores[l2], l2))
        right = _fit_score(x, y, np.flatnonzero(groups != test_group), test_idx, len(classes), best)
        correct += right
        folds[test_group] = {"accuracy": round(right / len(test_idx), 4), "l2": best, "clips": len(test_idx)}
    return {"accuracy": correct / len(labels), "folds": folds}


def probe_scores(models: dict[str, AudioEmbedder], clips: ProbeClips) -> dict[str, dict[str, Any]]:
    """:func:`grouped_probe` of each model's embeddings of the clips (each clip embedded once)."""
    threads = torch.get_num_threads()
    # The probe's L-BFGS fits are many tiny operations: on two contended cores a second
    # thread made them up to 8x slower, never faster.
    torch.set_num_threads(1)
    try:
        return {name: grouped_probe(embed_files(model, clips.paths), clips.labels, clips.groups) for name, model in models.items()}
    finally:
        torch.set_num_threads(threads)


# --- the benchmark ---------------------------------------------------------------------


def run_delta(delta: float, settings: LearnSettings, data_root: Path, runs_dir: Path, clips: ProbeClips | None) -> dict[str, Any]:
    """Train on the voice dataset of ``delta`` and compare with the untrained network."""
    dataset = ensure_dataset(data_root, delta, settings)
    mixed = [ensure_dataset(data_root, other, settings) for other in settings.mix_with if other != delta]
    summary = train(settings, [dataset, *mixed], runs_dir, f"learn-d{delta:g}")
    untrained, trained = summary["val_untrained"], summary["val"]
    if mixed:
        # fit validated on every dataset's held-out shard: score this delta's alone.
        cfg = train_config(settings, [dataset], runs_dir, "unused")
        network, _ = load_checkpoint_model(summary["checkpoint"], device="cpu")
        untrained, trained = held_out_retrieval(None, cfg, dataset), held_out_retrieval(network.eval(), cfg, dataset)
    result: dict[str, Any] = {
        "recall_at_1": {"untrained": round(untrained["recall_at_1"], 4), "trained": round(trained["recall_at_1"], 4)},
        "recall_at_10": {"untrained": round(untrained["recall_at_10"], 4), "trained": round(trained["recall_at_10"], 4)},
        "median_rank": {"untrained": untrained["median_rank"], "trained": trained["median_rank"]},
        "group": trained["group"],
        "ratio_at_1": round(trained["recall_at_1"] / max(untrained["recall_at_1"], 1 / trained["group"]), 2),
        "steps": summary["step"],
        "pairs_seen": summary["step"] * settings.batch_size,
        "train_wall_s": round(summary["wall_s"], 1),
        "train_cpu_s": round(summary["cpu_s"], 1),
        "pairs_per_s": round(summary["pairs_per_s"], 1) if summary["pairs_per_s"] else None,
        "load": summary["load"],
        "final": {key: round(summary[key], 4) for key in ("alignment", "uniformity")},
        "curve": summary["curve"],  # with mix_with: validation over every dataset's held-out shard
    }
    if clips is not None:
        started = time.perf_counter()
        network = load_model(summary["checkpoint"], "cpu")
        models = {
            "untrained": baseline_model("random", network, settings.seed),  # fit's initial weights
            "trained": network,
            "logmel": baseline_model("logmel", network),
        }
        scores = probe_scores(models, clips)
        result["probe"] = {name: round(score["accuracy"], 4) for name, score in scores.items()}
        result["probe_folds"] = {name: score["folds"] for name, score in scores.items()}
        result["probe_s"] = round(time.perf_counter() - started, 1)
    return result


def run_benchmark(settings: LearnSettings, deltas: Sequence[float], data_root: Path, probe_set: Path | None,
                  runs_dir: Path | None = None) -> dict[str, Any]:
    """The benchmark's JSON record: one entry per delta (see the module docstring)."""
    clips = read_probe_clips(probe_set) if probe_set is not None else None
    with tempfile.TemporaryDirectory(prefix="doppelgangers-learn-") as scratch:
        runs = Path(runs_dir) if runs_dir else Path(scratch)
        settings_json = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}
        record: dict[str, Any] = {"benchmark": "learn", "budget_s": None, "settings": settings_json}
        results = {f"delta_{delta:g}": run_delta(delta, settings, data_root, runs, clips) for delta in deltas}
    record["budget_s"] = round(sum(r["train_wall_s"] for r in results.values()), 1)
    record["budget_steps"] = settings.steps * len(deltas)
    record.update(results)
    record["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    record["cores"] = os.cpu_count()
    record["torch_threads"] = settings.threads
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = LearnSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.05, 0.25])
    parser.add_argument("--data-root", type=Path, default=None, help="where the voice datasets are cached (default: $DOPPELGANGERS_CACHE/learn)")
    parser.add_argument("--probe-set", type=Path, default=None, help="the drum probe set (default: $DOPPELGANGERS_CACHE/probe-set)")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--log", type=Path, default=None, help="also append the JSON line to this file")
    parser.add_argument("--tag", default=None, help="a name for this run in the log")
    for field in dataclasses.fields(LearnSettings):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, tuple):
            parser.add_argument(flag, type=float, nargs="*", default=list(value))
        elif field.name in ("lr", "weight_decay"):
            parser.add_argument(flag, type=float, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = LearnSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LearnSettings)})
    settings.milestones, settings.mix_with = tuple(settings.milestones), tuple(settings.mix_with)
    cache = cache_root()
    probe_set = None if args.no_probe else (args.probe_set or cache / "probe-set")
    record = run_benchmark(settings, args.deltas, args.data_root or cache / "learn", probe_set, args.runs_dir)
    if args.tag:
        record["tag"] = args.tag
    line = json_text(record)
    if args.log:
        with open(args.log, "a") as handle:
            handle.write(line + "\n")
    print(line)
    return record


if __name__ == "__main__":
    main()
