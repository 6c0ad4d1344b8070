"""The scene scores of HEAR 2021, computed as ``heareval.score`` computes them.

Each takes a predictor's outputs (softmax probabilities for a multiclass task, sigmoid
ones for a multilabel task) and the targets (one-hot, or multi-hot: one row per clip,
one column per label of the vocabulary) and returns a float:

- ``top1_acc`` (and ``pitch_acc``, the same score under NSynth's name): the top output
  is the first positive target;
- ``chroma_acc``: the same modulo 12 label indices (octave errors forgiven);
- ``mAP``: average precision of each label, macro-averaged; scikit-learn's
  ``average_precision_score(average="macro")``, whose recent releases score a label with
  no positive clip 0;
- ``aucroc`` and ``d_prime``: the area under each label's ROC curve, macro-averaged, and
  the mean of ``sqrt(2) * Phi^-1(AUC)`` over labels; NaN when a label has only positive
  or only negative clips (scikit-learn refuses those and heareval returns NaN).

Written in numpy to keep scikit-learn out of the dependencies; tests compare them with
scikit-learn where it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import ndtri


@dataclass(frozen=True)
class Score:
    name: str
    compute: Callable[[np.ndarray, np.ndarray], float]
    maximize: bool = True


def top1_accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.argmax(predictions, axis=1) == np.argmax(targets, axis=1)))


def chroma_accuracy(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.argmax(predictions, axis=1) % 12 == np.argmax(targets, axis=1) % 12))


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one label: the sum over score thresholds, highest first, of
    precision at the threshold times the recall it adds (ties form one threshold)."""
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order].astype(np.float64)
    total = positive.sum()
    if total == 0:
        return 0.0
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(positive)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall = true_positives / total
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean([average_precision(targets[:, k] > 0, predictions[:, k]) for k in range(targets.shape[1])]))


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of one label: the probability that a positive clip scores
    above a negative one, ties counting half (the trapezoidal area). NaN without both."""
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # 1-based ranks start+1..end, averaged
    return ranks


def _aucs(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array([roc_auc(targets[:, k] > 0, predictions[:, k]) for k in range(targets.shape[1])])


def macro_auc(predictions: np.ndarray, targets: np.ndarray) -> float:
    aucs = _aucs(predictions, targets)
    return float("nan") if np.isnan(aucs).any() else float(np.mean(aucs))


def d_prime(predictions: np.ndarray, targets: np.ndarray) -> float:
    aucs = _aucs(predictions, targets)
    if np.isnan(aucs).any():
        return float("nan")
    with np.errstate(divide="ignore"):
        return float(np.mean(ndtri(aucs) * np.sqrt(2.0)))


SCORES: dict[str, Score] = {
    score.name: score
    for score in (
        Score("top1_acc", top1_accuracy),
        Score("pitch_acc", top1_accuracy),
        Score("chroma_acc", chroma_accuracy),
        Score("mAP", mean_average_precision),
        Score("d_prime", d_prime),
        Score("aucroc", macro_auc),
    )
}
