"""The format's limits: the range of every recipe number and the sizes they imply.

Every reader checks them before any work (``make_recipe``, ``load_recipe``,
``format.check_manifest``), so an absurd or hostile value is one line instead of an
OverflowError, a 420 GB allocation or an hour-long trace (each layer is unrolled into the
kernel). They are format facts: a writer must stay inside them and a reader may refuse
anything outside, so they live with the format, below the recipe that uses them.
"""

from __future__ import annotations

import math
from typing import Any

# The ranges are generous: the paper uses 16 kHz, 1 s,
# delta <= 0.5, one layer and 512 shards of 1,000 pairs.
RECIPE_BOUNDS: dict[str, tuple[type, float, float]] = {
    # field: (kind, lowest, highest), both ends included
    "sample_rate": (int, 1_000, 192_000),
    "duration": (float, 1e-3, 60.0),
    "control_rate": (int, 1, 192_000),
    "eps": (float, 1e-12, 0.1),
    "delta": (float, 0.0, 4.0),
    "seed": (int, 0, 2**32 - 1),
    "n_layers": (int, 1, 16),
    "pairs_per_shard": (int, 1, 100_000),
    "n_shards": (int, 1, 100_000),
}
# A clip's samples (duration x sample rate): 262 s at 16 kHz, 87 s at 48 kHz.
MAX_CLIP_SAMPLES = 2**22
# A shard's samples (pairs x clip samples): its two float32 views fill 4 GiB, the
# shared-memory slot an encoding worker reads and what a reader may buffer of one shard.
MAX_SHARD_SAMPLES = 2**29
# Pair indices are folded into uint32 JAX keys.
MAX_PAIRS = 2**32


def shown(value: Any, limit: int = 80, *, quoted: bool = True) -> str:
    """A value read from a dataset or given by the user, safe on one short line: its
    ``repr`` (``quoted``) or its text (member names, keys), with newlines, control
    characters and undecodable bytes escaped, cut to ``limit`` characters. The one value
    formatter of both programs: a hostile value may be 10**5000 or a megabyte of text,
    whose repr alone fails or floods the terminal."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value) if quoted else str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def recipe_number_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be recipe field ``name`` (one line), or None if it lies in its
    range. Int fields take ints only (not bools, not 4.0); float fields ints or floats."""
    kind, low, high = RECIPE_BOUNDS[name]
    accepted = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, accepted):
        return f"recipe field {name} must be {'a whole number' if kind is int else 'a number'}, got {shown(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"recipe field {name} must be finite, got {shown(value)}"
    if not low <= value <= high:
        low_text, high_text = (f"{low}", f"{high}") if kind is int else (f"{low:g}", f"{high:g}")
        return f"{name} must lie in [{low_text}, {high_text}], got {shown(value)}"
    return None


def recipe_size_problem(sample_rate: int, duration: float, pairs_per_shard: int, n_shards: int) -> str | None:
    """Why a recipe's sizes break the limits above (one line), or None. For values that
    passed :func:`recipe_number_problem`."""
    clip = int(round(duration * sample_rate))
    if not 1 <= clip <= MAX_CLIP_SAMPLES:
        return f"a clip of {duration:g} s at {sample_rate} Hz is {clip} samples; it must be 1 to {MAX_CLIP_SAMPLES}"
    if pairs_per_shard * clip > MAX_SHARD_SAMPLES:
        return f"{pairs_per_shard} pairs of {clip} samples exceed a shard's {MAX_SHARD_SAMPLES} samples; use fewer pairs per shard"
    if pairs_per_shard * n_shards > MAX_PAIRS:
        return f"more than {MAX_PAIRS} pairs cannot be addressed"
    return None
