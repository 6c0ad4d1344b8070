"""A recipe's SynthAX module, built from its row of the synth registry (``doppelgen.synths``), and its parameter layout."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from functools import lru_cache

import jax
import numpy as np

from doppelgen.recipe import Recipe, RecipeError
from doppelgen.synths import SYNTHS


@dataclass(frozen=True)
class ParamInfo:
    """One scalar of the flattened parameter vector, with its human-readable range."""

    name: str  # module/parameter, with [i] or [i,j] for array-valued parameters
    minimum: float | None
    maximum: float | None
    curve: float | None
    symmetric: bool | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def synth_config(recipe: Recipe, batch_size: int = 1):
    from synthax.config import SynthConfig

    return SynthConfig(
        batch_size=batch_size,
        sample_rate=recipe.sample_rate,
        buffer_size_seconds=recipe.duration,
        control_rate=recipe.control_rate,
        eps=recipe.eps,
    )


def build_synth(recipe: Recipe, batch_size: int = 1):
    """The recipe's SynthAX module (its registry row's class, given the recipe's synth
    arguments). Pairs are drawn one sound at a time (batch 1, vmapped), so that a pair
    never depends on which others share its batch."""
    synth = SYNTHS.get(recipe.synth.name)
    if synth is None:
        raise RecipeError(f"unknown synth {recipe.synth.name!r}")
    module, _, name = synth.synthax_class.rpartition(".")
    return getattr(importlib.import_module(module), name)(synth_config(recipe, batch_size), **recipe.synth.args)


@lru_cache(maxsize=16)
def param_layout(recipe: Recipe) -> tuple[ParamInfo, ...]:
    """Names and ranges of the flattened parameter vector, in ``ravel_pytree`` order."""
    synth = build_synth(recipe)
    params = jax.eval_shape(synth.init, jax.random.PRNGKey(0))
    # Ranges live on the bound submodules (defaults or the architecture's overrides).
    bound = synth.bind(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), params))
    modules = bound.modules
    from synthax.types import is_parameter_spec

    layout: list[ParamInfo] = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [getattr(entry, "key", str(entry)) for entry in path]
        module_key, parameter = keys[-2], keys[-1]
        module_name = module_key.removeprefix("modules_")
        module = modules.get(module_name)
        spec = None
        if module is not None:
            fields = {f.name: f for f in dataclasses.fields(module)}
            if parameter in fields and is_parameter_spec(fields[parameter].type):
                spec = getattr(module, parameter)
        element_shape = leaf.shape[1:]  # drop the batch axis of size 1
        for flat_index, element in enumerate(np.ndindex(*element_shape) if element_shape else [()]):
            suffix = f"[{','.join(map(str, element))}]" if element_shape else ""
            layout.append(_param_info(f"{module_name}/{parameter}{suffix}", spec, element))
    return tuple(layout)


def _param_info(name: str, spec, element: tuple[int, ...]) -> ParamInfo:
    if spec is None or not hasattr(spec, "minimum"):
        return ParamInfo(name, None, None, None, None)

    def scalar(value) -> float:
        array = np.asarray(value, dtype=np.float64)
        if array.ndim == 0:
            return float(array)
        # Array-valued ranges (e.g. Voice's mixer curve) vary along the last axis.
        return float(array[element[-1]]) if element else float(array.reshape(-1)[0])

    return ParamInfo(name, scalar(spec.minimum), scalar(spec.maximum), scalar(spec.curve), bool(spec.symmetric))
