"""The pair kernel: pair indices -> (parameters, view a, view b), one jitted call per batch.

A pair is a pure function of the recipe and its global index: its keys are folded from
the seed, the index and a redraw counter, never from the batch it is rendered in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from doppelgen.recipe import Recipe
from doppelgen.render.jax_runtime import configure_jax, cpu_device
from doppelgen.render.synths import build_synth, param_layout

# A render that comes out non-finite is drawn again with the next attempt number.
MAX_ATTEMPTS = 32
BASE, VIEW_A, VIEW_B = 0, 1, 2


class RenderError(RuntimeError):
    """Rendering could not produce a finite pair."""


@dataclass
class RenderedPairs:
    """Rendered pairs, rows in the order of ``indices``."""

    indices: np.ndarray  # (N,) global pair indices
    a: np.ndarray  # (N, T) float32, first view
    b: np.ndarray  # (N, T) float32, second view
    params: np.ndarray  # (N, n_layers, 3, P) float32: base, view a, view b in [0, 1]
    redraws: np.ndarray  # (N,) how many non-finite renders were replaced


def draw_views(recipe: Recipe, synth, indices: jax.Array, attempts: jax.Array, seed: jax.Array, delta: jax.Array) -> jax.Array:
    """Base parameters and the two perturbed views, shape (N, n_layers, 3, P).

    ``synth`` is ``build_synth(recipe)``, built outside any trace (SynthConfig computes
    its buffer sizes with jnp and they must stay concrete). Seed and delta are traced
    arguments, so a delta sweep or a new seed reuses one compiled kernel."""
    # Raw uint32 keys: synthax (flax) init does not trace with typed keys.
    root = jax.random.PRNGKey(seed)

    def one_layer(pair_key: jax.Array, layer: int) -> jax.Array:
        layer_key = jax.random.fold_in(pair_key, layer)
        # Independent keys for the draw and each view's noise (the reference reuses one).
        base = ravel_pytree(synth.init(jax.random.fold_in(layer_key, BASE)))[0]
        views = [base]
        for view in (VIEW_A, VIEW_B):
            noise = jax.random.normal(jax.random.fold_in(layer_key, view), base.shape, base.dtype)
            views.append(jnp.clip(base + delta * noise, recipe.eps, 1.0))
        return jnp.stack(views)

    def one_pair(index: jax.Array, attempt: jax.Array) -> jax.Array:
        pair_key = jax.random.fold_in(jax.random.fold_in(root, index), attempt)
        return jnp.stack([one_layer(pair_key, layer) for layer in range(recipe.n_layers)])

    return jax.vmap(one_pair)(indices, attempts)


def render_views(synth, views: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Render views (N, n_layers, 3, P) to audio (N, T) for view a and view b.

    With several layers each view is the mean of its layers' renders: the level stays
    that of one voice, and the stored gain takes care of the rest.
    """
    template = jax.eval_shape(synth.init, jax.random.PRNGKey(0))
    unravel = ravel_pytree(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), template))[1]

    def render_one(flat: jax.Array) -> jax.Array:
        return synth.apply(unravel(flat))[0]

    render_layers = jax.vmap(jax.vmap(render_one))  # over pairs, then layers
    a = render_layers(views[:, :, VIEW_A]).mean(axis=1)
    b = render_layers(views[:, :, VIEW_B]).mean(axis=1)
    return a, b


class PairKernel:
    """Jitted draw + render for one recipe. Parameters are always drawn on the CPU, so the
    JSON is identical across platforms; audio is rendered on JAX's default device (the
    GPU when there is one). On a CPU-only machine both run as one fused kernel."""

    def __init__(self, recipe: Recipe):
        configure_jax()
        self.recipe = recipe
        self._cpu = cpu_device()
        self._fused = jax.default_backend() == "cpu"
        synth = build_synth(recipe)
        draw = lambda *args: draw_views(recipe, synth, *args)
        render = lambda views: render_views(synth, views)
        if self._fused:
            self._kernel = jax.jit(lambda *args: (views := draw(*args), *render(views)))
        else:
            self._draw = jax.jit(draw)
            self._render = jax.jit(render)

    def __call__(self, indices: np.ndarray, attempts: np.ndarray, seed: int, delta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        args = [
            jax.device_put(np.asarray(value, dtype), self._cpu)
            for value, dtype in ((indices, np.uint32), (attempts, np.uint32), (seed, np.uint32), (delta, np.float32))
        ]
        if self._fused:
            views, a, b = self._kernel(*args)
        else:
            views = self._draw(*args)
            a, b = self._render(jax.device_put(views, jax.devices()[0]))
        return np.asarray(views), np.asarray(a), np.asarray(b)


def redraw_nonfinite(
    kernel: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    indices: np.ndarray,
    max_attempts: int = MAX_ATTEMPTS,
) -> RenderedPairs:
    """Run ``kernel`` and render again, with the next attempt number, every pair whose
    audio is not finite. Re-renders use the same batch shape, so nothing recompiles."""
    indices = np.asarray(indices)
    attempts = np.zeros(len(indices), np.uint32)
    views, a, b = kernel(indices, attempts)
    bad = ~(np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1))
    if bad.any():  # writable copies to patch; the common case needs none
        views, a, b = np.array(views), np.array(a), np.array(b)
    while bad.any():
        if attempts.max() + 1 >= max_attempts:
            first = int(indices[np.argmax(bad)])
            raise RenderError(f"pair {first} was still non-finite after {max_attempts} attempts")
        attempts = attempts + bad.astype(np.uint32)
        new_views, new_a, new_b = kernel(indices, attempts)
        views[bad], a[bad], b[bad] = new_views[bad], new_a[bad], new_b[bad]
        bad &= ~(np.isfinite(new_a).all(axis=1) & np.isfinite(new_b).all(axis=1))
    return RenderedPairs(indices=indices, a=a, b=b, params=views, redraws=attempts.astype(np.int64))


# The recipe fields the compiled kernel is built from: the synth and its clip, eps and the
# layers (seed and delta are traced arguments). Recipes equal in these share one kernel, so
# a delta sweep or another dataset layout compiles nothing; a new field the kernel reads
# must be added here.
KERNEL_FIELDS = ("synth", "sample_rate", "duration", "control_rate", "eps", "n_layers")


def kernel_key(recipe: Recipe) -> tuple:
    """What the compiled kernel of ``recipe`` is built from: its ``KERNEL_FIELDS``."""
    return tuple(getattr(recipe, name) for name in KERNEL_FIELDS)


@lru_cache(maxsize=8)
def _kernel_for(key: tuple) -> PairKernel:
    return PairKernel(Recipe(**dict(zip(KERNEL_FIELDS, key))))


def pair_kernel(recipe: Recipe) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The kernel for ``recipe`` as ``(indices, attempts) -> (views, a, b)``, shared by
    every recipe equal in ``KERNEL_FIELDS``."""
    kernel = _kernel_for(kernel_key(recipe))
    return lambda indices, attempts: kernel(indices, attempts, recipe.seed, recipe.delta)


def render_batch(recipe: Recipe, indices: Sequence[int], batch_size: int | None = None) -> RenderedPairs:
    """Render the given pairs. A short batch is padded to ``batch_size`` so that every call
    reuses one compiled kernel; padding rows are dropped."""
    indices = np.asarray(indices, dtype=np.int64)
    # Batches of 1 compile to different arithmetic (XLA drops the unit axis): pad to 2
    # so a pair's bytes do not depend on the batch size.
    size = max(2, batch_size or len(indices))
    if len(indices) > size:
        raise ValueError(f"{len(indices)} pairs do not fit a batch of {size}")
    padded = np.concatenate([indices, np.full(size - len(indices), indices[-1] if len(indices) else 0)])
    batch = redraw_nonfinite(pair_kernel(recipe), padded)
    n = len(indices)
    return RenderedPairs(batch.indices[:n], batch.a[:n], batch.b[:n], batch.params[:n], batch.redraws[:n])


def render_pairs(recipe: Recipe, indices: Sequence[int], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Python API: ``(a, b, params)`` for any pair indices, identical to what the shards hold
    before audio coding. ``params`` has shape (N, n_layers, 3, P): base, view a, view b."""
    indices = np.asarray(indices, dtype=np.int64)
    size = max(1, min(batch_size, len(indices)))
    parts = [render_batch(recipe, indices[start : start + size], size) for start in range(0, len(indices), size)]
    if not parts:
        empty = np.zeros((0, recipe.n_samples), np.float32)
        return empty, empty.copy(), np.zeros((0, recipe.n_layers, 3, len(param_layout(recipe))), np.float32)
    return (
        np.concatenate([p.a for p in parts]),
        np.concatenate([p.b for p in parts]),
        np.concatenate([p.params for p in parts]),
    )
