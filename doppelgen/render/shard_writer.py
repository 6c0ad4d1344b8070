"""One shard end to end: encode its pairs, write the tar and its stats file atomically.

Runs in worker processes, so it imports neither JAX nor the kernel.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass

import numpy as np

from doppelgen.format import (
    TAR_MODE,
    TAR_MTIME,
    TAR_USER,
    audio_extension,
    dump_json,
    encode_clip,
    pair_key,
    shard_name,
    stats_name,
)
from doppelgen.storage import Store, open_store

# A clip whose RMS is below this (relative to full scale 1.0) counts as near-silent.
SILENCE_RMS = 1e-3


@dataclass(frozen=True)
class ShardOptions:
    """What encoding a shard takes from its recipe besides the pairs: the seed (in every
    sample's JSON), the sample rate and codec, and the recipe's sha256 (in the stats file,
    which ties the shard to its recipe)."""

    seed: int
    sample_rate: int
    codec: str
    recipe_sha256: str


@dataclass
class ShardPairs:
    """The pairs of one shard, rows in global-index order."""

    shard: int
    indices: np.ndarray  # (N,)
    a: np.ndarray  # (N, T) float32
    b: np.ndarray  # (N, T) float32
    params: np.ndarray  # (N, n_layers, 3, P) float32: base, view a, view b
    redraws: np.ndarray  # (N,)


def params_json(params: np.ndarray) -> dict:
    """docs/FORMAT.md's ``params`` (layer 0) and, for several layers, ``layers``."""
    layers = [{"base": p[0].tolist(), "a": p[1].tolist(), "b": p[2].tolist()} for p in params.astype(np.float64)]
    meta = {"params": layers[0]}
    if len(layers) > 1:
        meta["layers"] = layers
    return meta


def pair_sample(
    index: int, seed: int, a: np.ndarray, b: np.ndarray, params: np.ndarray, sample_rate: int, codec: str, extra: dict | None = None
) -> dict:
    """The WebDataset sample of one pair: ``__key__`` and member bytes by extension.
    ``extra`` adds JSON fields beyond docs/FORMAT.md's (``doppelgen pack`` names the source)."""
    a_bytes, gain_a = encode_clip(a, sample_rate, codec)
    b_bytes, gain_b = encode_clip(b, sample_rate, codec)
    meta = {"index": int(index), "seed": int(seed), "gain": [gain_a, gain_b], **params_json(params), **(extra or {})}
    extension = audio_extension(codec)
    return {"__key__": pair_key(index), f"a.{extension}": a_bytes, f"b.{extension}": b_bytes, "json": dump_json(meta)}


def tar_bytes(samples: list[dict]) -> bytes:
    """A byte-reproducible tar: fixed member order, mtime, owner and mode; no compression.

    Written with the standard library's tarfile the way webdataset's TarWriter writes
    (members of a sample in sorted extension order), because importing webdataset pulls
    in torch: seconds of start-up and hundreds of MB in every encoding worker.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for sample in samples:
            key = sample["__key__"]
            for extension in sorted(k for k in sample if not k.startswith("_")):
                data = sample[extension]
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(data), TAR_MTIME, TAR_MODE
                info.uname = info.gname = TAR_USER
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def audio_stats(pairs: ShardPairs) -> dict:
    clips = np.concatenate([pairs.a, pairs.b])
    n_clips, n_samples = clips.shape
    # Summed in float64 (numpy casts in buffered chunks, no copy): float32 squares of a
    # loud but finite clip overflow, and an infinite mean_rms would make the stats invalid JSON.
    rms = np.sqrt(np.einsum("ij,ij->i", clips, clips, dtype=np.float64) / max(n_samples, 1)) if clips.size else np.zeros(0)
    attempts = len(pairs.indices) + int(pairs.redraws.sum())
    return {
        "peak": float(np.max(np.abs(clips))) if clips.size else 0.0,
        "mean_rms": float(rms.mean()) if n_clips else 0.0,
        "silent_fraction": float(np.mean(rms < SILENCE_RMS)) if n_clips else 0.0,
        "nonfinite_fraction": float(pairs.redraws.sum() / attempts) if attempts else 0.0,
        "redraws": int(pairs.redraws.sum()),
    }


def write_shard(out_dir: str | os.PathLike | Store, pairs: ShardPairs, options: ShardOptions) -> dict:
    """Encode and write one complete shard; returns its manifest entry.

    The tar goes into place first and the stats file second: a shard is complete only
    when both exist, so a crash between the two leaves it to be rendered again.
    """
    samples = [
        pair_sample(index, options.seed, pairs.a[row], pairs.b[row], pairs.params[row], options.sample_rate, options.codec)
        for row, index in enumerate(pairs.indices)
    ]
    return write_samples(out_dir, pairs.shard, samples, audio_stats(pairs), options.recipe_sha256)


def write_samples(out_dir: str | os.PathLike | Store, shard: int, samples: list[dict], stats: dict, recipe_sha256: str) -> dict:
    """Write shard ``shard`` from encoded samples into a folder, URL or store, the tar
    first and its stats file second, each whole or not at all (``Store.put``); returns its
    manifest entry (name, n_pairs, bytes, sha256 and ``stats``)."""
    store = open_store(out_dir)
    data = tar_bytes(samples)
    name = shard_name(shard)
    entry = {
        "name": name,
        "n_pairs": len(samples),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        **stats,
    }
    store.put(name, data)
    record = dict(entry, recipe_sha256=recipe_sha256)
    store.put(stats_name(shard), json.dumps(record, indent=1, sort_keys=True, allow_nan=False).encode())
    return entry
