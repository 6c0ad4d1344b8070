"""manifest.json: the recipe that determines the bytes, and the record of one rendering."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform as _platform
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import Recipe
from .console import one_line
from .files import write_atomic
from .format import MANIFEST_NAME, MAX_MANIFEST_BYTES, MAX_STATS_BYTES, FormatError, dump_json, read_json_file, stats_name


def recipe_sha256(recipe_dict: dict) -> str:
    return hashlib.sha256(dump_json(recipe_dict)).hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def software_versions() -> dict[str, Any]:
    import soundfile

    return {
        "python": _platform.python_version(),
        **{name: _version(name) for name in ("jax", "jaxlib", "synthax", "numpy", "soundfile", "webdataset")},
        "libsndfile": soundfile.__libsndfile_version__,
        "doppelgangers": _version("doppelgangers"),
    }


def read_stats(out_dir: Path, shard: int) -> dict:
    path = out_dir / stats_name(shard)
    try:
        stats = read_json_file(path, MAX_STATS_BYTES)
    except (OSError, FormatError) as error:
        raise FormatError(f"{path}: unreadable shard stats ({one_line(error)})") from None
    if not isinstance(stats, dict):
        raise FormatError(f"{path}: unreadable shard stats (not a JSON object)")
    return stats


def build_manifest(
    recipe: Recipe,
    out_dir: Path,
    param_names: list[dict],
    platform: dict,
    render_seconds: float,
) -> dict:
    shards, expected = [], recipe_sha256(recipe.to_dict())
    for shard in range(recipe.n_shards):
        stats = read_stats(out_dir, shard)
        if stats.pop("recipe_sha256", None) != expected:
            # The folder claim keeps recipes apart; this is the last line of defence.
            raise FormatError(f"{out_dir / stats_name(shard)}: written for another recipe; the folder mixes datasets")
        shards.append(stats)
    return {
        "recipe": recipe.to_dict(),
        "record": {
            "param_names": param_names,
            "software": software_versions(),
            "platform": platform,
            "shards": shards,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "render_seconds": round(render_seconds, 3),
        },
    }


def write_manifest(out_dir: Path, manifest: dict) -> None:
    write_atomic(Path(out_dir) / MANIFEST_NAME, json.dumps(manifest, indent=1).encode())


def existing_recipe_hashes(out_dir: Path) -> set[str]:
    """The recipes a folder already holds: from its manifest, else from its shard stats."""
    hashes: set[str] = set()
    manifest = out_dir / MANIFEST_NAME
    if manifest.is_file():
        try:
            hashes.add(recipe_sha256(read_json_file(manifest, MAX_MANIFEST_BYTES)["recipe"]))
        except (OSError, FormatError, KeyError, TypeError, ValueError):
            hashes.add("unreadable manifest")
    for entry in os.listdir(out_dir) if out_dir.is_dir() else []:
        if entry.endswith(".stats.json") and not entry.startswith("."):
            try:
                hashes.add(str(read_json_file(out_dir / entry, MAX_STATS_BYTES).get("recipe_sha256", "unknown")))
            except (OSError, FormatError, AttributeError):
                hashes.add("unreadable stats")
    return hashes
