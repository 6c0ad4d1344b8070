"""Linear probe: how well do frozen embeddings separate a labelled set of sounds?

A multinomial logistic regression on standardised features, its L2 strength chosen on
a validation part of the training split, refit on the whole training split and scored
on held-out files. The same split scores the requested baselines, so the report shows
what training bought: ``logmel`` (mean and standard deviation of each log-mel band)
and ``random`` (the same network, untrained).

Written in torch (full-batch L-BFGS) to stay free of scikit-learn; probe sets are small.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from doppelgen.console import InputError, one_line
from doppelgen.files import write_atomic
from doppelgen.format import json_text, shown
from doppeltrain.checkpoint import state_dict_sha256
from doppeltrain.distributed import resolve_device
from doppeltrain.model import build_model
from doppeltrain.use.audio_files import expand_inputs, path_text
from doppeltrain.use.inference import DEFAULT_BATCH_SIZE, AudioEmbedder, embed_files, load_model

BASELINES = ("logmel", "random")


class ProbeError(InputError):
    """The probe's data, split or options cannot be used; the message is one line."""


@dataclass
class ProbeConfig:
    checkpoint: str  # a checkpoint file, or a model folder written by doppeltrain export
    data: str  # a folder with one sub-folder per class, or a CSV of path,label
    test_fraction: float = 0.2  # held out per class, when no split file is given
    split_file: Optional[str] = None  # CSV of path,split with split "train" or "test"
    val_fraction: float = 0.2  # of the training split, to choose the L2 strength
    l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    baselines: tuple[str, ...] = ()  # any of BASELINES, scored on the same split
    seed: int = 0  # the split and the random network
    max_iter: int = 300  # L-BFGS iterations per fit
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = "auto"
    out: str = "probe.json"
    progress: bool = False


@dataclass(frozen=True)
class LabelledFile:
    key: str  # the file as a split file names it: relative to the data folder, or as the CSV wrote it
    path: Path
    label: str


# --- data and splits -------------------------------------------------------------------


def read_labelled_data(data: Union[str, Path]) -> list[LabelledFile]:
    """Files and labels of a folder per class, or of a ``path,label`` CSV (UTF-8, header
    optional, paths relative to the CSV's folder unless absolute). ProbeError in one
    line naming the file when it is neither."""
    data = Path(data)
    if data.is_dir():
        classes = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise ProbeError(f"{path_text(data)} holds no class folders")
        items = []
        for folder in classes:
            for path in expand_inputs([folder]):
                items.append(LabelledFile(path.relative_to(data).as_posix(), path, folder.name))
        return items
    if data.is_file():
        return _read_csv(data)
    raise ProbeError(f"no such data folder or CSV: {path_text(data)}")


# A probe set's CSV is a list of files: a larger one is surely not meant as one.
MAX_CSV_BYTES = 64 << 20


def read_csv_rows(csv_path: Path, what: str) -> list[list[str]]:
    """The non-blank rows of a UTF-8 CSV; ProbeError in one line naming the file and
    what it should be (`what`) when it is not one (binary data, another encoding, NUL
    bytes, a field over csv's limit, or over MAX_CSV_BYTES)."""
    expected = f"expected {what}"
    try:
        if csv_path.stat().st_size > MAX_CSV_BYTES:
            raise ProbeError(f"{path_text(csv_path)}: larger than {MAX_CSV_BYTES >> 20} MiB, not {what}")
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ProbeError(f"{path_text(csv_path)}: not a UTF-8 text file (byte {error.start}); {expected}") from None
    except OSError as error:
        raise ProbeError(f"cannot read {path_text(csv_path)}: {one_line(error, csv_path)}") from None
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise ProbeError(f"{path_text(csv_path)}: not a readable CSV ({one_line(error)}); {expected}") from None
    return [row for row in rows if row and any(cell.strip() for cell in row)]


def _cells(row: list[str]) -> str:
    # The row as the error shows it: one line, at most 200 characters.
    return shown(",".join(row), 200)


def _read_csv(csv_path: Path) -> list[LabelledFile]:
    rows = read_csv_rows(csv_path, "a folder with one sub-folder per class, or a CSV of path,label")
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    items = []
    for number, row in enumerate(rows, 1):
        if len(row) != 2:
            raise ProbeError(f"{path_text(csv_path)}: row {number} should be path,label, got {_cells(row)}")
        key, label = row[0].strip(), row[1].strip()
        if not key or not label:
            raise ProbeError(f"{path_text(csv_path)}: row {number} has an empty path or label")
        path = Path(key) if Path(key).is_absolute() else csv_path.parent / key
        if not _is_file(path):
            raise ProbeError(f"{path_text(csv_path)}: no such file: {path_text(path)} (row {number})")
        items.append(LabelledFile(key, path, label))
    if not items:
        raise ProbeError(f"{path_text(csv_path)} lists no files")
    return items


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def stratified_split(labels: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out): `fraction` of each class held out, rounded, at least one
    from a class of two or more and never its last one."""
    if not 0.0 < fraction < 1.0:
        raise ProbeError(f"a split fraction must lie strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for label in sorted(set(labels)):
        members = np.flatnonzero(np.asarray(labels) == label)
        members = members[rng.permutation(len(members))]
        n_held = min(max(round(fraction * len(members)), 1), len(members) - 1)
        held.extend(members[:n_held])
        kept.extend(members[n_held:])
    return np.sort(np.asarray(kept, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


def read_split_file(split_file: Union[str, Path], items: Sequence[LabelledFile]) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices from a ``path,split`` CSV naming every file of the data set."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise ProbeError(f"no such split file: {path_text(split_file)}")
    rows = read_csv_rows(split_file, "a CSV of path,split with split train or test")
    if rows and [cell.strip().lower() for cell in rows[0][:2]] == ["path", "split"]:
        rows = rows[1:]
    assignment = {}
    for number, row in enumerate(rows, 1):
        if len(row) != 2 or row[1].strip() not in ("train", "test"):
            raise ProbeError(f"{path_text(split_file)}: row {number} should be path,train or path,test, got {_cells(row)}")
        assignment[row[0].strip()] = row[1].strip()
    missing = [item.key for item in items if item.key not in assignment]
    if missing:
        raise ProbeError(f"{path_text(split_file)} does not assign {len(missing)} file(s) of the data set, first {path_text(missing[0])}")
    sides = np.array([assignment[item.key] for item in items])
    return np.flatnonzero(sides == "train"), np.flatnonzero(sides == "test")


# --- the classifier --------------------------------------------------------------------


@dataclass
class Standardizer:
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> "Standardizer":
        # A constant feature is centred to zero rather than divided by zero.
        return cls(x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-8))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = 300) -> nn.Linear:
    """Multinomial logistic regression minimising mean cross-entropy + l2 * ||W||^2
    (bias unpenalised), full-batch L-BFGS in float64: deterministic for given inputs."""
    x = x.double()
    linear = nn.Linear(x.shape[1], n_classes).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
        tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return linear.requires_grad_(False)


def accuracy(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((linear(x.double()).argmax(dim=1) == y).double().mean()) if len(y) else float("nan")


def log_loss(linear: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(nn.functional.cross_entropy(linear(x.double()), y)) if len(y) else float("nan")


@dataclass
class ProbeResult:
    test_accuracy: float
    train_accuracy: float
    best_l2: float
    val_accuracy: dict[str, float]  # per L2 strength, keyed by its repr
    per_class_test_accuracy: dict[str, float] = field(default_factory=dict)
    # Mean cross-entropy on the test files: unlike accuracy it does not saturate on an
    # easy set, so it tells apart feature sets that all classify perfectly.
    test_log_loss: float = float("nan")


def linear_probe(
    features: np.ndarray,
    labels: Sequence[str],
    train: np.ndarray,
    test: np.ndarray,
    l2_grid: Sequence[float] = ProbeConfig.l2_grid,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 300,
) -> ProbeResult:
    """Choose L2 on a stratified validation part of `train` (ties: the stronger one),
    refit on all of `train`, score on `test`. Standardisation statistics come from the
    data each classifier is fit on, never from the data it is scored on."""
    classes = sorted(set(labels))
    index_of = {label: index for index, label in enumerate(classes)}
    y_all = torch.tensor([index_of[label] for label in labels])
    x_all = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    train_labels = [labels[i] for i in train]
    fit_part, val_part = stratified_split(train_labels, val_fraction, seed)
    fit_idx, val_idx = train[fit_part], train[val_part]
    scaler = Standardizer.fit(x_all[fit_idx])
    val_accuracy = {}
    for l2 in l2_grid:
        linear = fit_logistic_regression(scaler(x_all[fit_idx]), y_all[fit_idx], len(classes), l2, max_iter)
        val_accuracy[repr(float(l2))] = accuracy(linear, scaler(x_all[val_idx]), y_all[val_idx])
    best_l2 = max(l2_grid, key=lambda l2: (val_accuracy[repr(float(l2))], l2))
    scaler = Standardizer.fit(x_all[train])
    linear = fit_logistic_regression(scaler(x_all[train]), y_all[train], len(classes), best_l2, max_iter)
    per_class = {}
    for index, name in enumerate(classes):
        members = test[(y_all[test] == index).numpy()]
        if len(members):
            per_class[name] = accuracy(linear, scaler(x_all[members]), y_all[members])
    return ProbeResult(
        test_accuracy=accuracy(linear, scaler(x_all[test]), y_all[test]),
        train_accuracy=accuracy(linear, scaler(x_all[train]), y_all[train]),
        best_l2=float(best_l2),
        val_accuracy=val_accuracy,
        per_class_test_accuracy=per_class,
        test_log_loss=log_loss(linear, scaler(x_all[test]), y_all[test]),
    )


# --- features --------------------------------------------------------------------------


class LogMelStatistics(nn.Module):
    """(N, 1, frames, bands) log-mel -> (N, 2 * bands): each band's mean and standard
    deviation over the example's frames. Averaged over a clip's examples like an embedding."""

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        bands = logmel.squeeze(1)
        return torch.cat([bands.mean(dim=1), bands.std(dim=1, unbiased=False)], dim=1)


def baseline_model(kind: str, trained: AudioEmbedder, seed: int = 0) -> AudioEmbedder:
    """A baseline with the trained model's frontend and framing: ``logmel`` statistics, or
    ``random``, the same architecture freshly initialised from `seed`."""
    config = trained.config
    if kind == "logmel":
        model = AudioEmbedder(LogMelStatistics(), config, 2 * config.features.n_mels, normalize=False)
    elif kind == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = build_model(config.model)
        model = AudioEmbedder(network, config, config.model.embedding_dim)
    else:
        raise ProbeError(f"unknown baseline {kind!r}: expected one of {', '.join(BASELINES)}")
    return model.requires_grad_(False).to(trained.device)


# --- the command -----------------------------------------------------------------------


def validate(cfg: ProbeConfig) -> None:
    """Every option checked before any work; ProbeError in one line."""
    if not Path(cfg.checkpoint).exists():
        raise ProbeError(f"no such checkpoint or model folder: {path_text(cfg.checkpoint)}")
    resolve_device(cfg.device)
    if cfg.split_file is None and not 0.0 < cfg.test_fraction < 1.0:
        raise ProbeError(f"--test-fraction must lie strictly between 0 and 1, got {cfg.test_fraction}")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise ProbeError(f"--val-fraction must lie strictly between 0 and 1, got {cfg.val_fraction}")
    unknown = [kind for kind in cfg.baselines if kind not in BASELINES]
    if unknown:
        raise ProbeError(f"unknown baseline {unknown[0]!r}: expected one of {', '.join(BASELINES)}")
    if not cfg.l2_grid or any(not (l2 >= 0 and math.isfinite(l2)) for l2 in cfg.l2_grid):
        raise ProbeError("the L2 grid must hold finite, non-negative strengths")
    if cfg.batch_size < 1 or cfg.max_iter < 1:
        raise ProbeError("--batch-size and the iteration count must be at least 1")
    if not 0 <= cfg.seed <= 2**63 - 1:  # numpy takes no seed below 0, torch none past 64 bits
        raise ProbeError(f"--seed must be a whole number from 0 to 2**63 - 1, got {shown(cfg.seed)}")
    if not cfg.out.endswith(".json"):
        raise ProbeError(f"--out must name a .json file, got {cfg.out}")


def split_for(cfg: ProbeConfig, items: Sequence[LabelledFile]) -> tuple[np.ndarray, np.ndarray]:
    """The (train, test) indices the configuration asks for, checked for usability."""
    labels = [item.label for item in items]
    counts = Counter(labels)
    if len(counts) < 2:
        raise ProbeError(f"a probe needs at least two classes, found {len(counts)}")
    if cfg.split_file is not None:
        train, test = read_split_file(cfg.split_file, items)
    else:
        small = sorted(label for label, n in counts.items() if n < 3)
        if small:
            raise ProbeError(f"class {shown(small[0])} has {counts[small[0]]} file(s); each class needs at least 3 (train, validation, test)")
        train, test = stratified_split(labels, cfg.test_fraction, cfg.seed)
    if len(test) == 0:
        raise ProbeError("the test split is empty")
    train_counts = Counter(labels[i] for i in train)
    short = sorted(label for label in counts if train_counts[label] < 2)
    if short:
        raise ProbeError(f"class {shown(short[0])} has fewer than 2 training files (one to fit, one to validate)")
    return train, test


def run_probe(cfg: ProbeConfig) -> dict:
    """What ``doppeltrain probe`` does: embed the labelled files with the checkpoint (and
    the baselines), probe each on the same split, write the JSON report to ``cfg.out``
    and return it."""
    validate(cfg)
    items = read_labelled_data(cfg.data)
    train, test = split_for(cfg, items)
    labels = [item.label for item in items]
    paths = [item.path for item in items]
    trained = load_model(cfg.checkpoint, cfg.device)
    models = {"checkpoint": trained}
    models.update({kind: baseline_model(kind, trained, cfg.seed) for kind in cfg.baselines})
    results = {}
    for name, model in models.items():
        features = embed_files(model, paths, cfg.batch_size, cfg.progress)
        broken = np.flatnonzero(~np.isfinite(features).all(axis=1))
        if len(broken):  # one such row makes every standardised feature NaN: the probe falls to chance
            raise ProbeError(f"the {name} features of {len(broken)} file(s) are not finite, first {path_text(paths[broken[0]])}")
        result = linear_probe(features, labels, train, test, cfg.l2_grid, cfg.val_fraction, cfg.seed, cfg.max_iter)
        results[name] = {"dimensions": int(features.shape[1]), "weights_sha256": _weights_sha256(model), **asdict(result)}
    test_counts = Counter(labels[i] for i in test)
    report = {
        "checkpoint": str(cfg.checkpoint),
        "data": str(cfg.data),
        "classes": sorted(set(labels)),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "split": cfg.split_file or f"stratified, test fraction {cfg.test_fraction}, seed {cfg.seed}",
        # Accuracy of always answering the commonest test class: the floor to beat.
        "chance_accuracy": max(test_counts.values()) / len(test),
        "results": results,
        "config": {**asdict(cfg), "l2_grid": list(cfg.l2_grid), "baselines": list(cfg.baselines)},
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json_text(report, indent=2) + "\n").encode())
    return report


def _weights_sha256(model: AudioEmbedder):
    # Which weights produced a row of the report (None for weightless log-mel statistics).
    state = model.encoder.state_dict()
    return state_dict_sha256(state) if state else None


def format_report(report: dict) -> str:
    """The table the CLI prints: held-out accuracy per feature set, chance for scale."""
    lines = [f"{report['n_train']} train / {report['n_test']} test files, {len(report['classes'])} classes, "
             f"chance {report['chance_accuracy']:.3f}"]
    for name, result in report["results"].items():
        lines.append(f"{name:<11} test accuracy {result['test_accuracy']:.3f}, log loss {result['test_log_loss']:.3f}  "
                     f"(train {result['train_accuracy']:.3f}, L2 {result['best_l2']:g}, {result['dimensions']} dims)")
    return "\n".join(lines)
