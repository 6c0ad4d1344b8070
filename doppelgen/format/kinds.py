"""The kinds of pair dataset a manifest may describe, one row each: ``synthesized`` (a
synth recipe, ``doppelgen render``) and ``packed`` (crops of real recordings, ``doppelgen
pack``).

A recipe names its kind by the object that says where its pairs came from (``synth`` or
``source``); ``format.check_manifest`` puts the row on the typed ``Manifest``. Readers ask
the row what to expect of the shards (full shards, view bounds, extra sample fields),
whether the recipe renders again, and how to describe the data; they never branch on the
raw recipe. To add a kind, add its row here (with its writer, as ``doppelgen/pack/`` is
packed's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from doppelgen.paper import PAPER


@dataclass(frozen=True)
class DatasetKind:
    """What readers and publishers need to know of one kind of pair dataset."""

    name: str
    recipe_field: str  # the recipe object that says where the pairs came from
    described: str  # `doppelgen info`'s word for it
    made_by: str  # how its pairs were made, after "this dataset was"
    renders_again: bool  # its recipe is a synth ``Recipe``: `render --manifest` and `verify --rerender` take it
    full_shards: bool  # every shard holds pairs_per_shard pairs (else as many as the manifest records)
    bounded_views: bool  # the views' parameters lie in [eps, 1]
    layered_params: bool  # n_layers > 1 gives each sample JSON a ``layers`` list of params
    compares_params: bool  # a pair's params a and b are two points of one space, worth comparing
    params_meaning: str  # what a sample's params are, in a line of `doppelgen info`
    card_params_meaning: str  # the same, in the dataset card
    card_recipe_note: str  # what the recipe in the card vouches for
    license: str  # the dataset card's license unless one is given
    tags: tuple[str, ...]  # the dataset card's tags beside audio, contrastive-learning and webdataset
    card_title: Callable[[dict[str, Any]], str]  # the card's title from the recipe
    card_summary: Callable[[dict[str, Any], int], str]  # the card's opening, from the recipe and the skipped files
    sample_fields: tuple[tuple[str, str], ...] = ()  # sample JSON fields beyond docs/FORMAT.md's, with their Hub dtype
    required_text_fields: tuple[str, ...] = ()  # of those, the text ones every sample must hold


def _synth_title(recipe: dict[str, Any]) -> str:
    return f"Synthetic audio doppelgängers: {recipe.get('synth', {}).get('name', '?')}, delta {recipe.get('delta')}"


def _synth_summary(recipe: dict[str, Any], skipped: int) -> str:
    return (
        f"Pairs of {recipe.get('duration')} s sounds at {recipe.get('sample_rate')} Hz from the SynthAX "
        f"`{recipe.get('synth', {}).get('name', '?')}` synthesizer: each pair draws random synth parameters and renders "
        f"two *doppelgängers* whose parameters are the draw plus independent Gaussian noise of scale delta = "
        f"{recipe.get('delta')} (in normalized [0, 1] parameter space). Contrastive training on such pairs learns audio "
        f"representations ({PAPER})."
    )


def _packed_title(recipe: dict[str, Any]) -> str:
    return f"Real-audio pairs ({recipe['source'].get('name', 'recordings')})"


def _packed_summary(recipe: dict[str, Any], skipped: int) -> str:
    if recipe.get("n_layers", 1) > 1:
        how = f"each view is the sum of {recipe.get('n_layers')} random 1 s segments of one recording, renormalized"
    elif recipe.get("temporal_jitter"):
        how = "the two views are two independent random crops of the same recording"
    else:
        how = "both views are the same random crop (training augmentations make them differ)"
    unreadable = f" {skipped} unreadable recordings were skipped (listed in `manifest.json`)." if skipped else ""
    return (
        f"Pairs of {recipe.get('duration')} s crops of real recordings at {recipe.get('sample_rate')} Hz, made by "
        f"`doppelgen pack` as the real-data baseline: {how}.{unreadable} The recordings' own license applies."
    )


SYNTHESIZED = DatasetKind(
    name="synthesized",
    recipe_field="synth",
    described="synthetic",
    made_by="rendered from a synth recipe",
    renders_again=True,
    full_shards=True,
    bounded_views=True,
    layered_params=True,
    compares_params=True,
    params_meaning="synth parameters",
    card_params_meaning="synth parameters in normalized [0, 1] space, in the order of `manifest.json`'s `record.param_names`",
    card_recipe_note=(
        "Everything that determines the bytes of every pair; rendering it again with the same software on\n"
        "the same platform gives byte-identical shards (`doppelgen verify --rerender N` checks this)."
    ),
    license="cc-by-4.0",
    tags=("synthetic", "synthesizer"),
    card_title=_synth_title,
    card_summary=_synth_summary,
)
PACKED = DatasetKind(
    name="packed",
    recipe_field="source",
    described="packed real audio",
    made_by="packed from recordings",
    renders_again=False,
    full_shards=False,
    bounded_views=False,
    layered_params=False,  # n_layers sums segments of a recording; params stay the crops
    compares_params=False,
    params_meaning="crop start times",
    card_params_meaning="crop start times in seconds; `source` names the recording",
    card_recipe_note="How the recordings became pairs; packing the same recordings with it again gives the same shards.",
    license="other",  # packed recordings keep their source's license, which this tool cannot know
    tags=("real-audio",),
    card_title=_packed_title,
    card_summary=_packed_summary,
    sample_fields=(("source", "string"), ("file_index", "int64")),
    required_text_fields=("source",),
)
DATASET_KINDS: dict[str, DatasetKind] = {kind.name: kind for kind in (SYNTHESIZED, PACKED)}


def dataset_kind(recipe: dict[str, Any]) -> DatasetKind:
    """The kind of a manifest's (or a recipe file's) recipe object: the kind whose
    ``recipe_field`` it alone holds; a recipe that holds none, or several, is a synth
    recipe (``Recipe.from_dict`` then judges it)."""
    holding = [kind for kind in DATASET_KINDS.values() if kind.recipe_field in recipe]
    return holding[0] if len(holding) == 1 else SYNTHESIZED
