"""JAX settings every render depends on: PRNG implementation, flags, compilation cache."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from doppelgen.recipe import PRNG_FLAGS, PRNG_IMPL
from doppelgen.files import cache_root

def default_cache_dir() -> Path:
    """Compiled kernels: ``jax`` in the project's cache folder."""
    return cache_root() / "jax"


def configure_jax(cache_dir: str | os.PathLike | None = None) -> None:
    """Pin the PRNG (pair keys must not change with a JAX default) and turn on the
    persistent compilation cache, since each synth takes tens of seconds to compile."""
    jax.config.update("jax_default_prng_impl", PRNG_IMPL)
    for flag, value in PRNG_FLAGS.items():
        jax.config.update(flag, value)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache only costs compile time
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def platform() -> dict:
    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count()}


def cpu_device():
    return jax.devices("cpu")[0]
