"""Evidence that training learns, at CPU scale: ``make learn``.

For each delta (0.05 and 0.25 by default) it trains the small network on the CPU for a
fixed number of steps and sets the trained network against the same network untrained
(same seed, so the same initial weights). Delta 0.05 trains on a small frozen voice
dataset (rendered once, cached). The paper's delta 0.25 trains on fresh pairs of the
voice recipe (``manifests/voice.json``) rendered on the fly, never one twice, with delta
ramped up from 0.05 over the first half of the run, and InfoNCE; the same run on delta
0.25 pairs alone (no ramp) is reported beside it as ``delta_0.25_alone``. Every run is
scored on held-out pairs of its own delta only:

- pair retrieval: view a -> view b recall@1, recall@10 and median rank among the 512
  pairs of a held-out shard, without augmentation (``fit``'s own validation, before the
  first step and at the end; a streamed run's held-out shard is the one a frozen render
  of its recipe holds out, so both validate on the same pairs);
- a linear probe on real recorded drum hits (``experiments/probe_set/``): accuracy
  pooled over the leave-one-kit-out folds (every clip is tested once, by a classifier
  that never saw its kit), the L2 strength of each fold chosen by leave-one-kit-out
  within its training kits, so no kit leaks into the choice. Log-mel statistics are
  scored on the same folds for scale.

It prints one JSON line (recall and accuracy as fractions in [0, 1])::

    {"benchmark": "learn", "budget_s": ..., "settings": {...},
     "delta_0.05": {"data": {"source": "frozen", "loss": ..., "steps": ..., "pairs": ...},
                    "recall_at_1": {"untrained": u, "trained": t}, "median_rank": {...},
                    "probe": {"untrained": pu, "trained": pt, "logmel": pl}, ...},
     "delta_0.25": {"data": {"source": "stream", "delta_from": 0.05, ...}, ...},
     "delta_0.25_alone": {...}}

The budget is a number of optimizer steps, so results reproduce; ``budget_s`` is the
wall time of the training it took here, with the machine's load beside it. The default
settings are the fastest-learning ones found for this budget (``experiments/learn_notes.md``
logs the search).

    .venv/bin/python -m experiments.learn [--deltas 0.05 0.25] [--steps N] [--stream-steps N] [--log FILE] ...
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cpu_clock import cpu_seconds
from doppelgen.files import cache_root
from doppelgen.format import json_text
from doppeltrain.config import TrainConfig
from doppeltrain.train import fit
from doppeltrain.use.inference import AudioEmbedder, embed_files, load_model
from doppeltrain.use.probe import (
    Standardizer,
    accuracy,
    baseline_model,
    fit_logistic_regression,
)

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
VOICE_RECIPE = Path(__file__).resolve().parents[1] / "manifests" / "voice.json"
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
    loss: str = "align_uniform"  # fit's LossConfig.objective: the paper's loss
    eval_every: int = 100  # steps between validations (the learning curve)
    # Deltas trained on fresh pairs of the voice recipe rendered on the fly (fit's
    # streamed recipes) instead of the frozen dataset, with the stream_* settings below.
    # Frozen, delta 0.25 does not learn in this budget (learn_notes.md).
    streamed: tuple[float, ...] = (0.25,)
    stream_steps: int = 300  # two streamed runs (ramped and alone) fit the 20-minute budget: learn_notes.md
    stream_batch_size: int = 256
    stream_loss: str = "infonce"
    stream_temperature: float = 0.2
    # The delta curriculum (fit's --delta-from/--delta-ramp): delta ramps linearly from
    # stream_delta_from at step 0 to the run's delta at stream_delta_ramp of the run.
    # None: the run's delta throughout.
    stream_delta_from: float | None = 0.05
    stream_delta_ramp: float = 0.5
    # Also train the same streamed run on its delta alone (no ramp), reported beside it.
    stream_alone: bool = True
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


def stream_recipe(root: Path, delta: float, settings: LearnSettings) -> Path:
    """The voice recipe (``manifests/voice.json``) at ``delta``, sized and seeded as the
    frozen dataset of ``delta`` (32 shards of 512): a stream of it holds out the shard
    that dataset holds out, and its first training pairs are that dataset's."""
    recipe = json.loads(VOICE_RECIPE.read_text())
    recipe.update(delta=delta, seed=settings.data_seed, n_shards=settings.shards, pairs_per_shard=settings.pairs_per_shard)
    folder = dataset_dir(root, delta, settings)
    path = folder.parent / f"{folder.name}.recipe.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe, indent=2) + "\n")
    return path


# --- training --------------------------------------------------------------------------


def train_config(settings: LearnSettings, datasets: Sequence[Path], runs_dir: Path, run: str, stream: bool = False,
                 ramp: bool = True) -> TrainConfig:
    """The fit configuration of ``settings``: ``steps`` steps in epochs of ``eval_every``
    steps (validation after each), one held-out shard per dataset. ``stream``: the
    datasets are recipes, trained with the stream_* settings (``ramp`` False: without
    the delta curriculum)."""
    steps = settings.stream_steps if stream else settings.steps
    if steps % settings.eval_every:
        raise ValueError(f"steps ({steps}) must be a multiple of eval_every ({settings.eval_every})")
    cfg = TrainConfig()
    cfg.data.datasets = [str(d) for d in datasets]
    cfg.data.batch_size = settings.stream_batch_size if stream else settings.batch_size
    cfg.data.workers = settings.workers
    cfg.loss.objective = settings.stream_loss if stream else settings.loss
    if stream:
        cfg.loss.temperature = settings.stream_temperature
        cfg.data.render_on = "cpu"
        if ramp and settings.stream_delta_from is not None:
            cfg.data.delta_from, cfg.data.delta_ramp = settings.stream_delta_from, settings.stream_delta_ramp
    cfg.data.val_shards = 1
    cfg.model.model, cfg.model.width, cfg.model.embedding_dim = settings.model, settings.width, settings.embedding_dim
    cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay = settings.optimizer, settings.lr, settings.weight_decay
    cfg.optim.milestones, cfg.optim.gamma = tuple(settings.milestones), settings.gamma
    cfg.augment.mode = settings.augment
    cfg.epochs = steps // settings.eval_every
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
        "recall_at_10": [round(r["recall_at_10"], 4) for r in val],
        "median_rank": [r["median_rank"] for r in val],
        "alignment": [],
        "uniformity": [],
    }
    for previous, step in zip([-1] + curve["step"][:-1], curve["step"]):
        window = [r for r in train if previous < r["step"] <= step]
        for key in ("alignment", "uniformity"):
            curve[key].append(round(float(np.mean([r[key] for r in window])), 3) if window else None)
    return curve


def train(cfg: TrainConfig, threads: int) -> dict[str, Any]:
    """Fit, timed: the summary plus ``wall_s``, ``cpu_s`` (this process and its loader
    workers), ``load`` (1-minute load averages before and after) and ``curve``."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    summary = fit(cfg)
    summary["wall_s"] = time.perf_counter() - started
    summary["cpu_s"] = cpu_seconds() - cpu_before
    summary["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    summary["curve"] = read_curve(Path(summary["run_dir"]))
    return summary


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


def data_used(cfg: TrainConfig, stream: bool, steps: int) -> dict[str, Any]:
    """What a run trained on, for the JSON line."""
    pairs = steps * cfg.data.batch_size
    used: dict[str, Any] = {
        "source": "stream" if stream else "frozen",
        "recipe": Path(cfg.data.datasets[0]).name,
        "delta_from": cfg.data.delta_from,
        "delta_ramp": cfg.data.delta_ramp if cfg.data.delta_from is not None else None,
        "loss": cfg.loss.objective,
        "steps": steps,
        "batch_size": cfg.data.batch_size,
        "pairs": pairs,
    }
    if cfg.loss.objective == "infonce":
        used["temperature"] = cfg.loss.temperature
    # A stream never repeats a pair; a frozen dataset repeats its training shards.
    used["distinct_pairs"] = pairs if stream else None
    return used


def run_delta(delta: float, settings: LearnSettings, data_root: Path, runs_dir: Path, clips: ProbeClips | None,
              ramp: bool = True, baselines: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train on voice pairs of ``delta`` (streamed or frozen, as ``settings`` say) and
    compare with the untrained network on held-out pairs of ``delta``. ``baselines``
    keeps the probe scores of the untrained network and log-mel statistics across runs:
    every run shares its architecture and seed, so they are probed once."""
    stream = delta in settings.streamed
    source = stream_recipe(data_root, delta, settings) if stream else ensure_dataset(data_root, delta, settings)
    name = f"learn-d{delta:g}" + ("" if ramp or not stream else "-alone")
    cfg = train_config(settings, [source], runs_dir, name, stream=stream, ramp=ramp)
    summary = train(cfg, settings.threads)
    untrained, trained = summary["val_untrained"], summary["val"]
    steps = summary["step"]
    result: dict[str, Any] = {
        "data": data_used(cfg, stream, steps),
        "recall_at_1": {"untrained": round(untrained["recall_at_1"], 4), "trained": round(trained["recall_at_1"], 4)},
        "recall_at_10": {"untrained": round(untrained["recall_at_10"], 4), "trained": round(trained["recall_at_10"], 4)},
        "median_rank": {"untrained": untrained["median_rank"], "trained": trained["median_rank"]},
        "group": trained["group"],
        "ratio_at_1": round(trained["recall_at_1"] / max(untrained["recall_at_1"], 1 / trained["group"]), 2),
        "steps": steps,
        "pairs_seen": steps * cfg.data.batch_size,
        "train_wall_s": round(summary["wall_s"], 1),
        "train_cpu_s": round(summary["cpu_s"], 1),
        "pairs_per_s": round(summary["pairs_per_s"], 1) if summary["pairs_per_s"] else None,
        "load": summary["load"],
        "final": {key: round(summary[key], 4) for key in ("alignment", "uniformity")},
        "curve": summary["curve"],
    }
    if clips is not None:
        started = time.perf_counter()
        network = load_model(summary["checkpoint"], "cpu")
        baselines = {} if baselines is None else baselines
        shared = {
            "untrained": lambda: baseline_model("random", network, settings.seed),  # fit's initial weights
            "logmel": lambda: baseline_model("logmel", network),
        }
        new = probe_scores({"trained": network, **{name: make() for name, make in shared.items() if name not in baselines}}, clips)
        baselines.update({name: score for name, score in new.items() if name != "trained"})
        scores = {"untrained": baselines["untrained"], "trained": new["trained"], "logmel": baselines["logmel"]}
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
        results, baselines = {}, {}
        for delta in deltas:
            results[f"delta_{delta:g}"] = run_delta(delta, settings, data_root, runs, clips, baselines=baselines)
            if delta in settings.streamed and settings.stream_alone and settings.stream_delta_from is not None:
                results[f"delta_{delta:g}_alone"] = run_delta(delta, settings, data_root, runs, clips, ramp=False, baselines=baselines)
    record["budget_s"] = round(sum(r["train_wall_s"] for r in results.values()), 1)
    record["budget_cpu_s"] = round(sum(r["train_cpu_s"] for r in results.values()), 1)
    record["budget_steps"] = sum(r["steps"] for r in results.values())
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
        elif field.name in ("lr", "weight_decay", "stream_delta_from"):
            parser.add_argument(flag, type=lambda text: None if text.lower() == "none" else float(text), default=value)
        elif isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = LearnSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LearnSettings)})
    settings.milestones, settings.streamed = tuple(settings.milestones), tuple(settings.streamed)
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
