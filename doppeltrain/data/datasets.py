"""Which pair datasets a run reads: their manifests, their complete shards, and the validation split."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import webdataset as wds

from doppelgen.console import InputError, one_line
from doppelgen.files import file_sha256
from doppelgen.format import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    FormatError,
    Manifest,
    ShardEntry,
    complete_shards,
    dump_json,
    parse_manifest,
    read_manifest,
    shard_index,
    shown,
    stats_name,
)
from doppelgen.storage import Store, is_store_location, open_store

logger = logging.getLogger(__name__)

# The fewest bytes a pair takes in a tar: three members, each a 512-byte header and at
# least one 512-byte block of data. A shard cannot hold more pairs than its size allows.
MIN_PAIR_BYTES = 3 * 2 * 512
# Each clip fills a row of every batch: longer clips are not training examples, and a
# manifest's duration of 1e9 s would have the loader ask for terabytes.
MAX_CLIP_SECONDS = 600


class DataError(InputError):
    """The input data cannot be used; the message is one line."""


@dataclass(frozen=True)
class ShardRef:
    """One shard to read: where it is and what the manifest says it holds."""

    url: str  # a local path, a storage URL (file://, s3://, gs://) or a URL webdataset's gopen opens
    n_pairs: int
    n_samples: int  # samples per clip, from the manifest's duration and sample rate


@dataclass(frozen=True)
class DatasetInfo:
    """One pair dataset (a folder or URL in docs/FORMAT.md) and its complete shards."""

    location: str
    manifest: Manifest
    shards: tuple[ShardRef, ...]
    sample_rate: int
    n_samples: int

    @property
    def n_pairs(self) -> int:
        return sum(shard.n_pairs for shard in self.shards)

    @property
    def recipe_digest(self) -> int:
        """A number fixed by the recipe alone: the same dataset gets the same validation
        split wherever it is stored."""
        return recipe_digest(self.manifest.recipe_sha256)


def recipe_digest(sha256: str) -> int:
    """The first 8 bytes of a recipe's sha256 (hex, of its canonical JSON), as a number:
    what the validation split of the recipe's pairs is drawn from."""
    return int.from_bytes(bytes.fromhex(sha256)[:8], "little")


def is_shard_name(name: object) -> bool:
    """A shard name exactly as docs/FORMAT.md writes it (``doppelgen.format.shard_index``): names
    read from a manifest become paths and URLs (and, for pipe: datasets, part of a shell
    command), so anything else is refused before it is used."""
    return shard_index(name) is not None


def member_url(location: str, name: str) -> str:
    """The URL of file ``name`` of a URL dataset: ``pipe:`` commands name it with a
    ``{name}`` placeholder, other URLs are folders that ``name`` is appended to. Only
    ``manifest.json`` and shard names are ever filled in (DataError otherwise), so nothing
    read from a dataset reaches a shell."""
    if name != MANIFEST_NAME and not is_shard_name(name):
        raise DataError(f"{location}: refusing to open {shown(name)}: not {MANIFEST_NAME} or pairs-NNNNNN.tar")
    if location.startswith("pipe:"):
        if "{name}" not in location:
            raise DataError(
                f"{location}: a pipe: dataset needs a {{name}} placeholder for {MANIFEST_NAME} and the shard names"
            )
        return location.replace("{name}", name)
    return location.rstrip("/") + "/" + name


def read_url_manifest(location: str) -> Manifest:
    """Read and check ``manifest.json`` of a URL dataset through webdataset's gopen."""
    url = member_url(location, MANIFEST_NAME)
    try:
        with wds.gopen(url, "rb") as stream:
            # One byte past the limit: parse_manifest then refuses it as too large.
            data = stream.read(MAX_MANIFEST_BYTES + 1)
    except Exception as error:  # gopen raises whatever its scheme's tool raises
        raise DataError(f"{location}: cannot read {MANIFEST_NAME} ({one_line(error)})") from None
    try:
        return parse_manifest(data, location)
    except FormatError as error:
        raise DataError(one_line(error)) from None


def record_shards(location: str, manifest: Manifest) -> tuple[ShardEntry, ...]:
    """The manifest's shard entries (``format.check_manifest`` checked their names and
    pair counts); a one-line DataError if it records none."""
    if manifest.shards is None:
        raise DataError(f"{location}: manifest has no record of its shards (rendering not finished?)")
    return manifest.shards


def _stored_entries(location: str, store: Store, manifest: Manifest) -> list[ShardEntry]:
    """The manifest's entries of shards complete in the store (tar and stats listed) whose
    tars are large enough for the pairs the manifest says they hold (logged and left out
    otherwise): a manifest cannot make an epoch longer than what is stored."""
    sizes = store.sizes()
    entries = []
    for entry in record_shards(location, manifest):
        name = entry.name
        complete = name in sizes and stats_name(entry.index) in sizes
        size = sizes[name] if complete else None
        if size is None:
            logger.warning("%s: %s is in the manifest but not complete on disk; skipped", location, name)
            continue
        if entry.n_pairs * MIN_PAIR_BYTES > size:
            logger.warning(
                "%s: the manifest says %s holds %d pairs, more than its %d bytes can; skipped",
                location, name, entry.n_pairs, size,
            )
            continue
        entries.append(entry)
    return entries


def _open_dataset_store(location: str) -> Store:
    try:
        store = open_store(location)
        if not store.found():
            raise DataError(f"{location}: no such dataset folder")
        if not complete_shards(store):
            raise DataError(f"{location}: no complete shards (pairs-NNNNNN.tar with its .stats.json)")
    except OSError as error:  # storage.StorageError: a bad URL, no credentials, no answer
        raise DataError(one_line(error)) from None
    return store


def discover_dataset(location: str, sample_rate: int) -> DatasetInfo:
    """Read one dataset's manifest and list its complete shards with their sizes. A folder
    or storage URL (``file://``, ``s3://``, ``gs://``) is listed; any other URL (``pipe:``,
    ``http://``) cannot be, and its manifest, written last, vouches for its shards."""
    if not is_store_location(location):
        manifest = read_url_manifest(location)
        entries = record_shards(location, manifest)
        urls = {entry.name: member_url(location, entry.name) for entry in entries}
    else:
        store = _open_dataset_store(location)
        try:
            manifest = read_manifest(store)
        except FormatError as error:
            raise DataError(one_line(error)) from None
        except RecursionError:  # json's answer to nesting deeper than it can parse
            raise DataError(f"{location}: unreadable manifest (nested too deeply)") from None
        except OSError as error:
            raise DataError(one_line(error)) from None
        try:
            entries = _stored_entries(location, store, manifest)
        except OSError as error:
            raise DataError(one_line(error)) from None
        urls = {entry.name: store.where(entry.name) for entry in entries}
    rate = manifest.sample_rate
    if rate != sample_rate:
        raise DataError(f"{location}: sample rate {rate} Hz, but the model is built for {sample_rate} Hz")
    clip = manifest.n_samples
    if not 0 < clip <= MAX_CLIP_SECONDS * rate:
        raise DataError(f"{location}: clips of {manifest.duration} s; fit reads clips of at most {MAX_CLIP_SECONDS} s")
    shards = tuple(
        ShardRef(url=urls[entry.name], n_pairs=entry.n_pairs, n_samples=clip)
        for entry in sorted(entries, key=lambda entry: entry.name)
        if entry.n_pairs > 0
    )
    if not shards:
        raise DataError(f"{location}: no readable pairs (every shard is empty, incomplete or too small for its pairs)")
    return DatasetInfo(location=location, manifest=manifest, shards=shards, sample_rate=rate, n_samples=clip)


def discover(datasets: Sequence[str], sample_rate: int) -> list[DatasetInfo]:
    """Every dataset's manifest and complete shards; one-line DataError on the first
    dataset that is missing, empty, of an unknown format version or of another rate, or
    whose manifest names its shards wrongly or claims more pairs than they can hold."""
    if not datasets:
        raise DataError("no datasets given")
    infos = [discover_dataset(str(location), sample_rate) for location in datasets]
    lengths = {info.n_samples for info in infos}
    if len(lengths) > 1:
        # Batches stack clips, so a run reads one clip length.
        raise DataError(f"datasets differ in clip length ({', '.join(str(n) for n in sorted(lengths))} samples)")
    return infos


# --- the validation split ------------------------------------------------------------


def n_val_shards(n_shards: int, val_shards: float) -> int:
    """How many of a dataset's shards to hold out: a fraction (< 1) or a count (>= 1), at
    least one when asked for any, and never all of them."""
    if val_shards <= 0:
        return 0
    wanted = max(1, round(val_shards * n_shards)) if val_shards < 1 else int(val_shards)
    return min(wanted, n_shards - 1)


def held_out_shards(n_shards: int, held: int, seed: int, digest: int) -> set[int]:
    """Which ``held`` of ``n_shards`` shards are held out: a function of the seed and the
    recipe's digest alone, shared by frozen datasets and streamed recipes (whose held-out
    shards are those of a frozen render of the same recipe)."""
    rng = np.random.default_rng([seed, digest])
    return set(rng.permutation(n_shards)[:held].tolist())


def split_shards(
    infos: Sequence[DatasetInfo], val_shards: float, seed: int
) -> tuple[list[ShardRef], list[ShardRef]]:
    """Hold out validation shards per dataset; returns ``(train, val)``.

    The held-out shards are a function of ``seed`` and the dataset's recipe only, so moving
    a dataset or listing datasets in another order keeps its split. A dataset of a single
    shard keeps it for training and gets no validation shard (logged): training without
    data is worse than validating without it.
    """
    if val_shards < 0:
        raise DataError(f"--val-shards must be >= 0, got {val_shards}")
    train, val = [], []
    for info in infos:
        n = len(info.shards)
        held = n_val_shards(n, val_shards)
        if val_shards > 0 and held == 0:
            logger.warning("%s: only %d shard; none held out for validation", info.location, n)
        chosen = held_out_shards(n, held, seed, info.recipe_digest)
        for position, shard in enumerate(info.shards):
            (val if position in chosen else train).append(shard)
    return train, val


def manifest_digests(datasets: Iterable[tuple[str, Manifest]]) -> dict[str, str]:
    """``{location: sha256}`` of each dataset's manifest, from ``(location, manifest)`` pairs.

    A local folder's digest is that of its ``manifest.json`` bytes (what ``sha256sum``
    prints); a URL dataset, whose file is not at hand, gets the digest of the manifest's
    canonical JSON (``doppelgen.format.dump_json``).
    """
    digests = {}
    for location, manifest in datasets:
        path = Path(location) / MANIFEST_NAME
        if "://" not in str(location) and path.is_file():
            digests[str(location)] = file_sha256(path)[0]
        else:
            digests[str(location)] = hashlib.sha256(dump_json(manifest.data)).hexdigest()
    return digests
