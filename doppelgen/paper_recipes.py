"""Recipe files: the paper's frozen datasets under ``manifests/``, and reading any recipe.

A recipe file is docs/FORMAT.md's ``recipe`` object on its own (``Recipe.to_dict()``); a
finished dataset's ``manifest.json`` holds one too, so either can be given to
``doppelgen render --manifest``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from doppelgen.format import MAX_MANIFEST_BYTES, FormatError, dataset_kind, read_json_file
from doppelgen.recipe import Recipe, RecipeError, make_recipe

# The paper's configurations (Cherep & Singh, ICLR 2025): three synths at delta 0.25,
# and the voice synth over the delta sweep. All share seed 0, so the voice sweep draws
# the same base sounds at every delta and only the perturbation size changes.
PAPER_SHARDS = 512
PAPER_PAIRS_PER_SHARD = 1000
PAPER_DELTA = 0.25
DELTA_SWEEP = (0.01, 0.05, 0.1, 0.25, 0.5)
MANIFESTS_DIR = Path(__file__).resolve().parent.parent / "manifests"


def sweep_name(delta: float) -> str:
    """File stem of a voice delta-sweep recipe; delta 0.25 is ``voice`` itself."""
    return "voice" if delta == PAPER_DELTA else f"voice-delta{delta:g}"


def paper_recipes() -> dict[str, Recipe]:
    """``{file stem: recipe}`` of every dataset the paper trains on."""
    sizes = {"n_shards": PAPER_SHARDS, "pairs_per_shard": PAPER_PAIRS_PER_SHARD}
    recipes = {name: make_recipe(name, delta=PAPER_DELTA, **sizes) for name in ("voice", "voicefm", "parametric")}
    for delta in DELTA_SWEEP:
        recipes.setdefault(sweep_name(delta), make_recipe("voice", delta=delta, **sizes))
    return recipes


def recipe_text(recipe: Recipe) -> str:
    """The bytes of a recipe file: indented, keys in ``to_dict`` order, newline-terminated."""
    return json.dumps(recipe.to_dict(), indent=2) + "\n"


def write_paper_recipes(folder: str | os.PathLike = MANIFESTS_DIR) -> list[Path]:
    """(Re)write ``folder/NAME.json`` for every paper recipe; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, recipe in paper_recipes().items():
        path = folder / f"{name}.json"
        path.write_text(recipe_text(recipe), encoding="utf-8")
        paths.append(path)
    return paths


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read a recipe file, or the recipe of a ``manifest.json``; a one-line RecipeError
    names the file when it is missing, not JSON, or not a valid recipe."""
    path = Path(path)
    try:
        data = read_json_file(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except OSError as error:
        raise RecipeError(f"{path}: unreadable recipe ({error.strerror or error})") from None
    except FormatError as error:
        raise RecipeError(f"{path}: unreadable recipe ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
        data = data["recipe"]  # a finished dataset's manifest
    if isinstance(data, dict) and not (kind := dataset_kind(data)).renders_again:
        raise RecipeError(f"{path}: a dataset {kind.made_by}, not a synth recipe")
    try:
        return Recipe.from_dict(data)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    except (TypeError, AttributeError) as error:
        raise RecipeError(f"{path}: malformed recipe ({error})") from None


if __name__ == "__main__":  # python -m doppelgen.paper_recipes: regenerate manifests/
    for written in write_paper_recipes():
        print(written)
