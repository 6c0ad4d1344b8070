"""render_dataset: the recipe's job, handed to a distributor that claims the output folder, renders the missing shards and writes the manifest.

The wiring only, in img2dataset's shape: the recipe says what to make, a
``shard_runs.RenderJob`` says how a run of shards is made, and a distributor
(``distributors.DISTRIBUTORS``: ``local`` or ``ray``) checks what it needs, claims the
folder (``RenderJob.claim``: one recipe per folder), renders runs of shards
(``RenderJob.render``) and finishes with ``manifest.json`` where they ran
(``RenderJob.finish``).
"""

from __future__ import annotations

import os
from typing import Callable

from doppelgen.files import workers_problem
from doppelgen.recipe import Recipe
from doppelgen.render.distributors import DISTRIBUTORS, DistributorError, RayOptions
from doppelgen.render.shard_runs import DatasetError, RenderJob, RenderSummary, parse_shard_range

DEFAULT_BATCH_SIZE = 256

__all__ = ["DEFAULT_BATCH_SIZE", "DatasetError", "RenderSummary", "render_dataset"]


def render_dataset(
    recipe: Recipe,
    out: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    shard_range: str | range | None = None,
    overwrite: bool = False,
    progress: bool = True,
    distributor: str = "local",
    ray_options: RayOptions = RayOptions(),
    warn: Callable[[str], None] = lambda message: None,
) -> RenderSummary:
    """Render the shards of ``recipe`` that ``out`` lacks, then, once every shard of the
    recipe is complete, write ``manifest.json``. Safe to re-run after any interruption.
    ``out`` is a folder, or a ``file://``, ``s3://`` or ``gs://`` URL (``storage``).

    ``distributor`` says where the shards are rendered: ``local`` (this process,
    ``workers`` encoding processes) or ``ray`` (tasks on a Ray cluster, cut and sized by
    ``ray_options``; OUT must then be a place every node reaches). The bytes are the same.
    ``warn`` gets one-line notes (a request the cluster cannot meet yet)."""
    recipe.validate()
    if batch_size < 1:
        raise DatasetError(f"batch size must be >= 1, got {batch_size}")
    if workers is not None and workers_problem(workers, "--workers"):
        raise DatasetError(workers_problem(workers, "--workers"))
    if distributor not in DISTRIBUTORS:
        raise DistributorError(f"unknown distributor {distributor!r}: choose {' or '.join(DISTRIBUTORS)}")
    shards = shard_range if isinstance(shard_range, range) else parse_shard_range(shard_range, recipe.n_shards)
    job = RenderJob(recipe=recipe, out=out, batch_size=batch_size, workers=workers, overwrite=overwrite)
    return DISTRIBUTORS[distributor](job, shards, ray_options, progress, warn)
