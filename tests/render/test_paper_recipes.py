"""The paper's recipes under manifests/: what they say, and that each renders as it says.

A pair is a function of the seed and its index only, so rendering shard 0 of a recipe
with fewer pairs per shard gives exactly the first pairs of the full 512 x 1000 dataset.
Each synth costs tens of seconds of JAX compilation on a cold cache; the delta sweep
reuses the voice kernel the session fixture compiled (same batch shape), so it is cheap.
"""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from doppelgen.format import iter_shard_pairs, read_manifest, shard_name
from doppelgen.paper_recipes import DELTA_SWEEP, MANIFESTS_DIR, load_recipe, paper_recipes, recipe_text, sweep_name
from doppelgen.publish.shard_checks import ShardExpectation, check_shard
from doppelgen.recipe import RecipeError
from doppelgen.render.loop import render_dataset
from doppelgen.render.synths import param_layout
from doppelgen.synths import SYNTHS

# Small enough to be cheap, and the fixture's batch shape so voice reuses its kernel.
PAIRS = 8


def render_first_shard(recipe, out):
    small = dataclasses.replace(recipe, pairs_per_shard=PAIRS)
    render_dataset(small, out, batch_size=PAIRS, workers=0, shard_range="0:1", progress=False)
    return small


def check_against_recipe(out, recipe) -> list[str]:
    """verify's shard checks, with the expectations the recipe itself implies."""
    expectation = ShardExpectation(
        index=0, codec=recipe.codec, sample_rate=recipe.sample_rate, n_samples=recipe.n_samples,
        first_pair=0, n_pairs=PAIRS, seed=recipe.seed, n_params=len(param_layout(recipe)),
        n_layers=recipe.n_layers, view_bounds=(float(np.float32(recipe.eps)), 1.0),
    )
    problems, pairs = check_shard(str(out), expectation)
    assert pairs == PAIRS
    return problems


def test_the_folder_holds_exactly_the_paper_recipes():
    recipes = paper_recipes()
    assert sorted(p.stem for p in MANIFESTS_DIR.glob("*.json")) == sorted(recipes)
    for name, recipe in recipes.items():
        path = MANIFESTS_DIR / f"{name}.json"
        assert path.read_text(encoding="utf-8") == recipe_text(recipe), f"{path} is stale: python -m doppelgen.paper_recipes"
        assert load_recipe(path) == recipe


def test_the_recipes_are_the_papers_configurations():
    recipes = paper_recipes()
    for name in ("voice", "voicefm", "parametric"):
        recipe = recipes[name]
        assert (recipe.synth.name, recipe.delta, recipe.n_shards, recipe.pairs_per_shard) == (name, 0.25, 512, 1000)
        assert (recipe.sample_rate, recipe.duration, recipe.control_rate, recipe.eps) == (16000, 1.0, 480, 1e-6)
    assert recipes["parametric"].synth.args == SYNTHS["parametric"].defaults == {"sine": 2, "square_saw": 2, "fm_sine": 1, "fm_square_saw": 1}
    sweep = [recipes[sweep_name(delta)] for delta in DELTA_SWEEP]
    assert [r.delta for r in sweep] == [0.01, 0.05, 0.1, 0.25, 0.5]
    assert all(dataclasses.replace(r, delta=0.25) == recipes["voice"] for r in sweep)


def test_load_recipe_reads_manifests_and_refuses_what_is_not_a_recipe(voice_shards, voice_recipe, tmp_path):
    assert load_recipe(voice_shards / "manifest.json") == voice_recipe
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "packed.json").write_text(json.dumps({"recipe": {"format": 1, "source": {}, "sample_rate": 16000}}))
    (tmp_path / "odd.json").write_text(json.dumps({"synth": "voice", "delta": -1}))
    for name, message in [("missing.json", "no such recipe file"), ("bad.json", "unreadable recipe"),
                          ("packed.json", "a dataset packed from recordings, not a synth recipe"), ("odd.json", r"delta must lie in \[0, 4\], got -1")]:
        with pytest.raises(RecipeError, match=message):
            load_recipe(tmp_path / name)


def test_voice_renders_from_its_recipe_file_on_the_command_line(tmp_path):
    from doppelgen.cli import app  # the lead's render command takes --manifest

    out = tmp_path / "voice"
    args = ["render", str(out), "--manifest", str(MANIFESTS_DIR / "voice.json"), "--pairs-per-shard", str(PAIRS),
            "--shard-range", "0:1", "--workers", "0", "--batch-size", str(PAIRS), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    recipe = dataclasses.replace(load_recipe(MANIFESTS_DIR / "voice.json"), pairs_per_shard=PAIRS)
    assert check_against_recipe(out, recipe) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["voicefm", "parametric"])
def test_each_synth_renders_its_first_shard_as_the_recipe_says(name, tmp_path):
    recipe = render_first_shard(load_recipe(MANIFESTS_DIR / f"{name}.json"), tmp_path)
    assert check_against_recipe(tmp_path, recipe) == []


@pytest.mark.parametrize("delta", [d for d in DELTA_SWEEP if d != 0.25])
def test_the_delta_sweep_perturbs_the_same_base_sounds(delta, voice_shards, tmp_path):
    recipe = render_first_shard(load_recipe(MANIFESTS_DIR / f"{sweep_name(delta)}.json"), tmp_path)
    assert check_against_recipe(tmp_path, recipe) == []
    swept = [p.meta["params"] for p in iter_shard_pairs(tmp_path / shard_name(0))]
    # The session dataset is voice at delta 0.25 with seed 0: the same base draws.
    reference = [p.meta["params"] for p in iter_shard_pairs(voice_shards / shard_name(0))]
    assert read_manifest(voice_shards).recipe["delta"] == 0.25
    assert [p["base"] for p in swept] == [p["base"] for p in reference]

    def spread(params):  # mean |view - base|, which grows with delta until clipping bites
        return np.mean([np.abs(np.subtract(p[v], p["base"])).mean() for p in params for v in ("a", "b")])

    assert (spread(swept) < spread(reference)) == (delta < 0.25)
    assert spread(swept) < 2 * delta
