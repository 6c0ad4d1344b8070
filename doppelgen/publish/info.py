"""``doppelgen info``: what a finished dataset is, read from its manifest alone.

The recipe, totals (pairs, hours of audio, bytes), the software and platform it was
rendered with, and per-shard statistics summarised across shards. Nothing here opens a
shard, so it is instant on a 512-shard dataset.
"""

from __future__ import annotations

import json
import os
from typing import Any

from doppelgen.format import (
    DATASET_KINDS,
    MANIFEST_NAME,
    SHARD_STATS,
    FormatError,
    ShardEntry,
    complete_shards,
    read_manifest,
    unfit_number,
)
from doppelgen.storage import Store, open_store

# Per-shard record fields summarised across shards (docs/FORMAT.md ``record.shards``), in
# the order they are shown.
SUMMARIZED = ("n_pairs", "bytes", *SHARD_STATS)


def shard_numbers(entry: ShardEntry) -> dict[str, int | float]:
    """The numbers a manifest records of one shard, by their names in ``record.shards``."""
    return {"n_pairs": entry.n_pairs, **({"bytes": entry.bytes} if entry.bytes is not None else {}), **entry.stats}


def summarize(values: list[int | float | None]) -> dict[str, float] | None:
    """min / mean / max of a shard statistic; None when no shard records it."""
    numbers = [float(v) for v in values if v is not None]
    if not numbers:
        return None
    # Plain floats: an overflowing sum becomes inf (refused below) instead of a NumPy warning.
    return {"min": min(numbers), "mean": sum(numbers) / len(numbers), "max": max(numbers)}


def describe_dataset(folder: str | os.PathLike | Store) -> dict[str, Any]:
    """A JSON-ready description of the dataset in ``folder`` (a path, URL or store), every
    number finite; FormatError (one line) if it has no readable manifest (``format.read_manifest``)
    or its totals overflow."""
    store = open_store(folder)
    manifest = read_manifest(store)
    shards = manifest.shards or ()
    n_pairs = manifest.n_pairs
    n_bytes = sum(s.bytes or 0 for s in shards)
    redraws = sum(s.stats.get("redraws", 0) for s in shards)
    duration = manifest.duration
    description = {
        "folder": str(store.as_given),
        "kind": manifest.kind.described,
        "recipe": manifest.recipe,
        "totals": {
            "pairs": n_pairs,
            "shards": len(shards),
            "shards_complete_on_disk": len(complete_shards(store)),
            # Each pair holds two clips; "hours" counts both, "pair_hours" one view.
            "pair_hours": n_pairs * duration / 3600.0,
            "hours": 2 * n_pairs * duration / 3600.0,
            "bytes": n_bytes,
            "redraws": redraws,
        },
        "software": manifest.software,
        "platform": manifest.platform,
        "created": manifest.created,
        "render_seconds": manifest.render_seconds,
        "n_params": len(manifest.param_names or ()),
        "shard_stats": {name: summarize([shard_numbers(s).get(name) for s in shards]) for name in SUMMARIZED},
        "skipped_files": len(manifest.skipped),
    }
    where = unfit_number({"totals": description["totals"], "shard_stats": description["shard_stats"]}, "info")
    if where is not None:  # totals or means of finite numbers that overflowed
        raise FormatError(f"{store.where(MANIFEST_NAME)}: {where} is not finite (the manifest's numbers are too large)")
    return description


def description_json(description: dict[str, Any]) -> str:
    """``doppelgen info --json``: strict JSON (NaN or Infinity raise ValueError)."""
    return json.dumps(description, indent=1, allow_nan=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # unreachable; keeps type checkers calm


def human_duration(hours: float) -> str:
    seconds = hours * 3600.0
    if seconds < 120:
        return f"{seconds:.0f} s"
    if hours < 2:
        return f"{seconds / 60:.1f} min"
    return f"{hours:,.1f} h"


def recipe_lines(recipe: dict) -> list[str]:
    """One ``name: value`` line per recipe field, nested objects inline."""
    lines = []
    for name, value in recipe.items():
        if name == "rng" and isinstance(value, dict):
            value = " ".join([str(value.get("impl"))] + ([json.dumps(value["flags"])] if value.get("flags") else []))
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        lines.append(f"  {name:<16} {value}")
    return lines


def format_description(desc: dict[str, Any]) -> str:
    """The terminal text of ``doppelgen info``."""
    totals, stats = desc["totals"], desc["shard_stats"]
    lines = [f"{desc['folder']}  ({desc['kind']}, format {desc['recipe'].get('format')})", "", "recipe"]
    lines += recipe_lines(desc["recipe"])
    lines += [
        "",
        "totals",
        f"  pairs            {totals['pairs']:,} in {totals['shards']} shards ({totals['shards_complete_on_disk']} complete on disk)",
        f"  audio            {human_duration(totals['hours'])} ({human_duration(totals['pair_hours'])} per view)",
        f"  size             {human_bytes(totals['bytes'])} ({totals['bytes']:,} bytes)",
    ]
    if desc["n_params"]:
        kind = next(kind for kind in DATASET_KINDS.values() if kind.described == desc["kind"])
        lines.append(f"  parameters       {desc['n_params']} {kind.params_meaning} per view")
    if totals["redraws"]:
        lines.append(f"  redraws          {totals['redraws']} non-finite renders drawn again")
    if desc["skipped_files"]:
        lines.append(f"  skipped files    {desc['skipped_files']} unreadable recordings (listed in manifest.json)")
    lines += ["", f"{'per shard':<21}{'min':>12} {'mean':>12} {'max':>12}"]
    for name, summary in stats.items():
        if summary is not None:
            lines.append(f"  {name:<19}{summary['min']:>12.6g} {summary['mean']:>12.6g} {summary['max']:>12.6g}")
    software = " ".join(f"{k} {v}" for k, v in desc["software"].items() if v is not None)
    platform = desc["platform"]
    lines += [
        "",
        "rendered with",
        f"  software         {software}",
        f"  platform         {platform.get('backend', '?')} ({platform.get('device_kind', '?')})" if platform else "  platform         (not recorded)",
        f"  created          {desc['created']}" + (f" in {desc['render_seconds']:.1f} s" if desc.get("render_seconds") is not None else ""),
    ]
    return "\n".join(lines)
