"""``doppeltrain eval``: a model, and its baselines, on HEAR-layout scene tasks; one table.

For every task folder (:mod:`~doppeltrain.use.hear_tasks`) and every feature set (the
model, ``logmel`` statistics of the same frontend, and the same network untrained), the
clips are embedded once (cached: :mod:`~doppeltrain.use.eval_cache`) and HEAR's
downstream protocol (:mod:`~doppeltrain.use.downstream`) scores them. The report goes to
``OUT/eval.json`` (everything: per fold, per grid point) and ``OUT/eval.md`` (the table),
rewritten after every task, and :func:`format_table` prints it.

Every option and every task folder is checked, and the model loaded, before any
embedding starts; a clip whose audio cannot be decoded stops the run with one line, and
the clips embedded until then stay cached, as they do after Ctrl-C: the same command
picks up where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from doppelgen.console import InputError
from doppelgen.files import cache_root, write_atomic
from doppelgen.format import shown
from doppeltrain.distributed import resolve_device
from doppeltrain.use import heareval_layout
from doppeltrain.use.audio_files import check_readable, path_text
from doppeltrain.use.downstream import GRIDS, HEAREVAL_SEED, ProtocolConfig, SplitData, run_protocol
from doppeltrain.use.eval_cache import EmbeddingCache, feature_set_key, file_signature, task_key, weights_sha256
from doppeltrain.use.hear_scores import SCORES
from doppeltrain.use.hear_tasks import HearTask, TaskClip, read_task
from doppeltrain.use.inference import DEFAULT_BATCH_SIZE, AudioEmbedder, embed_example_streams, file_examples, load_model
from doppeltrain.use.probe import BASELINES, baseline_model

MODEL_ROW = "model"
# Column titles of the table, by feature set.
TITLES = {MODEL_ROW: "model", "logmel": "log-mel stats", "random": "untrained"}
# Scores shown in percent; d' is not a fraction.
PERCENT_SCORES = frozenset({"top1_acc", "pitch_acc", "chroma_acc", "mAP", "aucroc"})
REPORT_JSON, REPORT_MD = "eval.json", "eval.md"


class EvalError(InputError):
    """The options of ``doppeltrain eval`` cannot be used; the message is one line."""


@dataclass
class EvalConfig:
    model: str  # a checkpoint file, or a model folder written by doppeltrain export
    tasks: tuple[str, ...]  # HEAR-layout task folders
    baselines: tuple[str, ...] = BASELINES  # logmel and/or random, scored beside the model
    out: str = "eval"  # the folder that receives eval.json and eval.md
    cache_dir: Optional[str] = None  # cached embeddings; default: the project cache's eval-embeddings/
    grid: str = "default"  # heareval's grid: default, fast or faster
    grid_points: int = 8  # heareval's --grid-points
    seed: int = HEAREVAL_SEED  # the grid's shuffle, every training run, the untrained network
    batch_size: int = DEFAULT_BATCH_SIZE  # 0.96 s examples per forward pass
    device: str = "auto"  # for embedding and for the predictors
    progress: bool = True
    heareval_dir: Optional[str] = None  # also write the embeddings in heareval's layout here

    def cache_folder(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else cache_root() / "eval-embeddings"

    def protocol(self) -> ProtocolConfig:
        return ProtocolConfig(grid=self.grid, grid_points=self.grid_points, seed=self.seed)


def validate(cfg: EvalConfig) -> None:
    """Every option checked before any work; EvalError in one line."""
    if not cfg.tasks:
        raise EvalError("no task folders given")
    if not Path(cfg.model).exists():
        raise EvalError(f"no such checkpoint or model folder: {path_text(cfg.model)}")
    unknown = [kind for kind in cfg.baselines if kind not in BASELINES]
    if unknown:
        raise EvalError(f"unknown baseline {shown(unknown[0])}: expected one of {', '.join(BASELINES)}")
    if len(set(cfg.baselines)) != len(cfg.baselines):
        raise EvalError("a baseline is named twice")
    if cfg.grid not in GRIDS:
        raise EvalError(f"unknown grid {shown(cfg.grid)}: expected one of {', '.join(GRIDS)}")
    if cfg.grid_points < 1 or cfg.batch_size < 1:
        raise EvalError("--grid-points and --batch-size must be at least 1")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise EvalError(f"--out must be a folder, and {path_text(cfg.out)} is a file")
    resolve_device(cfg.device)


# --- embeddings ------------------------------------------------------------------------


def _cache(model: AudioEmbedder, task: HearTask, cache_folder: Path) -> EmbeddingCache:
    return EmbeddingCache(cache_folder, feature_set_key(model), task_key(task))


def uncached_clips(model: AudioEmbedder, task: HearTask, cache_folder: Path) -> list[TaskClip]:
    """The task's clips that `model` has no cached vector for (or whose file changed)."""
    found = _cache(model, task, cache_folder).load(task.clips)
    return [clip for clip in task.clips if clip.key not in found]


def task_embeddings(model: AudioEmbedder, task: HearTask, cache_folder: Path, batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: bool = False, description: str = "") -> np.ndarray:
    """(clips, dim) float32 embeddings of the task's clips, in ``task.clips`` order: from
    the cache where the file is unchanged, else computed (file by file, in blocks) and
    added to the cache as they come, so that an error or Ctrl-C loses only the clips in
    flight. Headers of the clips to embed are read first."""
    cache = _cache(model, task, cache_folder)
    found = cache.load(task.clips)
    missing = [clip for clip in task.clips if clip.key not in found]
    for clip in missing:
        check_readable(clip.path)
    signatures = {clip.key: file_signature(clip.path) for clip in missing}
    bar = tqdm(total=len(task.clips), initial=len(task.clips) - len(missing), unit="clip", desc=description,
               disable=not progress, leave=False)
    try:
        with cache.writer() as writer:
            streams = (file_examples(clip.path, model) for clip in missing)
            for clip, vector in zip(missing, embed_example_streams(model, streams, batch_size)):
                found[clip.key] = vector.numpy()
                writer.add(clip, signatures[clip.key], found[clip.key])
                bar.update(1)
    finally:
        bar.close()
    if not task.clips:
        return np.zeros((0, model.embedding_dim), np.float32)
    return np.stack([found[clip.key] for clip in task.clips]).astype(np.float32, copy=False)


def targets_of(task: HearTask) -> np.ndarray:
    """(clips, labels) multi-hot targets in ``task.clips`` order (one-hot for multiclass)."""
    index = {label: i for i, label in enumerate(task.labels)}
    targets = np.zeros((len(task.clips), len(task.labels)), np.float32)
    for row, clip in enumerate(task.clips):
        targets[row, [index[label] for label in clip.labels]] = 1.0
    return targets


def split_selector(task: HearTask, embeddings: np.ndarray, device: torch.device) -> Callable[[Sequence[str]], SplitData]:
    """``splits_of`` for :func:`run_protocol`: the rows of the named splits, on `device`."""
    x = torch.as_tensor(embeddings, dtype=torch.float32, device=device)
    y = torch.as_tensor(targets_of(task), device=device)
    split_of = np.array([clip.split for clip in task.clips])

    def splits_of(names: Sequence[str]) -> SplitData:
        rows = torch.as_tensor(np.flatnonzero(np.isin(split_of, list(names))), device=device)
        return SplitData(x[rows], y[rows])

    return splits_of


# --- the command -----------------------------------------------------------------------


@dataclass
class TaskReport:
    task: str  # the folder's name
    name: str  # task_name
    metric: str  # the primary score
    prediction_type: str
    clips: int
    folds: int
    audio_sample_rate: int
    results: dict[str, dict] = field(default_factory=dict)  # by feature set


def feature_sets(model: AudioEmbedder, baselines: Sequence[str], seed: int) -> dict[str, AudioEmbedder]:
    sets = {MODEL_ROW: model}
    sets.update({kind: baseline_model(kind, model, seed) for kind in baselines})
    return sets


def evaluate_task(task: HearTask, models: dict[str, AudioEmbedder], cfg: EvalConfig,
                  device: torch.device, points=None) -> TaskReport:
    """Embed the task with every feature set, run the protocol on each, and report."""
    folds = task.folds()
    report = TaskReport(task.title, task.name, task.primary_score, task.prediction_type, len(task.clips),
                        len(folds), task.audio_sample_rate)
    embeddings = {}
    for row, model in models.items():
        embeddings[row] = task_embeddings(model, task, cfg.cache_folder(), cfg.batch_size, cfg.progress,
                                          f"{task.title}: embedding ({TITLES[row]})")
        if cfg.heareval_dir:
            heareval_layout.write_task_embeddings(task, embeddings[row], Path(cfg.heareval_dir) / row / task.title)
    n_points = len(points if points is not None else cfg.protocol().points())
    fits = len(models) * (n_points + len(folds) - 1)
    with tqdm(total=fits, unit="fit", desc=f"{task.title}: predictors", disable=not cfg.progress) as bar:
        for row, model in models.items():
            result = run_protocol(split_selector(task, embeddings[row], device), folds, task.scores,
                                  task.prediction_type == "multilabel", cfg.protocol(), points,
                                  on_fit=lambda: bar.update(1))
            report.results[row] = {
                "score": result.mean[task.primary_score],
                "score_std": result.std[task.primary_score],
                "dimensions": int(embeddings[row].shape[1]),
                "weights_sha256": weights_sha256(model),
                **asdict(result),
            }
    return report


def run_eval(cfg: EvalConfig, points=None) -> dict:
    """What ``doppeltrain eval`` does: check everything, evaluate every task, write
    ``eval.json`` and ``eval.md`` into ``cfg.out`` (after each task) and return the
    report. `points` replaces the protocol's grid (tests use tiny ones)."""
    validate(cfg)
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, cfg.device)
    tasks = [read_task(folder, model.sample_rate, known_scores=tuple(SCORES)) for folder in cfg.tasks]
    titles = [task.title for task in tasks]
    repeated = sorted({t for t in titles if titles.count(t) > 1})
    if repeated:
        raise EvalError(f"two task folders are named {repeated[0]}: the report keys tasks by folder name")
    models = feature_sets(model, cfg.baselines, cfg.seed)
    # Every file still to embed is read up to its header now, not hours into the run.
    for task in tasks:
        to_embed = {clip.key: clip for row in models.values() for clip in uncached_clips(row, task, cfg.cache_folder())}
        for clip in to_embed.values():
            check_readable(clip.path)
    report = {
        "model": str(cfg.model),
        "weights_sha256": weights_sha256(model),
        "sample_rate": model.sample_rate,
        "protocol": {**asdict(cfg.protocol()), "points": [asdict(p) for p in (points or cfg.protocol().points())]},
        "feature_sets": {row: TITLES[row] for row in models},
        "tasks": [],
        "config": {**asdict(cfg), "tasks": list(cfg.tasks), "baselines": list(cfg.baselines)},
    }
    out = Path(cfg.out)
    for task in tasks:
        report["tasks"].append(asdict(evaluate_task(task, models, cfg, device, points)))
        write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT_JSON, (json.dumps(_json_safe(report), indent=1) + "\n").encode())
    write_atomic(out / REPORT_MD, format_markdown(report).encode())


def _json_safe(value):
    # JSON has no NaN or infinity (d' of a perfect separation is infinite): null instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --- the table -------------------------------------------------------------------------


def format_score(metric: str, value: Optional[float], std: Optional[float] = None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    scale = 100.0 if metric in PERCENT_SCORES else 1.0
    text = f"{value * scale:.1f}" if scale == 100.0 else f"{value:.3f}"
    if std is not None and math.isfinite(std):
        text += f" ± {std * scale:.1f}" if scale == 100.0 else f" ± {std:.3f}"
    return text


def _rows(report: dict) -> tuple[list[str], list[list[str]]]:
    rows_of = list(report["feature_sets"])
    header = ["task", "metric", *[report["feature_sets"][row] for row in rows_of]]
    rows = []
    for task in report["tasks"]:
        unit = " (%)" if task["metric"] in PERCENT_SCORES else ""
        rows.append([task["task"], task["metric"] + unit,
                     *[format_score(task["metric"], task["results"][row]["score"], task["results"][row]["score_std"]) for row in rows_of]])
    return header, rows


def format_table(report: dict) -> str:
    """The terminal table: one row per task, the primary score of each feature set (mean
    over folds ± their standard deviation)."""
    header, rows = _rows(report)
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """eval.md: the table in Markdown, and what produced it."""
    header, rows = _rows(report)
    protocol = report["protocol"]
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"Model `{report['model']}` (weights sha256 `{(report['weights_sha256'] or '')[:16]}`), "
        f"{report['sample_rate']} Hz. HEAR 2021's scene protocol (`doppeltrain eval`): an MLP on frozen "
        f"embeddings, {protocol['grid_points']} points of heareval's {protocol['grid']} grid chosen on the "
        f"first fold's validation split, seed {protocol['seed']}; scores are the mean over folds ± their "
        "standard deviation. Baselines: log-mel statistics (the mean and standard deviation of each band) "
        "and the same network untrained.",
        "",
    ]
    return "\n".join(lines)
