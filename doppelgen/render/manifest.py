"""manifest.json: the recipe that determines the bytes, and the record of one rendering."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform as _platform
from importlib import metadata
from typing import Any

from doppelgen.console import one_line
from doppelgen.format import MANIFEST_NAME, MAX_MANIFEST_BYTES, FormatError, parse_json, read_stats, recipe_sha256, stats_name
from doppelgen.recipe import Recipe
from doppelgen.storage import Store, open_store


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


def read_store_json(store: Store, name: str, max_bytes: int):
    """``format.parse_json`` of object ``name``, fetching at most one byte past
    ``max_bytes``; FileNotFoundError, OSError and FormatError pass through."""
    return parse_json(store.read_bytes(name, max_bytes + 1), max_bytes)


def build_manifest(
    recipe: Recipe,
    out_dir: str | os.PathLike | Store,
    param_names: list[dict],
    platform: dict,
    render_seconds: float,
) -> dict:
    store = open_store(out_dir)
    shards, expected = [], recipe.sha256
    for shard in range(recipe.n_shards):
        try:
            stats = read_stats(store, stats_name(shard))
        except (FileNotFoundError, FormatError) as error:
            raise FormatError(f"{store.where(stats_name(shard))}: unreadable shard stats ({one_line(error)})") from None
        if stats.pop("recipe_sha256", None) != expected:
            # The folder claim keeps recipes apart; this is the last line of defence.
            raise FormatError(f"{store.where(stats_name(shard))}: written for another recipe; the folder mixes datasets")
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


def write_manifest(out_dir: str | os.PathLike | Store, manifest: dict) -> None:
    # allow_nan=False: readers refuse NaN and Infinity, so a writer must never produce them.
    open_store(out_dir).put(MANIFEST_NAME, json.dumps(manifest, indent=1, allow_nan=False).encode())


def existing_recipe_hashes(out_dir: str | os.PathLike | Store) -> set[str]:
    """The recipes a folder already holds: from its manifest, else from its shard stats."""
    store = open_store(out_dir)
    hashes: set[str] = set()
    names = store.names()
    if MANIFEST_NAME in names:
        try:
            hashes.add(recipe_sha256(read_store_json(store, MANIFEST_NAME, MAX_MANIFEST_BYTES)["recipe"]))
        except (OSError, FormatError, KeyError, TypeError, ValueError):
            hashes.add("unreadable manifest")
    for entry in names:
        if entry.endswith(".stats.json") and not entry.startswith("."):
            try:
                hashes.add(str(read_stats(store, entry).get("recipe_sha256", "unknown")))
            except (OSError, FormatError):
                hashes.add("unreadable stats")
    return hashes
