"""Builders shared by the tests of the training input pipeline (doppeltrain.data).

Plain functions over the session's ``voice_shards`` (4 shards of 8 one-second pairs).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Callable

import torch

from doppeltrain.config import TrainConfig
from doppeltrain.data import SharedEpoch, discover, make_loader, split_shards

SR = 16000
ALL_KEYS = [f"{i:010d}" for i in range(32)]  # voice_shards: 4 shards x 8 pairs


def config(batch_size: int = 4, workers: int = 0, shuffle_buffer: int = 16, seed: int = 0) -> TrainConfig:
    cfg = TrainConfig(seed=seed, pairs_per_epoch=None)  # an epoch: one pass over the shards
    cfg.data.batch_size, cfg.data.workers, cfg.data.shuffle_buffer = batch_size, workers, shuffle_buffer
    return cfg


def all_shards(folder) -> list:
    return split_shards(discover([str(folder)], SR), 0, seed=0)[0]


def assert_batches_equal(shards, folder, n_batches: int) -> None:
    """``shards`` (read from a URL) load batch for batch as the local ``folder`` does,
    for training and for validation."""
    for train in (True, False):
        remote = list(make_loader(list(shards), config(), train=train, epoch_ref=SharedEpoch(0)))
        local = list(make_loader(all_shards(folder), config(), train=train, epoch_ref=SharedEpoch(0)))
        assert len(remote) == len(local) == n_batches
        for remote_batch, local_batch in zip(remote, local):
            assert remote_batch.keys == local_batch.keys
            assert torch.equal(remote_batch.a, local_batch.a) and torch.equal(remote_batch.b, local_batch.b)


def shard_keys(shards) -> list[str]:
    """The pair keys the given voice_shards shards hold (shard s: pairs 8s .. 8s+7)."""
    starts = [8 * int(Path(shard.url).stem[-1]) for shard in shards]
    return sorted(f"{i:010d}" for start in starts for i in range(start, start + 8))


def epoch_keys(loader, epoch: int) -> list[str]:
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    return [key for batch in batches for key in batch.keys]


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def edit_manifest(folder: Path, edit: Callable[[dict], None]) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def rewrite_shard(shard: Path, edit: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]) -> None:
    """Rewrite a shard's members ``[(name, bytes), ...]`` through ``edit``, as a plain tar."""
    with tarfile.open(shard) as archive:
        members = [(info.name, archive.extractfile(info).read()) for info in archive]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in edit(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def edit_sample_json(shard: Path, key: str, edit: Callable[[dict], object]) -> None:
    """Replace ``key``'s JSON member in ``shard`` by ``edit(meta)``: bytes as they are, any
    other value dumped as JSON (NaN and Infinity included)."""

    def replace(members):
        out = []
        for name, data in members:
            if name == f"{key}.json":
                value = edit(json.loads(data))
                data = value if isinstance(value, bytes) else json.dumps(value).encode()
            out.append((name, data))
        return out

    rewrite_shard(shard, replace)


def flip_member_bytes(shard: Path, member: str) -> None:
    """Flip 16 bytes in the middle of one member, in place (the tar stays readable)."""
    with tarfile.open(shard) as archive:
        info = archive.getmember(member)
    with open(shard, "r+b") as handle:
        handle.seek(info.offset_data + info.size // 2)
        data = handle.read(16)
        handle.seek(info.offset_data + info.size // 2)
        handle.write(bytes(byte ^ 0xFF for byte in data))
