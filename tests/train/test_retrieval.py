"""Pair retrieval on hand-made embeddings, where the right answer is known."""

import pytest
import torch
import torch.nn.functional as F

from doppeltrain.retrieval import pair_ranks, retrieval_metrics


def unit(rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_identical_views_rank_first():
    z = F.normalize(torch.randn(600, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    metrics = retrieval_metrics(z, z.clone(), group=512)
    assert metrics == {"recall_at_1": 1.0, "recall_at_10": 1.0, "median_rank": 1.0, "group": 512, "groups": 1}


def test_ranks_count_the_views_b_closer_than_the_own_one():
    za = unit([[1, 0], [0, 1], [1, 1]])
    # Pair 0's own b is the farthest of three; pair 1's own b is the closest.
    zb = unit([[-1, 0.1], [0, 1], [0.2, 1]])
    ranks = pair_ranks(za, zb)
    assert ranks.tolist()[:2] == [3, 1]
    # Ties count against the pair: two identical pairs both rank second.
    assert pair_ranks(unit([[1, 0], [1, 0]]), unit([[1, 0], [1, 0]])).tolist() == [2, 2]


def test_collapsed_embeddings_score_no_recall():
    za = torch.ones(512, 8) / 8**0.5
    metrics = retrieval_metrics(za, za.clone(), group=512)
    assert metrics["recall_at_1"] == 0.0 and metrics["recall_at_10"] == 0.0 and metrics["median_rank"] == 512


def test_groups_are_fixed_size_and_the_rest_is_left_out():
    generator = torch.Generator().manual_seed(1)
    za = F.normalize(torch.randn(1100, 32, generator=generator), dim=1)
    zb = za.clone()
    zb[1024:] = -zb[1024:]  # pairs past the second whole group would fail, but are not counted
    zb[:10] = F.normalize(torch.randn(10, 32, generator=generator), dim=1)  # ten pairs broken
    metrics = retrieval_metrics(za, zb, group=512)
    assert (metrics["group"], metrics["groups"]) == (512, 2)
    assert metrics["recall_at_1"] == pytest.approx(1 - 10 / 1024, abs=2 / 1024)


def test_random_embeddings_sit_near_chance():
    generator = torch.Generator().manual_seed(2)
    za = F.normalize(torch.randn(512 * 8, 64, generator=generator), dim=1)
    zb = F.normalize(torch.randn(512 * 8, 64, generator=generator), dim=1)
    metrics = retrieval_metrics(za, zb, group=512)
    assert metrics["recall_at_1"] < 5 / 512
    assert metrics["recall_at_10"] == pytest.approx(10 / 512, abs=0.01)
    assert metrics["median_rank"] == pytest.approx(256, rel=0.15)


def test_small_sets_form_one_smaller_group_and_bad_input_is_refused():
    z = F.normalize(torch.randn(20, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    assert retrieval_metrics(z, z, group=512)["group"] == 20
    with pytest.raises(ValueError):
        retrieval_metrics(z[:1], z[:1], group=512)
    with pytest.raises(ValueError):
        retrieval_metrics(z, z[:10], group=512)
