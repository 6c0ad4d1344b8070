"""Cross-check ``doppeltrain eval`` against heareval's own prediction runner on the same embeddings.

    python benchmarks/heareval_crosscheck.py MODEL TASK... --out DIR \\
        [--heareval-python ../heareval-env/bin/python] [--grid default] [--grid-points 8] [--seeds 42 0 1 2 3] \\
        [--feature-set model --feature-set logmel --feature-set random]

1. ``doppeltrain eval``'s Python API embeds every task with the chosen feature sets (the
   model, log-mel statistics, the untrained network: seed 42's), writes the embeddings in
   heareval's layout (``DIR/heareval/FEATURE_SET/TASK``) and scores them with the
   predictor's protocol once per seed (``DIR/ours.json``). The first seed is heareval's
   (42); the others show how much a score moves with nothing but the predictor's seed.
2. heareval's ``python -m heareval.predictions.runner`` (hear-eval-kit 2021.1.3, in its own
   environment: docs/eval.md) trains and scores its predictors on those same files, with
   the same grid.
3. ``DIR/crosscheck.json`` and ``DIR/crosscheck.md`` hold both figures per task and feature
   set: heareval's, ours at seed 42, the mean and range of ours over the seeds. They agree
   when heareval's score lies within `margin` of our seeds' range; the exit status is 1
   when any does not.

heareval's environment is found at ``--heareval-python``, else at
``$DOPPELGANGERS_HEAREVAL_PYTHON``, else at ``../heareval-env/bin/python`` beside the
repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from doppelgen.files import write_atomic
from doppeltrain.distributed import resolve_device
from doppeltrain.inference import load_model
from doppeltrain.use.evaluation import MODEL_ROW, EvalConfig, evaluate_task, feature_sets
from doppeltrain.use.hear_scores import SCORES
from doppeltrain.use.hear_tasks import read_task
from doppeltrain.use.heareval_layout import read_heareval_scores

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MARGIN = 0.05  # of a score in [0, 1]: beyond seed noise, a difference of protocol
DEFAULT_SEEDS = (42, 0, 1, 2, 3)


def heareval_python(explicit: Optional[str] = None) -> Optional[Path]:
    """The Python of heareval's environment, or None when there is none."""
    for candidate in (explicit, os.environ.get("DOPPELGANGERS_HEAREVAL_PYTHON"), REPO.parent / "heareval-env" / "bin" / "python"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def run_heareval(python: Path, task_folders: Sequence[Path], grid: str, grid_points: int, workdir: Path) -> None:
    """heareval's prediction runner on `task_folders`; its logs go under `workdir`.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: heareval and Lightning 1.9 call torch.load on their
    own checkpoints (which pickle the grid's classes) without weights_only, and torch 2.6+
    would refuse them."""
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}
    command = [str(python), "-m", "heareval.predictions.runner", *[str(f.resolve()) for f in task_folders],
               "--grid", grid, "--grid-points", str(grid_points)]
    log = workdir / "heareval.log"
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=workdir, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"heareval's prediction runner failed (exit {done.returncode}); see {log}")


def crosscheck(
    model: str,
    tasks: Sequence[str],
    out: Path,
    python: Path,
    grid: str = "default",
    grid_points: int = 8,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    rows: Sequence[str] = (MODEL_ROW, "logmel", "random"),
    margin: float = DEFAULT_MARGIN,
    device: str = "cpu",
    cache_dir: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Both sides on the same embeddings of the feature sets `rows`; returns (and
    writes) the comparison."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = EvalConfig(model=model, tasks=tuple(tasks), grid=grid, grid_points=grid_points, seed=seeds[0],
                      device=device, progress=progress, cache_dir=cache_dir or str(out / "cache"))
    embedder = load_model(model, device)
    every = feature_sets(embedder, [row for row in ("logmel", "random") if row in rows], seeds[0])
    models = {row: every[row] for row in rows}
    loaded = [read_task(task, embedder.sample_rate, known_scores=tuple(SCORES)) for task in tasks]
    ours = {}
    for index, seed in enumerate(seeds):
        cfg = replace(base, seed=seed, heareval_dir=str(out / "heareval") if index == 0 else None)
        ours[seed] = [evaluate_task(task, models, cfg, resolve_device(device)).results for task in loaded]
    write_atomic(out / "ours.json", (json.dumps({str(seed): results for seed, results in ours.items()}, indent=1,
                                                default=str) + "\n").encode())
    folders = [out / "heareval" / row / task.title for task in loaded for row in rows]
    for folder in folders:  # a previous check's results would make heareval skip the task
        for stale in ("prediction-done.json", "test.predicted-scores.json"):
            (folder / stale).unlink(missing_ok=True)
    run_heareval(python, folders, grid, grid_points, out)
    report_rows = []
    for position, task in enumerate(loaded):
        metric = task.primary_score
        for row in rows:
            theirs = read_heareval_scores(out / "heareval" / row / task.title, [metric])[metric]
            by_seed = [ours[seed][position][row]["score"] for seed in seeds]
            low, high = min(by_seed), max(by_seed)
            report_rows.append({
                "task": task.title, "feature_set": row, "metric": metric, "heareval": theirs,
                "ours": by_seed[0], "ours_mean": float(np.mean(by_seed)), "ours_min": low, "ours_max": high,
                "seeds": list(seeds), "difference": theirs - by_seed[0],
                "agrees": low - margin <= theirs <= high + margin,
            })
    report = {"model": model, "grid": grid, "grid_points": grid_points, "margin": margin, "rows": report_rows,
              "agree": all(r["agrees"] for r in report_rows)}
    write_atomic(out / "crosscheck.json", (json.dumps(report, indent=1) + "\n").encode())
    write_atomic(out / "crosscheck.md", format_markdown(report).encode())
    return report


def format_markdown(report: dict) -> str:
    lines = [
        f"heareval 2021.1.3's prediction runner vs `doppeltrain eval` on the same embeddings "
        f"({report['grid']} grid, {report['grid_points']} points; ours at seeds {report['rows'][0]['seeds']}, "
        f"the first heareval's 42). Agreement: heareval's score within {report['margin']} of our seeds' range.",
        "",
        "| task | feature set | metric | heareval | ours (seed 42) | ours, mean over seeds | ours, range | agrees |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['task']} | {r['feature_set']} | {r['metric']} | {r['heareval']:.4f} | {r['ours']:.4f} | "
                     f"{r['ours_mean']:.4f} | {r['ours_min']:.4f} to {r['ours_max']:.4f} | {'yes' if r['agrees'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a checkpoint or model folder")
    parser.add_argument("tasks", nargs="+", help="HEAR-layout scene task folders")
    parser.add_argument("--out", type=Path, required=True, help="the folder for embeddings, both reports and the comparison")
    parser.add_argument("--heareval-python", help="the Python of heareval's environment")
    parser.add_argument("--grid", default="default")
    parser.add_argument("--grid-points", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--feature-set", action="append", choices=[MODEL_ROW, "logmel", "random"],
                        help="model, logmel or random (repeatable); default all three")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", help="cached embeddings (default: DIR/cache)")
    args = parser.parse_args(argv)
    python = heareval_python(args.heareval_python)
    if python is None:
        print("error: no heareval environment: pass --heareval-python (docs/eval.md makes one)", file=sys.stderr)
        return 2
    report = crosscheck(args.model, args.tasks, args.out, python, args.grid, args.grid_points, args.seeds,
                        tuple(args.feature_set or (MODEL_ROW, "logmel", "random")), args.margin, args.device,
                        args.cache_dir)
    print(format_markdown(report))
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
