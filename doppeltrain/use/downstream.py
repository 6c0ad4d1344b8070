"""HEAR 2021's downstream protocol for scene tasks: a shallow MLP on frozen embeddings.

What ``heareval.predictions.task_predictions`` (hear-eval-kit 2021.1.3) does, and this
module with it:

- The predictor: ``hidden_layers`` x (Linear to ``hidden_dim``, BatchNorm1d, Dropout,
  ReLU), then a Linear to the labels; Xavier initialisation (uniform or normal) with the
  gain of the activation before each layer; no normalisation of the embeddings. Softmax
  and cross-entropy for a multiclass task, sigmoid and binary cross-entropy for a
  multilabel one. Adam, batches of 1024, at most 500 epochs; the primary score on the
  validation split every 3 epochs; the weights of the best check are kept (a tie keeps
  the earlier) and training stops after 20 checks without a strictly better score.
- The grid: HEAR's default grid has 16 points (1 or 2 hidden layers of 1024, four
  learning rates, two initialisations, dropout 0.1); heareval shuffles it with Python's
  ``random`` seeded 42 and tries the first 8. Here the same 8, in the same order.
- Selection: every grid point is trained on the first fold and scored on its
  validation split; the best (ties: the earlier) is retrained on each other fold, each
  with its own early stopping on its own validation split. Each fold's model is scored
  on its test split with every score of the task; fold scores are averaged (and their
  sample standard deviation given).

Where this differs, and why:

- Each training run draws its initial weights, dropout masks and batch order from its
  own seed (the protocol's seed, the grid point, the fold), so a result does not depend
  on what ran before it; heareval seeds once (42) and runs everything from one stream.
- Training batches are reshuffled every epoch. heareval means to shuffle the training
  split (``shuffle = in_memory and split_name == "train"``) but passes the split as a
  list, so the comparison is always false and every epoch sees the same batches in the
  order its embedding step wrote them. The two agree whenever the training split fits
  in one batch (1024 clips).
- A last training batch of one clip is left out of that epoch: BatchNorm cannot train on
  one example, and Lightning would stop with an error there.
- No Lightning: a plain loop over tensors already in memory, on the device asked for.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from doppelgen.console import InputError
from doppelgen.format import shown
from doppeltrain.use.hear_scores import SCORES


class ProtocolError(InputError):
    """The protocol's options cannot be used (an unknown grid, no grid points)."""


INITIALIZATIONS = {"xavier_uniform": nn.init.xavier_uniform_, "xavier_normal": nn.init.xavier_normal_}


@dataclass(frozen=True)
class PredictorConfig:
    """One grid point: heareval's ``conf`` less what never varies (BatchNorm before the
    activation, no embedding norm, Adam)."""

    hidden_layers: int
    lr: float
    initialization: str
    hidden_dim: int = 1024
    dropout: float = 0.1
    batch_size: int = 1024
    max_epochs: int = 500
    patience: int = 20  # validation checks without a strictly better score before stopping
    check_val_every_n_epoch: int = 3


def _parameter_grid(values: dict[str, list]) -> list[PredictorConfig]:
    # sklearn's ParameterGrid order: keys sorted by name, the last varying fastest.
    keys = sorted(values)
    return [PredictorConfig(**dict(zip(keys, combination))) for combination in itertools.product(*(values[k] for k in keys))]


_LRS = [3.2e-3, 1e-3, 3.2e-4, 1e-4]
_INITS = ["xavier_uniform", "xavier_normal"]
# heareval's PARAM_GRID, FAST_PARAM_GRID and FASTER_PARAM_GRID, with every key ParameterGrid sees.
_GRID_VALUES = {
    "default": {
        "batch_size": [1024], "check_val_every_n_epoch": [3], "dropout": [0.1], "hidden_dim": [1024],
        "hidden_layers": [1, 2], "initialization": _INITS, "lr": _LRS, "max_epochs": [500], "patience": [20],
    },
    "fast": {
        "batch_size": [1024], "check_val_every_n_epoch": [3, 10], "dropout": [0.1], "hidden_dim": [1024],
        "hidden_layers": [1, 2], "initialization": _INITS, "lr": _LRS, "max_epochs": [10, 50], "patience": [20],
    },
    "faster": {
        "batch_size": [1024], "check_val_every_n_epoch": [1], "dropout": [0.1], "hidden_dim": [64, 128],
        "hidden_layers": [0, 1], "initialization": _INITS, "lr": _LRS, "max_epochs": [10], "patience": [1, 3],
    },
}
GRIDS = tuple(_GRID_VALUES)
HEAREVAL_SEED = 42  # seed_everything(42): the seed that shuffles heareval's grid


def grid_points(grid: str = "default", count: int = 8, seed: int = HEAREVAL_SEED) -> list[PredictorConfig]:
    """The grid points heareval tries: its grid in ParameterGrid order, shuffled by
    Python's ``random`` seeded `seed`, the first `count`."""
    if grid not in _GRID_VALUES:
        raise ProtocolError(f"unknown grid {shown(grid)}: expected one of {', '.join(GRIDS)}")
    points = _parameter_grid(_GRID_VALUES[grid])
    random.Random(seed).shuffle(points)
    return points[:count]


# --- the predictor ---------------------------------------------------------------------


class ScenePredictor(nn.Module):
    """heareval's ``FullyConnectedPrediction``: logits from embeddings."""

    def __init__(self, n_features: int, n_labels: int, config: PredictorConfig):
        super().__init__()
        initialize = INITIALIZATIONS[config.initialization]
        layers: list[nn.Module] = []
        width, activation = n_features, "linear"  # what came before: unknown, so linear
        for _ in range(config.hidden_layers):
            linear = nn.Linear(width, config.hidden_dim)
            initialize(linear.weight, gain=nn.init.calculate_gain(activation))
            layers += [linear, nn.BatchNorm1d(config.hidden_dim), nn.Dropout(config.dropout), nn.ReLU()]
            width, activation = config.hidden_dim, "relu"
        self.hidden = nn.Sequential(*layers)
        self.projection = nn.Linear(width, n_labels)
        initialize(self.projection.weight, gain=nn.init.calculate_gain(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.hidden(x))


def probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def loss_of(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)
    return nn.functional.cross_entropy(logits, targets.argmax(dim=1))


@dataclass
class SplitData:
    """Embeddings and multi-hot targets of one or more splits, on one device."""

    x: torch.Tensor  # (n, dim) float32
    y: torch.Tensor  # (n, n_labels) float32, one-hot for a multiclass task


@dataclass
class FitResult:
    config: PredictorConfig
    model: ScenePredictor  # the weights of the best validation check, eval mode
    validation_score: float
    epoch: int  # 0-based epoch of that check
    epochs_run: int
    seconds: float


def run_seed(seed: int, *parts) -> int:
    """A 63-bit seed for one training run, from the protocol's seed and what identifies
    the run, independent of what ran before."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@torch.no_grad()
def predict(model: ScenePredictor, x: torch.Tensor, multilabel: bool, batch_size: int = 4096) -> np.ndarray:
    model.eval()
    outputs = [probabilities(model(chunk), multilabel) for chunk in x.split(batch_size)]
    return torch.cat(outputs).double().cpu().numpy() if outputs else np.zeros((0, model.projection.out_features))


def score(name: str, predictions: np.ndarray, targets: torch.Tensor) -> float:
    return SCORES[name].compute(predictions, targets.double().cpu().numpy())


def train_predictor(
    train: SplitData,
    valid: SplitData,
    config: PredictorConfig,
    multilabel: bool,
    selection_score: str,
    seed: int,
) -> FitResult:
    """Train one predictor with early stopping on `selection_score` of `valid`."""
    started = time.monotonic()
    device = train.x.device
    maximize = SCORES[selection_score].maximize
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = ScenePredictor(train.x.shape[1], train.y.shape[1], config).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        order_generator = torch.Generator().manual_seed(seed)
        best_score, best_state, best_epoch, waited = None, None, -1, 0
        epoch = 0
        for epoch in range(config.max_epochs):
            model.train()
            order = torch.randperm(len(train.x), generator=order_generator).to(device)
            for batch in order.split(config.batch_size):
                if len(batch) < 2 and len(order) > 1:
                    continue  # BatchNorm cannot train on one example
                optimizer.zero_grad(set_to_none=True)
                loss_of(model(train.x[batch]), train.y[batch], multilabel).backward()
                optimizer.step()
            if (epoch + 1) % config.check_val_every_n_epoch:
                continue
            current = score(selection_score, predict(model, valid.x, multilabel), valid.y)
            if not math.isfinite(current):
                if best_state is None:
                    best_score, best_state, best_epoch = current, copy.deepcopy(model.state_dict()), epoch
                break  # Lightning's EarlyStopping stops on a non-finite score
            if best_score is None or (current > best_score if maximize else current < best_score):
                best_score, best_state, best_epoch, waited = current, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                waited += 1
                if waited >= config.patience:
                    break
    if best_state is None:  # fewer epochs than one validation period: keep the last weights
        best_score = score(selection_score, predict(model, valid.x, multilabel), valid.y)
        best_state, best_epoch = model.state_dict(), epoch
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(config, model, float(best_score), best_epoch, epoch + 1, time.monotonic() - started)


# --- the protocol ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolConfig:
    grid: str = "default"  # heareval's grid: default, fast or faster
    grid_points: int = 8  # heareval's --grid-points
    seed: int = HEAREVAL_SEED  # shuffles the grid (as heareval's 42) and seeds each training run

    def points(self) -> list[PredictorConfig]:
        return grid_points(self.grid, self.grid_points, self.seed)


@dataclass
class FoldScores:
    test: str  # the fold's test split(s)
    scores: dict[str, float]
    validation_score: float
    epoch: int


@dataclass
class ProtocolResult:
    primary_score: str
    mean: dict[str, float]  # each score averaged over folds
    std: dict[str, Optional[float]]  # sample standard deviation over folds (None for one fold)
    folds: list[FoldScores]
    best: dict  # the grid point chosen on the first fold
    grid: list[dict] = field(default_factory=list)  # every grid point with its validation score
    seconds: float = 0.0


SplitsOf = Callable[[Sequence[str]], SplitData]


def run_protocol(
    splits_of: SplitsOf,
    folds: Sequence,
    scores: Sequence[str],
    multilabel: bool,
    config: ProtocolConfig = ProtocolConfig(),
    points: Optional[Sequence[PredictorConfig]] = None,
    on_fit: Callable[[], None] = lambda: None,
) -> ProtocolResult:
    """heareval's ``task_predictions`` for a scene task. `splits_of(names)` gives the
    embeddings and targets of the named splits together; `folds` are
    :class:`~doppeltrain.use.hear_tasks.FoldSplit`; `scores[0]` selects models.
    `points` replaces ``config.points()`` (tests use tiny grids); `on_fit` is called after
    every training run (a progress bar)."""
    started = time.monotonic()
    points = list(points if points is not None else config.points())
    if not points:
        raise ProtocolError("the grid holds no points")
    primary = scores[0]
    maximize = SCORES[primary].maximize
    first = folds[0]
    train, valid = splits_of(first.train), splits_of(first.valid)
    tried = []
    for index, point in enumerate(points):
        tried.append(train_predictor(train, valid, point, multilabel, primary, run_seed(config.seed, "grid", index)))
        on_fit()
    # Python's sort is stable: among equal validation scores the earlier point wins.
    ranked = sorted(range(len(tried)), key=lambda i: tried[i].validation_score, reverse=maximize)
    best = tried[ranked[0]]
    fits = [best]
    for fold_index, fold in enumerate(folds[1:], 1):
        fits.append(train_predictor(splits_of(fold.train), splits_of(fold.valid), best.config, multilabel, primary,
                                    run_seed(config.seed, "fold", fold_index)))
        on_fit()
    fold_scores = []
    for fold, fit in zip(folds, fits):
        test = splits_of(fold.test)
        predictions = predict(fit.model, test.x, multilabel)
        fold_scores.append(FoldScores(fold.name, {name: score(name, predictions, test.y) for name in scores},
                                      fit.validation_score, fit.epoch))
    with np.errstate(invalid="ignore"):  # d' is infinite on a perfect fold: its spread is NaN
        mean = {name: float(np.mean([f.scores[name] for f in fold_scores])) for name in scores}
        std = {name: (float(np.std([f.scores[name] for f in fold_scores], ddof=1)) if len(fold_scores) > 1 else None)
               for name in scores}
    return ProtocolResult(
        primary_score=primary, mean=mean, std=std, folds=fold_scores,
        best={**asdict(best.config), "validation_score": best.validation_score, "epoch": best.epoch},
        grid=[{**asdict(fit.config), "validation_score": fit.validation_score, "epoch": fit.epoch,
               "epochs_run": fit.epochs_run} for fit in tried],
        seconds=time.monotonic() - started,
    )
