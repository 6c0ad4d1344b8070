"""JAX settings every render depends on: PRNG implementation, matmul precision, flags,
compilation cache; and the process settings that must come before JAX starts a backend
(GPU memory, the CPU backend the parameters are drawn on).

Importing this module does not import JAX: an entry point calls
:func:`prepare_jax_backends` first, before anything initialises a JAX backend.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from doppelgen.files import cache_root
from doppelgen.recipe import PRNG_FLAGS, PRNG_IMPL

# float32 matmuls at full precision on every backend. JAX's default lets an H100 run
# them in TF32 (10-bit mantissa), and the synths mix their modulation signals with
# matmuls: a 5e-4 relative error in a pitch modulation integrates into whole radians of
# phase over a clip. On the CPU the default is already full float32, so CPU bytes do
# not change with this setting.
MATMUL_PRECISION = "highest"


def default_cache_dir() -> Path:
    """Compiled kernels: ``jax`` in the project's cache folder."""
    return cache_root() / "jax"


def backends_initialized() -> bool:
    """Whether this process has started a JAX backend already (then the settings below
    come too late for it)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    check = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(check()) if check is not None else bool(getattr(xla_bridge, "_backends", {}))


def configure_jax_memory() -> None:
    """Let JAX share a GPU with torch (or with another JAX process): no preallocation.

    By default JAX reserves 75% of every visible GPU when it starts its GPU backend and
    keeps it for the life of the process, leaving torch a quarter of the card and a second
    JAX process nothing. With ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` JAX allocates what
    it uses (its pool keeps its peak). A user who wants a bounded reservation instead sets
    ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (e.g. ``.25``; docs/gpu.md); either variable set by
    the user is left alone. Call before anything initialises a JAX backend: XLA reads the
    variables then.
    """
    if "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


def keep_cpu_backend() -> None:
    """Keep JAX's CPU backend when ``JAX_PLATFORMS`` names others only (``cuda``, a common
    way to insist on the GPU): pair parameters are always drawn on the CPU, and
    ``jax.devices("cpu")`` raises without it. The first platform named stays the default.
    Only before a backend is initialised; later it changes nothing."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    named = [p.strip() for p in platforms.split(",") if p.strip()]
    if not named or "cpu" in named:
        return
    value = ",".join([*named, "cpu"])
    os.environ["JAX_PLATFORMS"] = value
    if "jax" in sys.modules and not backends_initialized():
        import jax  # JAX read the variable at import: tell its config too

        jax.config.update("jax_platforms", value)


def use_cpu_only() -> None:
    """JAX on the CPU alone in this process (``JAX_PLATFORMS=cpu``), e.g. a Ray task given
    no GPU on a GPU node. Only before a backend is initialised; later it changes nothing."""
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules and not backends_initialized():
        import jax

        jax.config.update("jax_platforms", "cpu")


def prepare_jax_backends() -> None:
    """The process settings an entry point makes before JAX starts a backend:
    :func:`configure_jax_memory` and :func:`keep_cpu_backend`."""
    configure_jax_memory()
    keep_cpu_backend()


def configure_jax(cache_dir: str | os.PathLike | None = None) -> None:
    """Pin the PRNG (pair keys must not change with a JAX default) and the matmul
    precision, and turn on the persistent compilation cache, since each synth takes tens
    of seconds to compile."""
    import jax

    keep_cpu_backend()
    jax.config.update("jax_default_prng_impl", PRNG_IMPL)
    for flag, value in PRNG_FLAGS.items():
        jax.config.update(flag, value)
    jax.config.update("jax_default_matmul_precision", MATMUL_PRECISION)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # an unwritable cache only costs compile time
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class JaxSetupError(RuntimeError):
    """JAX in this process cannot do what a render needs."""


def cpu_device():
    """The CPU device the pair parameters are drawn on."""
    import jax

    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        raise JaxSetupError(
            f"JAX has no CPU backend in this process (JAX_PLATFORMS={platforms!r}); pair parameters are drawn on the CPU: "
            f"name cpu too, e.g. JAX_PLATFORMS={platforms + ',cpu' if platforms else 'cuda,cpu'}"
        ) from None
