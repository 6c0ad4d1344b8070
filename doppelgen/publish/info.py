"""``doppelgen info``: what a finished dataset is, read from its manifest alone.

The recipe, totals (pairs, hours of audio, bytes), the software and platform it was
rendered with, and per-shard statistics summarised across shards. Nothing here opens a
shard, so it is instant on a 512-shard dataset.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from doppelgen.format import MANIFEST_NAME, FormatError, complete_shards, is_packed_recipe, read_manifest
from doppelgen.format.limits import shown
from doppelgen.storage import Store, open_store

# Per-shard record fields summarised across shards (docs/FORMAT.md ``record.shards``).
SHARD_STATS = ("n_pairs", "bytes", "peak", "mean_rms", "silent_fraction", "nonfinite_fraction", "redraws")
# Shard record counts: whole numbers that fit an int64, so sums and hours stay finite.
SHARD_COUNTS = ("n_pairs", "bytes", "redraws")
COUNT_LIMIT = 2**63


def unfit_number(value: Any, where: str) -> str | None:
    """The path of the first NaN, infinite or out-of-range number inside ``value``
    (``recipe.duration``, ``record.shards[2].peak``), None if there is none. Integers must
    fit an int64, so every number converts to a finite float. Walks without recursion, so
    any nesting the JSON parser accepted is safe here."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path
        if isinstance(item, int) and not -COUNT_LIMIT <= item < COUNT_LIMIT:
            return path
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{k}") for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < COUNT_LIMIT


def manifest_problem(manifest: dict) -> str | None:
    """What makes a manifest unfit to describe, export or publish beyond what
    ``format.check_manifest`` (field kinds, recipe bounds, shard names and counts) and its
    JSON reader (no NaN or Infinity) refuse; None if nothing. Here: every number fits an
    int64, so sums stay finite, and each shard's statistics are numbers."""
    for part in ("recipe", "record"):
        where = unfit_number(manifest.get(part), part)
        if where is not None:
            return f"{where} is NaN, infinite or out of range"
    for position, shard in enumerate((manifest.get("record") or {}).get("shards") or []):
        for field in SHARD_COUNTS:
            if field in shard and not _is_count(shard[field]):
                return f"record.shards[{position}].{field} must be a whole number in [0, 2**63), got {shown(shard[field])}"
        for field in SHARD_STATS:
            value = shard.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"record.shards[{position}].{field} must be a number, got {shown(value)}"
    return None


def read_described_manifest(folder: str | os.PathLike | Store) -> dict:
    """``format.read_manifest`` plus :func:`manifest_problem`: FormatError, one line.
    ``folder``: a path, URL or store (StorageError, one line, if it cannot be reached)."""
    store = open_store(folder)
    manifest = read_manifest(store)
    problem = manifest_problem(manifest)
    if problem is not None:
        raise FormatError(f"{store.where(MANIFEST_NAME)}: {problem}")
    return manifest


def summarize(values: list[Any]) -> dict[str, float] | None:
    """min / mean / max of a shard statistic; None when no shard records it."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return None
    # Plain floats: an overflowing sum becomes inf (refused below) instead of a NumPy warning.
    return {"min": min(numbers), "mean": sum(numbers) / len(numbers), "max": max(numbers)}


def describe_dataset(folder: str | os.PathLike | Store) -> dict[str, Any]:
    """A JSON-ready description of the dataset in ``folder`` (a path, URL or store), every
    number finite; FormatError (one line) if it has no readable manifest or one unfit to
    describe."""
    store = open_store(folder)
    manifest = read_described_manifest(store)
    recipe = manifest["recipe"]
    record = manifest.get("record", {})
    shards = record.get("shards") or []
    n_pairs, n_bytes, redraws = [sum(s.get(name, 0) for s in shards) for name in SHARD_COUNTS]
    param_names = record.get("param_names")
    duration = float(recipe["duration"])
    description = {
        "folder": str(store.as_given),
        "kind": "packed real audio" if is_packed_recipe(recipe) else "synthetic",
        "recipe": recipe,
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
        "software": record.get("software") or {},
        "platform": record.get("platform") or {},
        "created": record.get("created"),
        "render_seconds": record.get("render_seconds"),
        "n_params": len(param_names) if isinstance(param_names, list) else 0,
        "shard_stats": {name: summarize([s.get(name) for s in shards]) for name in SHARD_STATS},
        "skipped_files": len(record.get("skipped") or []),
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
        what = "crop start times" if desc["kind"] == "packed real audio" else "synth parameters"
        lines.append(f"  parameters       {desc['n_params']} {what} per view")
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
