"""How far a render on another platform can drift, measured on this CPU (issue 19).

The synths build each oscillator's phase as a float32 cumulative sum over the clip; another
device or compiler may sum in another order, and another instruction set rounds
differently (no FMA under SSE4.2 or AVX). This emulates both on the CPU:

- ``tones``: a pure tone's phase summed in float32 in several orders (sequential, blocked
  by 128, a log-depth tree, XLA's own ``jnp.cumsum``) against the float64 phase, per
  frequency;
- ``voice``: the voice synth rendered with its cumulative sums replaced by other orders
  (``jax.lax.associative_scan``, blocked by 128 and by 16, a sequential ``lax.scan``), each
  compared with XLA's default render;
- ``isa``: the same pairs rendered in a subprocess with ``XLA_FLAGS=--xla_cpu_max_isa=CAP``
  for every instruction-set level below this CPU's;
- ``reference``: the two views of each pair (delta 0.25), the closest sounds the data
  means to tell apart.

Each line gives the figures ``doppelgen verify --rerender`` relies on
(``doppelgen.publish.cross_platform``): the largest parameter difference, and per clip the
largest sample error over the peak and the log-mel distance (quantiles over clips).

    python benchmarks/render_drift.py --pairs 128     # about 10 CPU-minutes: one compile per order and cap
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from doppelgen.publish.cross_platform import log_mel_distance  # noqa: E402
from doppelgen.render.platform_identity import X86_ISA_LEVELS, xla_cpu_isa  # noqa: E402

SR = 16000
TONE_HZ = (110.0, 440.0, 1500.0, 4000.0)


def clip_figures(reference: np.ndarray, other: np.ndarray) -> dict:
    """Quantiles over clips (rows) of the sample error over the peak and the log-mel distance."""
    errors = [float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(x))), 1e-12)) for x, y in zip(reference, other)]
    distances = [log_mel_distance(x, y, SR) for x, y in zip(reference, other)]

    def quantiles(values):
        return {q: round(float(np.quantile(values, level)), 6) for q, level in (("q50", 0.5), ("q90", 0.9), ("q99", 0.99), ("max", 1.0))} | {"min": float(np.min(values))}

    return {"clips": len(errors), "max_error_over_peak": quantiles(errors), "log_mel_distance": quantiles(distances)}


def scan_sequential(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x, dtype=np.float32)  # numpy accumulates in order


def scan_blocked(x: np.ndarray, block: int = 128) -> np.ndarray:
    inner = np.cumsum(x.reshape(-1, block), axis=1, dtype=np.float32)
    offsets = np.concatenate([[np.float32(0)], np.cumsum(inner[:, -1], dtype=np.float32)[:-1]]).astype(np.float32)
    return (inner + offsets[:, None]).reshape(-1)


def scan_tree(x: np.ndarray) -> np.ndarray:
    """Hillis-Steele: log2(n) rounds of adding the value ``2^k`` back."""
    y, step = x.astype(np.float32).copy(), 1
    while step < len(y):
        y[step:] = y[step:] + y[:-step]
        step *= 2
    return y


def tones() -> list[dict]:
    import jax.numpy as jnp

    lines = []
    for hz in TONE_HZ:
        increments = np.full(SR, 2 * np.pi * hz / SR, np.float32)
        truth = np.cumsum(increments.astype(np.float64))
        orders = {"sequential": scan_sequential(increments), "blocked128": scan_blocked(increments), "tree": scan_tree(increments),
                  "xla": np.asarray(jnp.cumsum(jnp.asarray(increments)))}
        reference = np.cos(truth).astype(np.float32)
        for name, phase in orders.items():
            audio = np.cos(phase.astype(np.float64)).astype(np.float32)
            lines.append({"part": "tones", "hz": hz, "order": name, "vs": "float64 phase", "phase_error_rad": float(np.max(np.abs(phase - truth))),
                          **clip_figures(reference[None], audio[None])})
        for name in ("sequential", "blocked128", "tree"):
            a, b = np.cos(orders["xla"].astype(np.float64)), np.cos(orders[name].astype(np.float64))
            lines.append({"part": "tones", "hz": hz, "order": name, "vs": "xla", **clip_figures(a[None].astype(np.float32), b[None].astype(np.float32))})
    return lines


def render(pairs: int, batch: int) -> dict[str, np.ndarray]:
    from doppelgen.recipe import make_recipe
    from doppelgen.render.kernel import render_pairs

    recipe = make_recipe("voice", delta=0.25, n_shards=1, pairs_per_shard=pairs)
    a, b, params = render_pairs(recipe, np.arange(pairs), batch_size=batch)
    return {"a": a, "b": b, "params": params}


def voice_orders(pairs: int, batch: int) -> tuple[dict[str, dict], dict]:
    """Renders with synthax's cumulative sums (the oscillators' and the LFOs' phase) in
    other orders; returns them and XLA's default render."""
    import jax.numpy as jnp
    from jax import lax

    from doppelgen.render import kernel

    original = jnp.cumsum

    def blocked(block):
        def cumsum(x, axis=None, dtype=None):
            rows, length = x.shape
            count = -(-length // block)
            inner = original(jnp.pad(x, ((0, 0), (0, count * block - length))).reshape(rows, count, block), axis=2)
            totals = inner[:, :, -1]
            return (inner + (original(totals, axis=1) - totals)[:, :, None]).reshape(rows, count * block)[:, :length]
        return cumsum

    def tree(x, axis=None, dtype=None):
        return lax.associative_scan(jnp.add, x, axis=axis)

    def sequential(x, axis=None, dtype=None):
        _, ys = lax.scan(lambda carry, value: (carry + value, carry + value), jnp.zeros(x.shape[0], x.dtype), x.T)
        return ys.T

    renders = {}
    for name, cumsum in (("xla", original), ("tree", tree), ("blocked128", blocked(128)), ("blocked16", blocked(16)), ("sequential", sequential)):
        jnp.cumsum = cumsum  # synthax calls jnp.cumsum when the kernel is traced
        kernel._kernel_for_shape.cache_clear()
        try:
            renders[name] = render(pairs, batch)
        finally:
            jnp.cumsum = original
    kernel._kernel_for_shape.cache_clear()
    return {k: v for k, v in renders.items() if k != "xla"}, renders["xla"]


def compare(name: str, part: str, ours: dict, theirs: dict) -> dict:
    return {
        "part": part, "order" if part == "voice" else "isa_cap": name,
        "params_differing": int(np.sum(ours["params"] != theirs["params"])), "params_values": int(ours["params"].size),
        "params_max_difference": float(np.max(np.abs(ours["params"] - theirs["params"]))),
        **clip_figures(np.concatenate([ours["a"], ours["b"]]), np.concatenate([theirs["a"], theirs["b"]])),
    }


def isa_render(cap: str, pairs: int, batch: int, folder: Path) -> dict:
    out = folder / f"{cap}.npz"
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_max_isa={cap}".strip(), "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, __file__, "--render-to", str(out), "--pairs", str(pairs), "--batch", str(batch)], env=env, check=True)
    return dict(np.load(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--render-to", type=Path, help=argparse.SUPPRESS)  # the ISA subprocess
    args = parser.parse_args(argv)
    if args.render_to:
        np.savez(args.render_to, **render(args.pairs, args.batch))
        return 0
    host = xla_cpu_isa()
    print(json.dumps({"part": "host", "cpu_isa": host, "load": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None}), flush=True)
    for line in tones():
        print(json.dumps(line), flush=True)
    orders, default = voice_orders(args.pairs, args.batch)
    for name, other in orders.items():
        print(json.dumps(compare(name, "voice", default, other)), flush=True)
    names = [name for name, _ in X86_ISA_LEVELS]
    caps = names[: names.index(host)] if host in names else []
    with tempfile.TemporaryDirectory() as folder:
        for cap in caps:
            print(json.dumps(compare(cap, "isa", default, isa_render(cap, args.pairs, args.batch, Path(folder)))), flush=True)
    views = clip_figures(np.concatenate([default["a"], default["b"]]), np.concatenate([default["b"], default["a"]]))
    print(json.dumps({"part": "reference", "what": "view a against view b of each pair (delta 0.25)", **views}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
