"""A dataset's manifest.json read and checked once, into a typed :class:`Manifest` that
readers trust; its shards' stats files and complete shards."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from doppelgen.console import one_line
from doppelgen.format.audio import CODECS
from doppelgen.format.json_data import (
    INT64_LIMIT,
    MAX_MANIFEST_BYTES,
    MAX_STATS_BYTES,
    is_number,
    is_whole_number,
    parse_json,
    read_json_file,
    recipe_sha256,
    unfit_number,
)
from doppelgen.format.kinds import DatasetKind, dataset_kind
from doppelgen.format.limits import RECIPE_BOUNDS, recipe_number_problem, recipe_size_problem, shown
from doppelgen.format.names import MANIFEST_NAME, SUPPORTED_FORMATS, FormatError, n_samples, shard_index, stats_name
from doppelgen.storage import StorageError, local_folder, open_store

# Per-shard statistics a record may hold (docs/FORMAT.md ``record.shards``): numbers, kept
# on the typed entry for `doppelgen info` and the dataset card.
SHARD_STATS = ("peak", "mean_rms", "silent_fraction", "nonfinite_fraction", "redraws")


@dataclass(frozen=True)
class ShardEntry:
    """One checked entry of the manifest's ``record.shards``."""

    name: str  # exactly pairs-NNNNNN.tar
    index: int
    n_pairs: int  # in [0, pairs_per_shard]
    bytes: int | None  # None: not recorded
    sha256: str | None  # 64 hex digits; None: not recorded
    stats: dict[str, int | float]  # the SHARD_STATS it records, numbers that fit an int64


@dataclass(frozen=True)
class Manifest:
    """A dataset's manifest.json, checked once by :func:`check_manifest`: readers use its
    typed fields and never check the JSON again. ``data`` is the object as read (its
    digest names the dataset), ``recipe`` its recipe object (printed, hashed, and read by
    ``Recipe.from_dict`` where ``kind.renders_again``)."""

    data: dict[str, Any]
    recipe: dict[str, Any]
    kind: DatasetKind
    sample_rate: int
    duration: float
    pairs_per_shard: int
    n_shards: int
    codec: str
    seed: int | None
    eps: float | None
    n_layers: int
    shards: tuple[ShardEntry, ...] | None  # None: the record lists no shards (rendering not finished)
    param_names: tuple[Any, ...] | None  # record.param_names; None: not recorded
    software: dict[str, Any]  # values text, numbers or None
    platform: dict[str, Any]
    created: str | None
    render_seconds: float | None
    skipped: tuple[Any, ...]  # record.skipped: recordings `doppelgen pack` could not read

    @property
    def n_samples(self) -> int:
        """Samples in each clip."""
        return n_samples(self.duration, self.sample_rate)

    @property
    def recipe_sha256(self) -> str:
        return recipe_sha256(self.recipe)

    @property
    def n_pairs(self) -> int:
        """Pairs the record lists (0 without a record of shards)."""
        return sum(entry.n_pairs for entry in self.shards or ())


def read_manifest(folder) -> Manifest:
    """Load and check ``folder/manifest.json`` (:func:`check_manifest`); raises
    FormatError with one line. ``folder``: a path, a ``file://``, ``s3://`` or ``gs://``
    URL, or a ``storage`` store (whose StorageError passes through for a bad URL)."""
    local = local_folder(folder)
    if local is None:
        return _read_stored_manifest(folder)
    path = local / MANIFEST_NAME
    if not path.is_file():
        raise FormatError(f"{local}: no {MANIFEST_NAME} (not a finished pair dataset)")
    try:
        manifest = read_json_file(path, MAX_MANIFEST_BYTES)
    except OSError as error:
        raise FormatError(f"{path}: unreadable manifest ({error.strerror or error})") from None
    except FormatError as error:
        raise FormatError(f"{path}: unreadable manifest ({error})") from None
    return check_manifest(manifest, str(path))


def _read_stored_manifest(location) -> Manifest:
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


def parse_manifest(data: bytes, where: str) -> Manifest:
    """A manifest's bytes (read from a URL, say) parsed and checked: FormatError naming
    ``where`` unless :func:`parse_json` and :func:`check_manifest` accept them."""
    try:
        manifest = parse_json(data, MAX_MANIFEST_BYTES)
    except FormatError as error:
        raise FormatError(f"{where}: unreadable manifest ({error})") from None
    return check_manifest(manifest, where)


def check_manifest(manifest: Any, where: str) -> Manifest:
    """The one check of a parsed manifest, before anyone relies on it: the typed
    :class:`Manifest`, or FormatError naming ``where`` and the field. Checked: the format
    version; every recipe number present lies in its range (``limits.RECIPE_BOUNDS``;
    ``sample_rate``, ``duration``, ``pairs_per_shard`` and ``n_shards`` are required) and
    the sizes fit the limits; the codec; the kinds of the recipe's and the record's
    objects; when the record lists shards, each entry's ``name`` is exactly
    ``pairs-NNNNNN.tar`` for an index below ``n_shards``, listed once, with a whole
    ``n_pairs`` in [0, pairs_per_shard] and, if present, a whole ``bytes``, a 64-digit hex
    ``sha256`` and numeric statistics; and every number fits an int64 (so sums and hours
    stay finite)."""
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
    record = record or {}
    _check_record_fields(record, where)
    shards = None
    if record.get("shards") is not None:
        shards = _check_shard_entries(record["shards"], recipe["n_shards"], recipe["pairs_per_shard"], where)
    for part in ("recipe", "record"):
        path = unfit_number(manifest.get(part), part)
        if path is not None:
            raise FormatError(f"{where}: {path} is NaN, infinite or out of range")
    param_names = record.get("param_names")
    return Manifest(
        data=manifest,
        recipe=recipe,
        kind=dataset_kind(recipe),
        sample_rate=recipe["sample_rate"],
        duration=float(recipe["duration"]),
        pairs_per_shard=recipe["pairs_per_shard"],
        n_shards=recipe["n_shards"],
        codec=recipe.get("codec", "flac"),
        seed=recipe.get("seed"),
        eps=recipe.get("eps"),
        n_layers=recipe.get("n_layers", 1),
        shards=shards,
        param_names=tuple(param_names) if param_names is not None else None,
        software=record.get("software") or {},
        platform=record.get("platform") or {},
        created=record.get("created"),
        render_seconds=record.get("render_seconds"),
        skipped=tuple(record.get("skipped") or ()),
    )


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


def _check_shard_entries(shards: Any, n_shards: int, pairs_per_shard: int, where: str) -> tuple[ShardEntry, ...]:
    if not isinstance(shards, list):
        raise FormatError(f"{where}: record.shards is not a list")
    seen, entries = set(), []
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
        if not is_whole_number(n_pairs) or not 0 <= n_pairs <= pairs_per_shard:
            raise FormatError(f"{at}: n_pairs of {name} must be a whole number in [0, {pairs_per_shard}], got {shown(n_pairs)}")
        size = entry.get("bytes")
        if "bytes" in entry and (not is_whole_number(size) or size < 0):
            raise FormatError(f"{at}: bytes of {name} must be a whole number >= 0, got {shown(size)}")
        digest = entry.get("sha256")
        if "sha256" in entry and not (isinstance(digest, str) and _SHA256_RE.fullmatch(digest)):
            raise FormatError(f"{at}: sha256 of {name} must be 64 hex digits, got {shown(digest)}")
        stats = {field: entry[field] for field in SHARD_STATS if entry.get(field) is not None}
        for field, value in stats.items():
            if not is_number(value):
                raise FormatError(f"{at}.{field} must be a number, got {shown(value)}")
        redraws = stats.get("redraws", 0)
        if not is_whole_number(redraws) or not 0 <= redraws < INT64_LIMIT:
            raise FormatError(f"{at}.redraws must be a whole number in [0, 2**63), got {shown(redraws)}")
        entries.append(ShardEntry(name=name, index=index, n_pairs=n_pairs, bytes=size, sha256=digest, stats=stats))
    return tuple(entries)


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
