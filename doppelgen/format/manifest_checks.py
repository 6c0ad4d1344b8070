"""A dataset's manifest.json read and checked before anyone relies on it; its shards' stats files and complete shards."""

from __future__ import annotations

import math
import os
import re
from typing import Any

from doppelgen.console import one_line
from doppelgen.storage import StorageError, local_folder, open_store
from doppelgen.format.json_data import MAX_MANIFEST_BYTES, MAX_STATS_BYTES, parse_json, read_json_file
from doppelgen.format.limits import RECIPE_BOUNDS, recipe_number_problem, recipe_size_problem, shown
from doppelgen.format.names import CODECS, MANIFEST_NAME, SUPPORTED_FORMATS, FormatError, shard_index, stats_name


def read_manifest(folder) -> dict:
    """Load and check ``folder/manifest.json`` (:func:`check_manifest`); raises
    FormatError with one line. ``folder``: a path, a ``file://``, ``s3://`` or ``gs://``
    URL, or a ``storage`` store (whose StorageError passes through for a bad URL)."""
    local = local_folder(folder)
    if local is None:
        return _read_stored_manifest(folder)
    path = local / MANIFEST_NAME
    if not path.is_file():
        raise FormatError(f"{folder}: no {MANIFEST_NAME} (not a finished pair dataset)")
    try:
        manifest = read_json_file(path, MAX_MANIFEST_BYTES)
    except OSError as error:
        raise FormatError(f"{path}: unreadable manifest ({error.strerror or error})") from None
    except FormatError as error:
        raise FormatError(f"{path}: unreadable manifest ({error})") from None
    return check_manifest(manifest, str(path))


def _read_stored_manifest(location) -> dict:
    store = open_store(location)
    where = store.where(MANIFEST_NAME)
    try:
        # One byte past the limit: parse_json then refuses it as too large.
        data = store.read_bytes(MANIFEST_NAME, MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise FormatError(f"{store.location}: no {MANIFEST_NAME} (not a finished pair dataset)") from None
    except StorageError:
        raise  # no credentials, no answer: one line that names the store already
    except OSError as error:
        raise FormatError(f"{where}: unreadable manifest ({one_line(error)})") from None
    return parse_manifest(data, where)


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest's bytes (read from a URL, say) parsed and checked: FormatError naming
    ``where`` unless :func:`parse_json` and :func:`check_manifest` accept them."""
    try:
        manifest = parse_json(data, MAX_MANIFEST_BYTES)
    except FormatError as error:
        raise FormatError(f"{where}: unreadable manifest ({error})") from None
    return check_manifest(manifest, where)


def check_manifest(manifest: Any, where: str) -> dict:
    """Check a parsed manifest before anyone relies on it; raises FormatError naming
    ``where`` and the field. Checked: the format version; every recipe number present
    lies in its range (``limits.RECIPE_BOUNDS``; ``sample_rate``, ``duration``,
    ``pairs_per_shard`` and ``n_shards`` are required) and the sizes fit the limits;
    the codec; and, when the record lists shards, each entry's ``name`` is exactly
    ``pairs-NNNNNN.tar`` for an index below ``n_shards``, listed once, with a whole
    ``n_pairs`` in [0, pairs_per_shard] and, if present, a whole ``bytes`` and a
    64-digit hex ``sha256``."""
    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    if not isinstance(recipe, dict):
        raise FormatError(f"{where}: manifest has no recipe object")
    version = recipe.get("format")
    if isinstance(version, bool) or version not in SUPPORTED_FORMATS:
        raise FormatError(f"{where}: unknown format version {shown(version)} (this reader knows {SUPPORTED_FORMATS})")
    required = ("sample_rate", "duration", "pairs_per_shard", "n_shards")
    for field in RECIPE_BOUNDS:
        if field in recipe or field in required:
            problem = recipe_number_problem(field, recipe.get(field))
            if problem:
                raise FormatError(f"{where}: {problem}")
    problem = recipe_size_problem(recipe["sample_rate"], recipe["duration"], recipe["pairs_per_shard"], recipe["n_shards"])
    if problem:
        raise FormatError(f"{where}: {problem}")
    if "codec" in recipe and recipe["codec"] not in CODECS:
        raise FormatError(f"{where}: unknown codec {shown(recipe['codec'])}: expected one of {', '.join(CODECS)}")
    _check_recipe_objects(recipe, where)
    record = manifest.get("record")
    if record is not None and not isinstance(record, dict):
        raise FormatError(f"{where}: the manifest's record is not an object")
    if record:
        _check_record_fields(record, where)
        if record.get("shards") is not None:
            _check_shard_entries(record["shards"], recipe["n_shards"], recipe["pairs_per_shard"], where)
    return manifest


def _check_recipe_objects(recipe: dict, where: str) -> None:
    """The recipe's non-numeric fields have the kinds docs/FORMAT.md gives them."""
    synth = recipe.get("synth")
    if synth is not None and not isinstance(synth, str):
        if not (isinstance(synth, dict) and isinstance(synth.get("name", ""), str) and isinstance(synth.get("args") or {}, dict)):
            raise FormatError(f"{where}: recipe.synth must be a name or an object with a name and args, got {shown(synth)}")
    for field in ("source", "rng"):
        if recipe.get(field) is not None and not isinstance(recipe[field], dict):
            raise FormatError(f"{where}: recipe.{field} must be an object, got {shown(recipe[field])}")
    jitter, max_n = recipe.get("temporal_jitter", False), recipe.get("max_n")
    if not isinstance(jitter, bool) or (max_n is not None and (isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1)):
        raise FormatError(f"{where}: recipe.temporal_jitter must be true or false and max_n a whole number >= 1 or null")


# The kind each record field must have where present (docs/FORMAT.md ``record``), so that
# readers can format them without looking twice.
_RECORD_FIELDS = {
    "param_names": (list, "a list"), "software": (dict, "an object"), "platform": (dict, "an object"),
    "created": (str, "text"), "render_seconds": ((int, float), "a number"), "skipped": (list, "a list"),
    "n_skipped": (int, "a whole number"),
}


def _check_record_fields(record: dict, where: str) -> None:
    for field, (kind, described) in _RECORD_FIELDS.items():
        value = record.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise FormatError(f"{where}: record.{field} must be {described}, got {shown(value)}")
    for field in ("render_seconds", "n_skipped"):
        value = record.get(field)
        if value is not None and not 0 <= value < math.inf:
            raise FormatError(f"{where}: record.{field} must be >= 0, got {shown(value)}")
    for field in ("software", "platform"):
        for key, value in (record.get(field) or {}).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                raise FormatError(f"{where}: record.{field}.{shown(key, 40, quoted=False)} must be text or a number, got {shown(value)}")


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _check_shard_entries(shards: Any, n_shards: int, pairs_per_shard: int, where: str) -> None:
    if not isinstance(shards, list):
        raise FormatError(f"{where}: record.shards is not a list")
    seen = set()
    for position, entry in enumerate(shards):
        at = f"{where}: record.shards[{position}]"
        if not isinstance(entry, dict):
            raise FormatError(f"{at} is not an object")
        name = entry.get("name")
        index = shard_index(name)
        if index is None:
            raise FormatError(f"{at}.name must be pairs-NNNNNN.tar with no folder, got {shown(name)}")
        if name in seen:
            raise FormatError(f"{at}: {name} is listed twice")
        if index >= n_shards:
            raise FormatError(f"{at}: {name} is outside the recipe's {n_shards} shards")
        seen.add(name)
        n_pairs = entry.get("n_pairs")
        if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 0 <= n_pairs <= pairs_per_shard:
            raise FormatError(f"{at}: n_pairs of {name} must be a whole number in [0, {pairs_per_shard}], got {shown(n_pairs)}")
        size = entry.get("bytes", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FormatError(f"{at}: bytes of {name} must be a whole number >= 0, got {shown(size)}")
        digest = entry.get("sha256", "0" * 64)
        if not (isinstance(digest, str) and _SHA256_RE.fullmatch(digest)):
            raise FormatError(f"{at}: sha256 of {name} must be 64 hex digits, got {shown(digest)}")


def read_stats(folder, name: str) -> dict:
    """The stats file ``name`` (``pairs-NNNNNN.stats.json``) of a dataset as a dict.
    ``folder``: a path, URL or ``storage`` store. FileNotFoundError if there is none;
    FormatError saying why (one line; the caller names the file) if it cannot be read or
    is not a JSON object of at most ``MAX_STATS_BYTES``."""
    store = open_store(folder)
    try:
        stats = parse_json(store.read_bytes(name, MAX_STATS_BYTES + 1), MAX_STATS_BYTES)
    except FileNotFoundError:
        raise
    except OSError as error:  # StorageError among them
        raise FormatError(one_line(error)) from None
    if not isinstance(stats, dict):
        raise FormatError("not a JSON object")
    return stats


def complete_shards(folder) -> list[int]:
    """Indices of the shards whose tar and stats file both exist under their final names.
    ``folder``: a path, a URL or a ``storage`` store (listed: one request per 1,000
    objects on S3)."""
    local = local_folder(folder)
    if local is None:
        names = set(open_store(folder).names())
        return sorted(i for i in map(shard_index, names) if i is not None and stats_name(i) in names)
    folder = local
    if not folder.is_dir():
        return []
    done = []
    for entry in os.listdir(folder):
        index = shard_index(entry)
        if index is not None and (folder / stats_name(index)).is_file():
            done.append(index)
    return sorted(done)
