"""``doppelgen info``: what a finished dataset is, read from its manifest alone.

The recipe, totals (pairs, hours of audio, bytes), the software and platform it was
rendered with, and per-shard statistics summarised across shards. Nothing here opens a
shard, so it is instant on a 512-shard dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .format import MANIFEST_NAME, FormatError, complete_shards, is_packed_recipe, read_manifest

# Per-shard record fields summarised across shards (FORMAT.md ``record.shards``).
SHARD_STATS = ("n_pairs", "bytes", "peak", "mean_rms", "silent_fraction", "nonfinite_fraction", "redraws")


def summarize(values: list[float]) -> dict[str, float] | None:
    """min / mean / max of a shard statistic; None when no shard records it."""
    array = np.asarray([v for v in values if isinstance(v, (int, float))], dtype=np.float64)
    if not array.size:
        return None
    return {"min": float(array.min()), "mean": float(array.mean()), "max": float(array.max())}


def describe_dataset(folder: str | os.PathLike) -> dict[str, Any]:
    """A JSON-ready description of the dataset in ``folder``; FormatError if it has no
    readable manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    recipe = manifest["recipe"]
    record = manifest.get("record") if isinstance(manifest.get("record"), dict) else {}
    shards = [s for s in record.get("shards") or [] if isinstance(s, dict)]
    try:
        n_pairs, n_bytes, redraws = [sum(int(s.get(name, 0)) for s in shards) for name in ("n_pairs", "bytes", "redraws")]
    except (TypeError, ValueError):
        raise FormatError(f"{folder / MANIFEST_NAME}: a shard record's n_pairs, bytes or redraws is not a number") from None
    param_names = record.get("param_names")
    duration = float(recipe.get("duration", 0.0))
    return {
        "folder": str(folder),
        "kind": "packed real audio" if is_packed_recipe(recipe) else "synthetic",
        "recipe": recipe,
        "totals": {
            "pairs": n_pairs,
            "shards": len(shards),
            "shards_complete_on_disk": len(complete_shards(folder)),
            # Each pair holds two clips; "hours" counts both, "pair_hours" one view.
            "pair_hours": n_pairs * duration / 3600.0,
            "hours": 2 * n_pairs * duration / 3600.0,
            "bytes": n_bytes,
            "redraws": redraws,
        },
        "software": record.get("software", {}),
        "platform": record.get("platform", {}),
        "created": record.get("created"),
        "render_seconds": record.get("render_seconds"),
        "n_params": len(param_names) if isinstance(param_names, list) else 0,
        "shard_stats": {name: summarize([s.get(name) for s in shards]) for name in SHARD_STATS},
        "skipped_files": len(record.get("skipped") or []),
    }


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
