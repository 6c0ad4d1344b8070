"""Names and constants of the pair-shard format: versions, shard, key and member names."""

from __future__ import annotations

import os
import re
from typing import Any

from doppelgen.console import InputError

FORMAT_VERSION = 1
SUPPORTED_FORMATS = (1,)
MANIFEST_NAME = "manifest.json"
AUDIO_MEMBERS = ("a.flac", "b.flac")
# A fixed member mtime makes a shard's sha256 a fact about its content.
TAR_MTIME = 0
TAR_USER = "doppelgen"
TAR_MODE = 0o444

# Whole names only (fullmatch, ASCII digits): no folder, no "../", no trailing newline.
_SHARD_RE = re.compile(r"pairs-([0-9]{6})\.tar")
_KEY_RE = re.compile(r"[0-9]{10}")


class FormatError(InputError):
    """A dataset, shard or sample does not follow docs/FORMAT.md; the message is one line."""


def shard_name(index: int) -> str:
    return f"pairs-{index:06d}.tar"


def stats_name(index: int) -> str:
    return f"pairs-{index:06d}.stats.json"


def shard_index(name: Any) -> int | None:
    """The index of a final shard name (``pairs-000012.tar`` -> 12), None for anything
    else. The name must be exactly that: no folder, no ``../``, no absolute path, so a
    name read from a manifest can never point a reader outside its dataset."""
    match = _SHARD_RE.fullmatch(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def pair_index(key: Any) -> int | None:
    """The global pair index of a WebDataset key (``0000000012`` -> 12), None for anything else."""
    return int(key) if isinstance(key, str) and _KEY_RE.fullmatch(key) else None


def pair_key(index: int) -> str:
    return f"{index:010d}"


def member_names(index: int, extension: str = "flac") -> tuple[str, str, str]:
    """The three member names of pair ``index`` in their order in the tar, its clips
    stored with ``extension`` (``format.audio_extension`` of the codec)."""
    key = pair_key(index)
    return f"{key}.a.{extension}", f"{key}.b.{extension}", f"{key}.json"


def n_samples(duration: float, sample_rate: int) -> int:
    return int(round(duration * sample_rate))



def split_member_name(name: str) -> tuple[str, str]:
    """``0000000012.a.flac`` -> (``0000000012``, ``a.flac``): the WebDataset key rule."""
    base = os.path.basename(name)
    key, _, extension = base.partition(".")
    return key, extension
