"""The recipe: everything that determines the bytes of every pair (docs/FORMAT.md ``recipe``).

The paper's defaults (``docs/REFERENCE.md``) live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from doppelgen.console import InputError
from doppelgen.format import CODECS, FORMAT_VERSION, recipe_sha256
from doppelgen.format.limits import (  # noqa: F401  (re-exported: the recipe's bounds)
    MAX_CLIP_SAMPLES,
    MAX_PAIRS,
    MAX_SHARD_SAMPLES,
    RECIPE_BOUNDS,
    recipe_number_problem,
    recipe_size_problem,
    shown,
)
from doppelgen.synths import SYNTHS, synth_args_problem

# How a pair's keys are derived; recorded in every manifest so a reader knows.
RNG_DERIVATION = (
    "root = key(seed); k = fold_in(fold_in(root, index), attempt); "
    "per layer l: kl = fold_in(k, l); base = synth.init(fold_in(kl, 0)); "
    "view a noise = normal(fold_in(kl, 1)); view b noise = normal(fold_in(kl, 2)); "
    "attempt starts at 0 and grows only while a render is non-finite"
)
PRNG_IMPL = "threefry2x32"
PRNG_FLAGS = {"jax_threefry_partitionable": True}


class RecipeError(InputError):
    """A recipe value is invalid; the message is one line naming it."""


@dataclass(frozen=True)
class SynthSpec:
    name: str = "voice"
    # Constructor arguments (e.g. oscillator counts) as sorted pairs, so a recipe is hashable.
    arg_items: tuple[tuple[str, int], ...] = ()

    @property
    def args(self) -> dict[str, int]:
        return dict(self.arg_items)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": self.args}


@dataclass(frozen=True)
class Recipe:
    synth: SynthSpec = field(default_factory=SynthSpec)
    sample_rate: int = 16000
    duration: float = 1.0
    control_rate: int = 480
    eps: float = 1e-6
    delta: float = 0.25
    seed: int = 0
    n_layers: int = 1
    pairs_per_shard: int = 1000
    n_shards: int = 512
    codec: str = "flac"

    @property
    def n_pairs(self) -> int:
        return self.pairs_per_shard * self.n_shards

    @property
    def n_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))

    @property
    def sha256(self) -> str:
        """The recipe's identity, the sha256 of :meth:`to_dict`'s canonical JSON: every
        shard's stats file and the folder's claim carry it."""
        return recipe_sha256(self.to_dict())

    def shard_pairs(self, shard: int) -> range:
        """The global pair indices shard ``shard`` holds."""
        start = shard * self.pairs_per_shard
        return range(start, min(start + self.pairs_per_shard, self.n_pairs))

    def validate(self) -> "Recipe":
        """The recipe itself, if every value lies in its range (``RECIPE_BOUNDS``) and the
        values fit together; RecipeError naming the first that does not."""
        problem = synth_args_problem(self.synth.name, self.synth.args)  # the synth registry's row
        if problem:
            raise RecipeError(problem)
        for name in RECIPE_BOUNDS:
            problem = recipe_number_problem(name, getattr(self, name))
            if problem:
                raise RecipeError(problem)
        if self.codec not in CODECS:
            raise RecipeError(f"unknown codec {shown(self.codec)}: expected one of {', '.join(CODECS)}")
        problem = recipe_size_problem(self.sample_rate, self.duration, self.pairs_per_shard, self.n_shards)
        if problem:
            raise RecipeError(problem)
        if self.control_rate > self.sample_rate:
            raise RecipeError(f"control rate {self.control_rate} Hz exceeds the sample rate {self.sample_rate} Hz")
        # SynthAX renders ceil(duration * rate) samples, docs/FORMAT.md wants round().
        if math.ceil(self.duration * self.sample_rate) != self.n_samples:
            raise RecipeError(f"duration {self.duration} s at {self.sample_rate} Hz is not a whole number of samples")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``recipe`` object."""
        return {
            "format": FORMAT_VERSION,
            "synth": self.synth.to_dict(),
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "control_rate": self.control_rate,
            "eps": self.eps,
            "delta": self.delta,
            "seed": self.seed,
            "n_layers": self.n_layers,
            "pairs_per_shard": self.pairs_per_shard,
            "n_shards": self.n_shards,
            "codec": self.codec,
            "rng": {"derivation": RNG_DERIVATION, "impl": PRNG_IMPL, "flags": dict(PRNG_FLAGS)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        """Read a manifest's ``recipe`` (or a recipe file); refuses unknown versions and fields."""
        if not isinstance(data, dict):
            raise RecipeError("a recipe must be a JSON object")
        data = dict(data)
        version = data.pop("format", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise RecipeError(f"unknown recipe format version {shown(version)} (this doppelgen writes {FORMAT_VERSION})")
        rng = data.pop("rng", None)
        if rng is not None and (not isinstance(rng, dict) or rng.get("impl") != PRNG_IMPL or rng.get("flags") != PRNG_FLAGS):
            raise RecipeError(f"recipe asks for PRNG {shown(rng)}; this doppelgen uses {PRNG_IMPL} {PRNG_FLAGS}")
        synth = data.pop("synth", {"name": "voice"})
        if isinstance(synth, str):
            synth = {"name": synth}
        if not isinstance(synth, dict):
            raise RecipeError(f"recipe field synth must be an object, got {shown(synth)}")
        return make_recipe(synth=synth.get("name", "voice"), synth_args=synth.get("args") or {}, **data)


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Recipe values in one canonical type, so that 1 and 1.0 give the same recipe hash."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RecipeError(f"recipe field {name} must be {kind.__name__}, got {shown(value)}")
    if kind is str:
        if not isinstance(value, str):
            raise RecipeError(f"recipe field {name} must be a string, got {shown(value)}")
        return value
    if isinstance(value, str):
        raise RecipeError(f"recipe field {name} must be a number, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(f"recipe field {name} must be finite, got {shown(value)}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise RecipeError(f"recipe field {name} must be a whole number, got {shown(value)}")
        return int(value)
    if isinstance(value, int) and value.bit_length() > 1000:  # float() would overflow
        raise RecipeError(f"recipe field {name} must be finite, got {shown(value)}")
    return float(value)


def make_recipe(synth: str = "voice", synth_args: dict[str, int] | None = None, **fields: Any) -> Recipe:
    """A validated recipe; a synth's arguments default to its row of the registry
    (``parametric``: the paper's oscillator counts) unless overridden."""
    if not isinstance(synth, str):
        raise RecipeError(f"recipe field synth must be a name, got {shown(synth)}")
    if not isinstance(synth_args or {}, dict):
        raise RecipeError(f"synth arguments must be an object, got {shown(synth_args)}")
    args = {key: _coerce(f"synth.args.{shown(key, 40, quoted=False)}", value, int) for key, value in (synth_args or {}).items()}
    if synth in SYNTHS:
        args = {**SYNTHS[synth].defaults, **args}
    types = {f.name: f.type for f in dataclasses.fields(Recipe)}
    unknown = set(fields) - set(types) - {"synth"}
    if unknown:
        raise RecipeError(f"unknown recipe fields: {shown(', '.join(sorted(unknown)), 120, quoted=False)}")
    kinds = {"int": int, "float": float, "str": str}
    values = {name: _coerce(name, value, kinds[types[name]]) for name, value in fields.items()}
    recipe = Recipe(synth=SynthSpec(name=synth, arg_items=tuple(sorted(args.items()))), **values)
    return recipe.validate()
