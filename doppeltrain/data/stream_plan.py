"""What a streamed recipe renders at each step: pair indices and delta, pure functions of the step.

A recipe's pairs are addressed by index (``doppelgen.render.kernel``: pair ``i`` is a
function of the recipe and ``i`` alone), so a stream is a plan of indices, nothing more:

- **Validation**: the shards a frozen render of the recipe would hold out
  (``datasets.held_out_shards``: the same seed and recipe give the same shards), in
  shard order. A streamed run and a frozen run of one recipe validate on the same pairs.
- **Training**: every other index from 0 up, in order: the training position ``p``
  (0, 1, 2, ...) maps to the ``p``-th index outside the held-out shards. The first
  pairs of a stream are the training pairs of the recipe's frozen render; the stream
  goes on past its last shard and never repeats an index.
- **Position of a pair**: step ``s`` of a run with ``share`` pairs of this recipe per
  rank batch and ``world_size`` ranks trains on positions ``s * share * world_size +
  rank * share + row``. Steps count from the run's start (epoch * steps per epoch +
  step in epoch), so epochs, ranks and rows never share a position, loader workers
  (each renders whole steps) cannot, and a resumed run continues with the indices an
  uninterrupted one would use.
- **Delta**: the recipe's own delta, or a linear ramp to it (:class:`DeltaRamp`).
  Validation always uses the recipe's delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from doppelgen.format.limits import MAX_PAIRS
from doppeltrain.data.datasets import DataError, held_out_shards, n_val_shards, recipe_digest


@dataclass(frozen=True)
class IndexPlan:
    """The index layout of one streamed recipe in one run."""

    pairs_per_shard: int
    held: tuple[int, ...]  # held-out shards, sorted
    share: int  # pairs of this recipe in each rank's batch
    world_size: int

    def indices_at(self, positions: np.ndarray) -> np.ndarray:
        """The training indices at ``positions``: each skips the held-out shards below it.
        The k-th held-out shard (sorted) starts at training position ``start - k * size``."""
        positions = np.asarray(positions, dtype=np.int64)
        size = self.pairs_per_shard
        starts = np.asarray(self.held, dtype=np.int64) * size - np.arange(len(self.held), dtype=np.int64) * size
        indices = positions + size * np.searchsorted(starts, positions, side="right")
        if indices.size and int(indices.max()) >= MAX_PAIRS:
            raise DataError(f"the run needs pair index {int(indices.max())}: more than the {MAX_PAIRS} a recipe addresses")
        return indices

    def step_positions(self, step: int, rank: int) -> np.ndarray:
        first = (step * self.world_size + rank) * self.share
        return np.arange(first, first + self.share, dtype=np.int64)

    def train_indices(self, step: int, rank: int) -> np.ndarray:
        """The indices rank ``rank`` trains on at step ``step`` (global, from the run's start)."""
        return self.indices_at(self.step_positions(step, rank))

    def validation_indices(self) -> np.ndarray:
        size = self.pairs_per_shard
        if not self.held:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(shard * size, (shard + 1) * size, dtype=np.int64) for shard in self.held])

    def train_ranges(self, n_steps: int) -> list[list[int]]:
        """The indices ``n_steps`` steps train on (all ranks), as ``[start, stop)`` ranges."""
        n_positions = n_steps * self.world_size * self.share
        if n_positions == 0:
            return []
        ranges, start, next_position = [], 0, 0
        for shard in self.held:
            stop = min(shard * self.pairs_per_shard, start + n_positions - next_position)
            if stop > start:
                ranges.append([start, stop])
                next_position += stop - start
            if next_position == n_positions:
                return ranges
            start = (shard + 1) * self.pairs_per_shard
        last = start + n_positions - next_position
        if last > MAX_PAIRS:
            raise DataError(f"the run needs pair index {last - 1}: more than the {MAX_PAIRS} a recipe addresses")
        ranges.append([start, last])
        return ranges

    def validation_ranges(self) -> list[list[int]]:
        return merged_ranges([[shard * self.pairs_per_shard, (shard + 1) * self.pairs_per_shard] for shard in self.held])


def merged_ranges(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted ``[start, stop)`` ranges with touching ones joined."""
    merged: list[list[int]] = []
    for start, stop in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1][1] = stop
        else:
            merged.append([start, stop])
    return merged


def index_plan(recipe_sha256: str, n_shards: int, pairs_per_shard: int, val_shards: float, seed: int, share: int, world_size: int) -> IndexPlan:
    """The plan of a recipe (its ``sha256``): its frozen render's held-out shards, and
    ``share`` pairs per rank and step."""
    held = held_out_shards(n_shards, n_val_shards(n_shards, val_shards), seed, recipe_digest(recipe_sha256))
    return IndexPlan(pairs_per_shard, tuple(sorted(held)), share, world_size)


def batch_shares(batch_size: int, n_sources: int) -> list[int]:
    """Rows of each source in a rank's batch: equal shares, the first sources one more
    when the batch does not divide."""
    base, extra = divmod(batch_size, n_sources)
    return [base + (1 if source < extra else 0) for source in range(n_sources)]


def render_chunk(shares: list[int], largest: int | None) -> int:
    """Pairs per kernel call: every call of a run has this many pairs (a short one is
    padded), so the kernel compiles once. The smallest share split into as few equal calls
    of at most ``largest`` pairs as it takes (None: one call)."""
    smallest = min(shares)
    if largest is None or smallest <= largest:
        return smallest
    return math.ceil(smallest / math.ceil(smallest / largest))


@dataclass(frozen=True)
class DeltaRamp:
    """Delta over a run: linear from ``start`` at step 0 to the recipe's delta at
    ``fraction`` of the run's steps, the recipe's delta from then on. ``start`` None: the
    recipe's delta throughout (the paper's)."""

    start: float | None = None
    fraction: float = 0.0

    def at(self, step: int, total_steps: int, recipe_delta: float) -> float:
        if self.start is None:
            return recipe_delta
        ramp_steps = self.fraction * total_steps
        if step >= ramp_steps:
            return recipe_delta
        # Rounded so that `doppelgen render --delta` can render the same pairs again.
        return round(self.start + (recipe_delta - self.start) * step / ramp_steps, 6)
