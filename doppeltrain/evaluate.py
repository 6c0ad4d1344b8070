"""Validation: the loss and pair retrieval of held-out pairs, without augmentation.

Runs on rank 0 alone with the bare network in eval mode (BatchNorm uses its running
statistics, so there is nothing to synchronise). The loop calls it once before the first
step, for the untrained network, then every ``val_every`` epochs and at the end.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from doppeltrain.config import LossConfig
from doppeltrain.loss import contrastive_loss
from doppeltrain.retrieval import retrieval_metrics
from doppeltrain.views import ViewPipeline


def embed_views(encoder: nn.Module, pipeline: ViewPipeline, a: torch.Tensor, b: torch.Tensor, generator, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized embeddings of both views, one forward pass each (augmented when
    ``generator`` is given). ``encoder`` maps one batch of log-mel examples, or both views
    at once when it is a :class:`~doppeltrain.model.TwoViewEncoder` (possibly DDP-wrapped)."""
    spec_a = pipeline(a, generator)
    spec_b = pipeline(b, generator)
    with autocast:
        za, zb = encoder(spec_a, spec_b)
    return F.normalize(za.float(), dim=1), F.normalize(zb.float(), dim=1)


@torch.no_grad()
def evaluate(
    encoder: nn.Module,
    pipeline: ViewPipeline,
    batches: Iterable,
    loss: LossConfig,
    group: int,
    device: torch.device,
    autocast,
    show_pairs: Optional[Callable] = None,
) -> Optional[dict[str, float]]:
    """Validation losses and view a -> view b retrieval over ``batches`` of pairs.

    ``encoder`` is a :class:`~doppeltrain.model.TwoViewEncoder`. Uniformity is measured
    within each batch, as in single-process training, and batch losses are weighted by
    their size. Retrieval (:func:`~doppeltrain.retrieval.retrieval_metrics`) ranks within
    consecutive groups of ``group`` pairs in the loader's fixed order. ``show_pairs(a, b,
    spec_a, spec_b)`` is called with the first batch. Returns None when there is no
    batch of at least two pairs.
    """
    was_training = encoder.training
    encoder.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    pairs = 0
    views_a, views_b = [], []
    try:
        for a, b, _ in batches:
            if a.shape[0] < 2:  # a last partial batch of one pair has no uniformity
                continue
            a, b = a.to(device), b.to(device)
            za, zb = embed_views(encoder, pipeline, a, b, None, autocast)
            sums += torch.stack(contrastive_loss(za, zb, loss)).double().cpu() * a.shape[0]
            views_a.append(za.cpu())
            views_b.append(zb.cpu())
            if pairs == 0 and show_pairs is not None:
                show_pairs(a, b, pipeline.frontend(a), pipeline.frontend(b))
            pairs += a.shape[0]
    finally:
        encoder.train(was_training)
    if pairs == 0:
        return None
    result = dict(zip(("loss", "alignment", "uniformity"), (sums / pairs).tolist()))
    result.update(retrieval_metrics(torch.cat(views_a), torch.cat(views_b), group))
    return result
