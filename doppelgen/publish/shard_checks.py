"""What one shard must hold: its checksums, its members' names and order, audio and JSON.

``check_shard`` reads a shard end to end against a ``ShardExpectation`` (what the
manifest says it holds) and returns its problems, one line each, naming the shard and
member. It is pure given the files, so shards can be checked in any order or process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from doppelgen.console import one_line
from doppelgen.files import stream_sha256
from doppelgen.format import (
    FormatError,
    audio_extension,
    decode_clip,
    group_members,
    is_number,
    iter_tar_members,
    member_names,
    pair_index,
    pair_key,
    parse_sample_json,
    read_stats,
    shard_name,
    shown,
    stats_name,
)
from doppelgen.storage import Store, open_store

MAX_PROBLEMS_PER_SHARD = 20


@dataclass(frozen=True)
class ShardExpectation:
    """What one shard must hold, from the manifest (fields are None where it is silent)."""

    index: int
    codec: str
    sample_rate: int | None  # None: unknown (no manifest and no readable clip)
    n_samples: int | None
    first_pair: int | None = None
    n_pairs: int | None = None
    sha256: str | None = None
    bytes: int | None = None
    seed: int | None = None
    n_params: int | None = None
    n_layers: int = 1  # synth layers: the JSON has ``layers`` exactly when > 1
    view_bounds: tuple[float, float] | None = None  # synth views live in [eps, 1]
    sample_text_fields: tuple[str, ...] = ()  # text fields every sample's JSON holds (packed: its source)

    @property
    def name(self) -> str:
        return shard_name(self.index)


def check_sample_json(meta: dict, expected_index: int, exp: ShardExpectation) -> list[str]:
    """docs/FORMAT.md's JSON fields of one pair, beyond what ``parse_sample_json`` ensures."""
    problems = []
    if meta["index"] != expected_index:
        problems.append(f"index {shown(meta['index'])}, expected {expected_index}")
    if exp.seed is not None and meta["seed"] != exp.seed:
        problems.append(f"seed {shown(meta['seed'])}, expected {exp.seed}")
    layers = meta.get("layers")
    if exp.n_layers > 1:
        if not (isinstance(layers, list) and len(layers) == exp.n_layers):
            problems.append(f"layers must list {exp.n_layers} params objects")
            layers = None
    elif layers is not None:
        problems.append("layers present, but the recipe has one layer")
    for params in [meta["params"]] + (layers or []):
        problems += check_params(params, exp)
    for name in exp.sample_text_fields:
        if not isinstance(meta.get(name), str):
            problems.append(f"{name} is missing or not text")
    return problems


def check_params(params: Any, exp: ShardExpectation) -> list[str]:
    if not (isinstance(params, dict) and set(params) >= {"base", "a", "b"}):
        return ["params must be an object with base, a and b"]
    problems = []
    for part in ("base", "a", "b"):
        values = params[part]
        if not (isinstance(values, list) and all(is_number(v) for v in values)):
            problems.append(f"params.{part} is not a list of numbers")
            continue
        if exp.n_params is not None and len(values) != exp.n_params:
            problems.append(f"params.{part} has {len(values)} values, the manifest names {exp.n_params}")
        elif not all(isinstance(v, int) or math.isfinite(v) for v in values):  # ints cannot be NaN
            problems.append(f"params.{part} holds a non-finite value")
        elif exp.view_bounds is not None and values:
            low, high = (0.0, 1.0) if part == "base" else exp.view_bounds
            if min(values) < low or max(values) > high:
                problems.append(f"params.{part} leaves [{low:g}, {high:g}]")
    return problems


def check_pair(key: str, group: list[tuple[str, bytes]], expected_index: int, exp: ShardExpectation) -> list[str]:
    """Names, order, audio and JSON of one pair's members; problems as ``member: what``."""
    expected_names = list(member_names(expected_index, audio_extension(exp.codec)))
    names = [name for name, _ in group]
    if names != expected_names:
        return [f"{shown(key, 120, quoted=False)}: members {shown(', '.join(names), 120, quoted=False)}; expected {', '.join(expected_names)}"]
    data = dict(group)
    name_a, name_b, name_json = expected_names
    try:
        meta = parse_sample_json(data[name_json])
    except FormatError as error:
        return [f"{name_json}: {error}"]
    problems = [f"{name_json}: {p}" for p in check_sample_json(meta, expected_index, exp)]
    if key != pair_key(expected_index):
        problems.append(f"{name_json}: key {key} does not match index {expected_index}")
    for name, gain in ((name_a, meta["gain"][0]), (name_b, meta["gain"][1])):
        try:
            audio, rate = decode_clip(data[name], gain)
        except FormatError as error:
            problems.append(f"{name}: {error}")
            continue
        if exp.sample_rate is not None and rate != exp.sample_rate:
            problems.append(f"{name}: {rate} Hz, expected {exp.sample_rate}")
        if exp.n_samples is not None and len(audio) != exp.n_samples:
            problems.append(f"{name}: {len(audio)} samples, expected {exp.n_samples}")
        if not np.isfinite(audio).all():
            problems.append(f"{name}: non-finite audio")
    return problems


def check_shard(folder: str | Store, exp: ShardExpectation) -> tuple[list[str], int]:
    """Every check of one shard of the dataset at ``folder`` (a path, URL or store);
    returns ``(problems, pairs read)``. An object store's shard is fetched once."""
    store = open_store(folder)
    if not store.exists(exp.name):
        return [f"{exp.name}: missing"], 0
    try:
        with store.open_local(exp.name) as tar:
            return _check_shard_file(store, tar, exp)
    except OSError as error:
        return [f"{exp.name}: unreadable ({error.strerror or one_line(error)})"], 0


def _check_shard_file(store: Store, tar: BinaryIO, exp: ShardExpectation) -> tuple[list[str], int]:
    problems: list[str] = []
    stats = stats_name(exp.index)
    digest, size = stream_sha256(tar)
    if exp.sha256 is not None and digest != exp.sha256:
        problems.append(f"{exp.name}: sha256 {digest[:16]}... differs from the manifest's {exp.sha256[:16]}...")
    if exp.bytes is not None and size != exp.bytes:
        problems.append(f"{exp.name}: {size} bytes, the manifest says {exp.bytes}")
    stats_n_pairs = None
    try:
        record = read_stats(store, stats)
        stats_n_pairs = record.get("n_pairs")
        if record.get("sha256") != digest:
            problems.append(f"{stats}: sha256 does not match {exp.name} (shard changed after it was written)")
    except FileNotFoundError:
        problems.append(f"{stats}: missing, so {exp.name} is not complete")
    except FormatError as error:
        problems.append(f"{stats}: unreadable ({error})")
    if not (isinstance(stats_n_pairs, int) and not isinstance(stats_n_pairs, bool)):
        stats_n_pairs = None

    n_expected = exp.n_pairs if exp.n_pairs is not None else stats_n_pairs
    sequence = PairSequence(exp, n_expected)
    try:
        tar.seek(0)
        for key, group in group_members(iter_tar_members(tar, exp.name)):
            problems += sequence.check(key, group)
            if len(problems) > MAX_PROBLEMS_PER_SHARD:
                break
    except FormatError as error:
        message = str(error)  # iter_tar_members names the shard already
        problems.append(message if message.startswith(f"{exp.name}: ") else f"{exp.name}: {message}")
    else:
        if n_expected is not None and sequence.pairs != n_expected and len(problems) <= MAX_PROBLEMS_PER_SHARD:
            problems.append(f"{exp.name}: holds {sequence.pairs} pairs, the manifest says {n_expected}")
    if len(problems) > MAX_PROBLEMS_PER_SHARD:
        hidden = len(problems) - MAX_PROBLEMS_PER_SHARD
        problems = problems[:MAX_PROBLEMS_PER_SHARD] + [f"{exp.name}: {hidden}+ more problems not shown"]
    return problems, sequence.pairs


class PairSequence:
    """Checks a shard's member groups in order, each pair against the index its key
    names: one junk member, a missing or a repeated pair is reported once instead of
    shifting every later pair. ``pairs`` counts the pairs read."""

    def __init__(self, exp: ShardExpectation, n_expected: int | None):
        self.exp, self.n_expected = exp, n_expected
        self.first = self.next_index = exp.first_pair  # None without a manifest: the first key
        self.pairs = 0

    def check(self, key: str, group: list[tuple[str, bytes]]) -> list[str]:
        shard = self.exp.name
        index = pair_index(key)
        if index is None:
            names = shown(", ".join(name for name, _ in group), 120, quoted=False)
            return [f"{shard}: {names}: not a member of any pair (its key is not a 10-digit pair index)"]
        if self.first is None:
            self.first = self.next_index = index
        problems = []
        end = self.first + self.n_expected if self.n_expected is not None else math.inf
        expected = self.next_index
        if index != expected and self.first <= index < end:
            if index > expected:
                gap = pair_key(expected) if index - 1 == expected else f"{pair_key(expected)} to {pair_key(index - 1)}"
                problems.append(f"{shard}: {gap} missing before {key}")
            else:
                problems.append(f"{shard}: {key}: pair {index} again, or out of order")
            expected = index
        problems += [f"{shard}: {p}" for p in check_pair(key, group, expected, self.exp)]
        self.next_index = max(self.next_index, expected + 1)
        self.pairs += 1
        return problems
