"""Pair retrieval: does a view's embedding find its doppelgänger among many others?

The measure of learning that needs no labels: within a group of N held-out pairs, each
view-a embedding ranks the N view-b embeddings by cosine similarity, and the rank of its
own pair's view b is recorded. An untrained network sits near chance (recall@1 = 1/N);
a network that learned what the pairs share climbs. Groups have a fixed size so that
figures from runs with different validation sets compare (chance 1/512 by default).
"""

from __future__ import annotations

import torch

RECALL_AT = (1, 10)


def pair_ranks(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """For L2-normalized ``(N, D)`` embeddings of the two views of N pairs: the rank
    (1 = best) of ``zb[i]`` among all of ``zb`` as seen from ``za[i]``. Ties count
    against the pair (a collapsed network ranks every pair last, not first)."""
    similarity = za.float() @ zb.float().T
    own = similarity.diagonal()
    return (similarity >= own[:, None]).sum(dim=1)


def retrieval_metrics(za: torch.Tensor, zb: torch.Tensor, group: int) -> dict[str, float]:
    """View a -> view b retrieval within consecutive groups of ``group`` pairs.

    Returns ``recall_at_1``, ``recall_at_10`` (fractions of queries whose pair ranks at
    most 1 or 10), ``median_rank``, ``group`` (the size used) and ``groups``. Pairs after
    the last whole group are left out; with fewer than ``group`` pairs in all, they form
    one smaller group (its size is reported, and chance is ``1 / group``).
    """
    count = za.shape[0]
    if count != zb.shape[0] or count < 2:
        raise ValueError(f"retrieval needs two equal sets of at least 2 embeddings, got {count} and {zb.shape[0]}")
    size = min(group, count)
    n_groups = count // size
    ranks = torch.cat([pair_ranks(za[k * size : (k + 1) * size], zb[k * size : (k + 1) * size]) for k in range(n_groups)])
    result = {f"recall_at_{k}": float((ranks <= k).float().mean()) for k in RECALL_AT}
    result["median_rank"] = float(ranks.float().quantile(0.5))
    result["group"] = size
    result["groups"] = n_groups
    return result
