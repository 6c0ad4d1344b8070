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
from .format import MANIFEST_NAME, FormatError, dump_json, stats_name
from .files import write_atomic


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
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FormatError(f"{path}: unreadable shard stats ({error})") from None


def build_manifest(
    recipe: Recipe,
    out_dir: Path,
    param_names: list[dict],
    platform: dict,
    render_seconds: float,
) -> dict:
    shards = []
    for shard in range(recipe.n_shards):
        stats = read_stats(out_dir, shard)
        stats.pop("recipe_sha256", None)
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
            hashes.add(recipe_sha256(json.loads(manifest.read_text())["recipe"]))
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            hashes.add("unreadable manifest")
    for entry in os.listdir(out_dir) if out_dir.is_dir() else []:
        if entry.endswith(".stats.json") and not entry.startswith("."):
            try:
                hashes.add(json.loads((out_dir / entry).read_text()).get("recipe_sha256", "unknown"))
            except (OSError, json.JSONDecodeError, AttributeError):
                hashes.add("unreadable stats")
    return hashes
