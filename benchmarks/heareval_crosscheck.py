"""Cross-check ``doppeltrain eval`` against heareval's own prediction runner on the same embeddings.

    python -m benchmarks.heareval_crosscheck MODEL TASK... --out DIR \\
        [--heareval-python ../heareval-env/bin/python] [--grid default] [--grid-points 8] \\
        [--seeds 42 0 1 2 3] [--heareval-seeds 42 0 1 2 3] \\
        [--feature-set model --feature-set logmel --feature-set random]

1. ``doppeltrain eval``'s Python API embeds every task with the chosen feature sets (the
   model, log-mel statistics, the untrained network: seed 42's), writes the embeddings in
   heareval's layout (``DIR/heareval-seed42/FEATURE_SET/TASK``) and scores them with its
   predictor protocol once per seed in `seeds` (``DIR/ours.json``).
2. heareval's prediction runner (hear-eval-kit 2021.1.3, in its own environment:
   docs/eval.md) trains and scores its predictors on copies of those same files, once per
   seed in `heareval_seeds` (``DIR/heareval-seedS/``): seed 42 is its stock
   ``python -m heareval.predictions.runner``, another seed is the same runner with that
   seed (``benchmarks/heareval_seeded_runner.py``). Both sides use the same grid.
3. ``DIR/crosscheck.json`` and ``DIR/crosscheck.md`` hold, per task and feature set,
   heareval's score at 42 and ours at 42, and both sides' mean and range over their seeds.
   They agree when the two means differ by at most `margin`; the exit status is 1 when
   any does not.

Why means over seeds: on a small task one run says little. On the drum tasks (395 clips)
the grid point is chosen on one small validation split, and one seed's test score moves by
several points on both sides; docs/eval.md gives the measured figures.

heareval's environment is found at ``--heareval-python``, else at
``$DOPPELGANGERS_HEAREVAL_PYTHON``, else at ``../heareval-env/bin/python`` beside the
repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from doppelgen.files import write_atomic
from doppeltrain.distributed import resolve_device
from doppeltrain.use.downstream import HEAREVAL_SEED
from doppeltrain.use.evaluation import MODEL_ROW, EvalConfig, evaluate_task, feature_sets
from doppeltrain.use.hear_scores import SCORES
from doppeltrain.use.hear_tasks import read_task
from doppeltrain.use.heareval_layout import read_heareval_scores
from doppeltrain.use.inference import load_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_MARGIN = 0.05  # of a score in [0, 1], between the two sides' means over seeds
DEFAULT_SEEDS = (42, 0, 1, 2, 3)
FEATURE_SETS = (MODEL_ROW, "logmel", "random")


def heareval_python(explicit: Optional[str] = None) -> Optional[Path]:
    """The Python of heareval's environment, or None when there is none."""
    for candidate in (explicit, os.environ.get("DOPPELGANGERS_HEAREVAL_PYTHON"), REPO.parent / "heareval-env" / "bin" / "python"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def run_heareval(python: Path, task_folders: Sequence[Path], grid: str, grid_points: int, seed: int, workdir: Path) -> None:
    """heareval's prediction runner on `task_folders` with `seed`; its logs go under `workdir`.

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: heareval and Lightning 1.9 call torch.load on their
    own checkpoints (which pickle the grid's classes) without weights_only, and torch 2.6+
    would refuse them."""
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}
    runner = ["-m", "heareval.predictions.runner"] if seed == HEAREVAL_SEED else [str(HERE / "heareval_seeded_runner.py"), str(seed)]
    command = [str(python), *runner, *[str(f.resolve()) for f in task_folders], "--grid", grid, "--grid-points", str(grid_points)]
    workdir.mkdir(parents=True, exist_ok=True)
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
    heareval_seeds: Sequence[int] = DEFAULT_SEEDS,
    rows: Sequence[str] = FEATURE_SETS,
    margin: float = DEFAULT_MARGIN,
    device: str = "cpu",
    cache_dir: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Both sides on the same embeddings of the feature sets `rows`; returns (and
    writes) the comparison."""
    if not seeds or not heareval_seeds:
        raise ValueError("both sides need at least one seed")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layout = out / f"heareval-seed{HEAREVAL_SEED}"
    base = EvalConfig(model=model, tasks=tuple(tasks), grid=grid, grid_points=grid_points, seed=HEAREVAL_SEED,
                      device=device, progress=progress, cache_dir=cache_dir or str(out / "cache"))
    embedder = load_model(model, device)
    every = feature_sets(embedder, [row for row in ("logmel", "random") if row in rows], HEAREVAL_SEED)
    models = {row: every[row] for row in rows}
    loaded = [read_task(task, embedder.sample_rate, known_scores=tuple(SCORES)) for task in tasks]
    ours = {}
    for index, seed in enumerate(seeds):
        cfg = replace(base, seed=seed, heareval_dir=str(layout) if index == 0 else None)
        ours[seed] = [evaluate_task(task, models, cfg, resolve_device(device)).results for task in loaded]
    write_atomic(out / "ours.json", (json.dumps({str(seed): results for seed, results in ours.items()}, indent=1,
                                                default=str) + "\n").encode())
    theirs = {}
    for seed in heareval_seeds:
        folder = out / f"heareval-seed{seed}"
        if folder != layout:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(layout, folder, ignore=shutil.ignore_patterns("logs", "heareval.log"))
        folders = [folder / row / task.title for task in loaded for row in rows]
        for task_folder in folders:  # earlier results would make heareval skip the task
            for stale in ("prediction-done.json", "test.predicted-scores.json"):
                (task_folder / stale).unlink(missing_ok=True)
        run_heareval(python, folders, grid, grid_points, seed, folder)
        theirs[seed] = {(task.title, row): read_heareval_scores(folder / row / task.title, [task.primary_score])[task.primary_score]
                        for task in loaded for row in rows}
    report_rows = []
    for position, task in enumerate(loaded):
        for row in rows:
            ours_by_seed = [ours[seed][position][row]["score"] for seed in seeds]
            theirs_by_seed = [theirs[seed][(task.title, row)] for seed in heareval_seeds]
            difference = float(np.mean(theirs_by_seed) - np.mean(ours_by_seed))
            report_rows.append({
                "task": task.title, "feature_set": row, "metric": task.primary_score,
                "ours": dict(zip(map(str, seeds), ours_by_seed)), "heareval": dict(zip(map(str, heareval_seeds), theirs_by_seed)),
                "ours_mean": float(np.mean(ours_by_seed)), "heareval_mean": float(np.mean(theirs_by_seed)),
                "difference": difference, "agrees": abs(difference) <= margin,
            })
    report = {"model": model, "grid": grid, "grid_points": grid_points, "margin": margin, "seeds": list(seeds),
              "heareval_seeds": list(heareval_seeds), "rows": report_rows, "agree": all(r["agrees"] for r in report_rows)}
    write_atomic(out / "crosscheck.json", (json.dumps(report, indent=1) + "\n").encode())
    write_atomic(out / "crosscheck.md", format_markdown(report).encode())
    return report


def _at_42(scores: dict) -> str:
    return f"{scores[str(HEAREVAL_SEED)]:.4f}" if str(HEAREVAL_SEED) in scores else "-"


def _spread(scores: dict) -> str:
    values = list(scores.values())
    return f"{np.mean(values):.4f} ({min(values):.4f} to {max(values):.4f})"


def format_markdown(report: dict) -> str:
    lines = [
        f"heareval 2021.1.3's prediction runner vs `doppeltrain eval` on the same embeddings ({report['grid']} grid, "
        f"{report['grid_points']} points). Seeds: heareval {report['heareval_seeds']}, ours {report['seeds']}. "
        f"Agreement: the means over seeds differ by at most {report['margin']}.",
        "",
        "| task | feature set | metric | heareval, seed 42 | ours, seed 42 | heareval, mean (range) | ours, mean (range) | difference | agrees |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['task']} | {r['feature_set']} | {r['metric']} | {_at_42(r['heareval'])} | {_at_42(r['ours'])} | "
                     f"{_spread(r['heareval'])} | {_spread(r['ours'])} | {r['difference']:+.4f} | {'yes' if r['agrees'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a checkpoint or model folder")
    parser.add_argument("tasks", nargs="+", help="HEAR-layout scene task folders")
    parser.add_argument("--out", type=Path, required=True, help="the folder for embeddings, both sides' results and the comparison")
    parser.add_argument("--heareval-python", help="the Python of heareval's environment")
    parser.add_argument("--grid", default="default")
    parser.add_argument("--grid-points", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="doppeltrain eval's seeds")
    parser.add_argument("--heareval-seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="heareval's seeds")
    parser.add_argument("--feature-set", action="append", choices=FEATURE_SETS, help="model, logmel or random (repeatable); default all")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", help="cached embeddings (default: DIR/cache)")
    args = parser.parse_args(argv)
    python = heareval_python(args.heareval_python)
    if python is None:
        print("error: no heareval environment: pass --heareval-python (docs/eval.md makes one)", file=sys.stderr)
        return 2
    report = crosscheck(args.model, args.tasks, args.out, python, args.grid, args.grid_points, args.seeds,
                        args.heareval_seeds, tuple(args.feature_set or FEATURE_SETS), args.margin, args.device,
                        args.cache_dir)
    print(format_markdown(report))
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
