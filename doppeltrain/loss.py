"""Alignment and uniformity (Wang & Isola, 2020), the paper's contrastive loss; and
symmetric InfoNCE, an option (``LossConfig.objective``).

All functions take L2-normalized embeddings ``(N, D)`` and return scalars. Under DDP
the caller passes the globally gathered batch (``distributed.gather_with_grad``), so
uniformity is measured over every rank's embeddings, as in the reference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from doppeltrain.config import LossConfig

LOSS_OBJECTIVES = ("align_uniform", "infonce")


def alignment_loss(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Mean over pairs of ``||x_i - y_i||_2 ** alpha``."""
    squared = (x - y).pow(2).sum(dim=1)
    # ||d||^alpha as (||d||^2)^(alpha/2): no square root, so no NaN gradient at d = 0.
    return squared.pow(alpha / 2).mean()


def uniformity_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """``log`` of the mean over distinct pairs ``i < j`` of ``exp(-t ||x_i - x_j||^2)``."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least two embeddings")
    norms = x.pow(2).sum(dim=1)
    # Squared distances from one matrix product (O(N^2) memory, unlike differences of
    # all pairs, O(N^2 D)); clamped because rounding can make them slightly negative.
    squared = (norms[:, None] + norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    # The matrix is symmetric, so the mean over i != j is the mean over i < j; masking
    # the diagonal avoids materialising N^2 / 2 index pairs.
    diagonal = torch.eye(n, dtype=torch.bool, device=x.device)
    exponents = (-t * squared).masked_fill(diagonal, float("-inf"))
    # log(mean(exp(z))) computed stably.
    return torch.logsumexp(exponents.flatten(), dim=0) - math.log(n * (n - 1))


def info_nce_loss(x: Tensor, y: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: the mean of the cross-entropies of finding ``y_i`` among all
    ``y`` from ``x_i``, and ``x_i`` among all ``x`` from ``y_i``, with cosine logits
    divided by ``temperature``."""
    logits = x @ y.T / temperature
    target = torch.arange(x.shape[0], device=x.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def contrastive_loss(a: Tensor, b: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, alignment, uniformity)`` for two views of the same pairs.

    With ``objective`` "align_uniform" (the paper's), ``total = align_weight * alignment +
    unif_weight * uniformity``; uniformity is the mean of the two views' uniformities.
    With "infonce", ``total`` is :func:`info_nce_loss` and the other two are measured
    alongside, detached. Computed in float32 whatever the input dtype.
    """
    a, b = a.float(), b.float()
    alignment = alignment_loss(a, b, cfg.alpha)
    uniformity = (uniformity_loss(a, cfg.t) + uniformity_loss(b, cfg.t)) / 2
    if cfg.objective == "infonce":
        return info_nce_loss(a, b, cfg.temperature), alignment.detach(), uniformity.detach()
    if cfg.objective != "align_uniform":
        raise ValueError(f"unknown loss objective {cfg.objective!r}: expected one of {', '.join(LOSS_OBJECTIVES)}")
    total = cfg.align_weight * alignment + cfg.unif_weight * uniformity
    return total, alignment, uniformity
