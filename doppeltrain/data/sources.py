"""What a run trains on: frozen datasets (folders, URLs) and streamed recipes (JSON files), mixed.

``find_sources`` reads them all before any work (one-line DataError otherwise);
``make_run_loaders`` builds one rank's training and validation loaders:

- frozen datasets only: the shard pipeline (``loader.make_loader``), exactly as before;
- recipes only: the streamed pipeline (``streamed``);
- both: each rank batch holds equal shares, the frozen datasets together being one
  source and each recipe another (``stream_plan.batch_shares``), rows in that order.
  Validation reads the frozen held-out shards, then each recipe's held-out pairs.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from doppelgen.render.jax_runtime import use_cpu_only
from doppeltrain.config import TrainConfig
from doppeltrain.data.batches import PairBatch
from doppeltrain.data.datasets import DataError, DatasetInfo, discover, manifest_digests, split_shards
from doppeltrain.data.loader import PairLoader, _pin_memory, make_loader
from doppeltrain.data.order import SharedEpoch
from doppeltrain.data.stream_plan import DeltaRamp, batch_shares, index_plan
from doppeltrain.data.streamed import (
    TRAIN,
    VALIDATE,
    RecipeSource,
    Stream,
    StreamedLoader,
    StreamedPairs,
    chunk_for,
    is_recipe_location,
    read_recipe_source,
    render_place,
    shared_state,
    validation_batch_count,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSources:
    """The frozen datasets and the recipes of a run, each read and checked."""

    frozen: list[DatasetInfo]
    recipes: list[RecipeSource]

    @property
    def n_samples(self) -> int:
        """The run's clip length in samples (``find_sources`` checked that all agree)."""
        return self.frozen[0].n_samples if self.frozen else self.recipes[0].recipe.n_samples

    def digests(self) -> dict[str, str]:
        """``{location: digest}`` a checkpoint keeps, so a resume can tell the data changed:
        each manifest's sha256, then each recipe's (``recipe:SHA256``)."""
        digests = manifest_digests((info.location, info.manifest) for info in self.frozen)
        digests.update({source.location: source.digest for source in self.recipes})
        return digests


def find_sources(locations: Sequence[str], sample_rate: int) -> RunSources:
    """Datasets and recipes of a run (``is_recipe_location`` tells them apart); one-line
    DataError for the first that cannot be used, or when their clip lengths differ."""
    if not locations:
        raise DataError("no datasets given")
    frozen_locations = [str(location) for location in locations if not is_recipe_location(str(location))]
    recipes = [read_recipe_source(str(location), sample_rate) for location in locations if is_recipe_location(str(location))]
    frozen = discover(frozen_locations, sample_rate) if frozen_locations else []
    first_of: dict[str, str] = {}
    for source in recipes:
        if source.sha256 in first_of:
            # Both would render the same indices: every pair twice in a batch.
            raise DataError(f"{first_of[source.sha256]} and {source.location} are the same recipe; give it once")
        first_of[source.sha256] = source.location
    for info in frozen:
        same = first_of.get(info.manifest.recipe_sha256)
        if same is not None:
            logger.warning("%s holds the first pairs of %s: the run trains on some pairs twice", info.location, same)
    lengths = {info.n_samples for info in frozen} | {source.recipe.n_samples for source in recipes}
    if len(lengths) > 1:
        # Batches stack clips, so a run reads one clip length.
        raise DataError(f"datasets differ in clip length ({', '.join(str(n) for n in sorted(lengths))} samples)")
    return RunSources(frozen, recipes)


@dataclass
class RunLoaders:
    """One rank's loaders, and what config.json records of the streamed recipes."""

    train: Any  # len(), iter() -> PairBatch, skipped, num_workers
    validation: Any  # None: no validation on this rank
    streams: list[dict] = field(default_factory=list)
    streamed: StreamedLoader | None = None

    def close(self) -> None:
        if self.streamed is not None:
            self.streamed.close()


def make_run_loaders(
    sources: RunSources,
    cfg: TrainConfig,
    *,
    epoch_ref: SharedEpoch,
    rank: int,
    world_size: int,
    device: torch.device,
    validate: bool,
) -> RunLoaders:
    """The training loader of rank ``rank`` and, when ``validate``, the validation loader
    (see the module docstring)."""
    train_shards, val_shards = split_shards(sources.frozen, cfg.data.val_shards, cfg.seed) if sources.frozen else ([], [])
    if not sources.recipes:
        if cfg.data.delta_from is not None:
            raise DataError("--delta-from ramps the delta of streamed recipes, and no recipe is given")
        train = make_loader(train_shards, cfg, train=True, epoch_ref=epoch_ref, rank=rank, world_size=world_size)
        validation = make_loader(val_shards, cfg, train=False, epoch_ref=epoch_ref) if val_shards and validate else None
        return RunLoaders(train, validation)

    shares = batch_shares(cfg.data.batch_size, len(sources.recipes) + (1 if sources.frozen else 0))
    frozen_share, stream_shares = (shares[0], shares[1:]) if sources.frozen else (0, shares)
    if min(shares) < 1:
        raise DataError(f"a batch of {cfg.data.batch_size} cannot give each of the run's {len(shares)} sources a row")
    steps = steps_per_epoch(cfg, sum(shard.n_pairs for shard in train_shards), frozen_share, world_size)
    total_steps = cfg.epochs * steps
    place = render_place(cfg.data.render_on, device)
    ramp = DeltaRamp(cfg.data.delta_from, cfg.data.delta_ramp)
    streams, records = [], []
    for source, share in zip(sources.recipes, stream_shares):
        recipe = source.recipe
        plan = index_plan(recipe.sha256, recipe.n_shards, recipe.pairs_per_shard, cfg.data.val_shards, cfg.seed, share, world_size)
        if cfg.data.val_shards > 0 and not plan.held:
            logger.warning("%s: only %d shard; none held out for validation", source.location, recipe.n_shards)
        streams.append(Stream(recipe, plan))
        records.append(stream_record(source, plan, total_steps, ramp, place))
    pairs = StreamedPairs(
        streams, rank=rank, steps_per_epoch=steps, total_steps=total_steps, ramp=ramp,
        val_batch_size=cfg.data.batch_size, chunk=chunk_for(place, stream_shares), state=shared_state(),
    )
    n_workers = cfg.data.workers if place == "cpu" else 0
    if place == "cpu" and n_workers == 0:
        use_cpu_only()  # rendering here, on the CPU, whatever GPU JAX would find
    streamed = StreamedLoader(pairs, n_workers, _pin_memory(cfg.device))
    train: Any = StreamedTrain(streamed, steps, epoch_ref)
    if sources.frozen:
        frozen_cfg = copy.deepcopy(cfg)
        frozen_cfg.data.batch_size, frozen_cfg.steps_per_epoch = frozen_share, steps
        train = MixedTrain(make_loader(train_shards, frozen_cfg, train=True, epoch_ref=epoch_ref, rank=rank, world_size=world_size), train)
    validation = None
    if validate:
        parts = []
        if val_shards:
            parts.append(make_loader(val_shards, cfg, train=False, epoch_ref=epoch_ref))
        n_streamed = validation_batch_count(streams, cfg.data.batch_size)
        if n_streamed:
            parts.append(StreamedValidation(streamed, n_streamed))
        validation = ChainedValidation(parts) if parts else None
    return RunLoaders(train, validation, records, streamed)


def steps_per_epoch(cfg: TrainConfig, frozen_pairs: int, frozen_share: int, world_size: int) -> int:
    """Steps of an epoch with streamed recipes: ``--steps-per-epoch``, else
    ``--pairs-per-epoch`` // the global batch, else (``all``) one pass over the frozen
    training pairs at their share of each batch. A stream alone has no end to pass over."""
    global_batch = cfg.data.batch_size * world_size
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch
    if cfg.pairs_per_epoch is not None:
        if cfg.pairs_per_epoch < global_batch:
            raise DataError(f"--pairs-per-epoch {cfg.pairs_per_epoch} does not fill one global batch of {global_batch}")
        return cfg.pairs_per_epoch // global_batch
    if frozen_share == 0:
        raise DataError("--pairs-per-epoch all means one pass over the frozen datasets; a recipe has no end: give a number")
    steps = frozen_pairs // (frozen_share * world_size)
    if steps == 0:
        raise DataError(f"{frozen_pairs} frozen training pairs do not fill their share of one global batch ({frozen_share * world_size})")
    return steps


def stream_record(source: RecipeSource, plan, total_steps: int, ramp: DeltaRamp, place: str) -> dict:
    """What config.json says of a streamed recipe: enough to render, freeze and verify any
    pair the run trained or validated on (``doppelgen render`` of the recipe holds pair i
    at index i; a ramped step's delta is ``delta_schedule``'s)."""
    recipe = source.recipe
    schedule = None
    if ramp.start is not None:
        schedule = {
            "kind": "linear", "from": ramp.start, "to": recipe.delta, "fraction": ramp.fraction,
            "until_step": int(-(-ramp.fraction * total_steps // 1)),
        }
    return {
        "recipe": source.location,
        "recipe_sha256": source.sha256,
        "synth": recipe.synth.name,
        "delta": recipe.delta,
        "seed": recipe.seed,
        "pairs_per_rank_batch": plan.share,
        "world_size": plan.world_size,
        "rendered_on": place,
        "train_indices": plan.train_ranges(total_steps),
        "validation_indices": plan.validation_ranges(),
        "delta_schedule": schedule,
    }


class StreamedTrain:
    """The training face of a StreamedLoader: ``len()`` batches of the current epoch."""

    def __init__(self, streamed: StreamedLoader, steps: int, epoch_ref: SharedEpoch):
        self.streamed, self.steps, self.epoch_ref = streamed, steps, epoch_ref

    skipped = 0  # rendered pairs are never unreadable; non-finite ones are redrawn

    @property
    def num_workers(self) -> int:
        return self.streamed.n_workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch_ref.set_value(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[PairBatch]:
        return self.streamed.batches(TRAIN, self.epoch_ref.get_value(), self.steps)


class StreamedValidation:
    """The validation face of a StreamedLoader: every recipe's held-out pairs, once."""

    def __init__(self, streamed: StreamedLoader, n_batches: int):
        self.streamed, self.n_batches = streamed, n_batches

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[PairBatch]:
        return self.streamed.batches(VALIDATE, 0, self.n_batches)


class MixedTrain:
    """Frozen rows, then streamed rows, in every batch."""

    def __init__(self, frozen: PairLoader, streamed: StreamedTrain):
        self.frozen, self.streamed = frozen, streamed

    @property
    def skipped(self) -> int:
        return self.frozen.skipped

    @property
    def num_workers(self) -> int:
        return self.frozen.num_workers + self.streamed.num_workers

    def set_epoch(self, epoch: int) -> None:
        self.streamed.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.streamed)

    def __iter__(self) -> Iterator[PairBatch]:
        for frozen, streamed in zip(self.frozen, self.streamed):
            yield PairBatch(torch.cat([frozen.a, streamed.a]), torch.cat([frozen.b, streamed.b]), frozen.keys + streamed.keys)


class ChainedValidation:
    """Validation loaders one after the other, in a fixed order."""

    def __init__(self, parts: list):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def __iter__(self) -> Iterator[PairBatch]:
        return itertools.chain.from_iterable(self.parts)
