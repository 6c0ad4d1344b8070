"""Reading a shard's tar with memory bounded by the file: members in order, grouped into samples, then pairs."""

from __future__ import annotations

import os
import tarfile
from contextlib import nullcontext
from typing import BinaryIO, Iterable, Iterator

from doppelgen.console import one_line
from doppelgen.files import open_regular_file
from doppelgen.format.limits import shown
from doppelgen.format.names import FormatError, split_member_name
from doppelgen.format.samples import Pair, decode_pair

# A member of a pair shard is a clip (at most MAX_CLIP_SAMPLES float32 samples, with
# headers) or a sample's JSON; anything larger is refused before it is read.
MAX_MEMBER_BYTES = 64 << 20


class _FileWithinItsSize:
    """A binary file that never reads or seeks past its end. tarfile reads a header's
    claimed size in one ``read(n)``, and Python allocates ``n`` bytes before reading: a
    hostile size field cost 24 GB of address space, or an OverflowError in seek."""

    mode = "rb"

    def __init__(self, handle, size: int):
        self.handle, self.size, self.name = handle, size, getattr(handle, "name", None)

    def read(self, n: int | None = -1) -> bytes:
        remaining = max(0, self.size - self.handle.tell())
        return self.handle.read(remaining if n is None or n < 0 else min(n, remaining))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            offset = min(max(offset, 0), self.size)
        elif whence == os.SEEK_CUR:
            offset, whence = min(max(self.handle.tell() + offset, 0), self.size), os.SEEK_SET
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


def iter_tar_members(path: str | os.PathLike | BinaryIO, name: str | None = None) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of the regular files of a tar, in tar order; links,
    folders and other kinds are passed over. A damaged tar, a member past the end of
    the file, a sparse member or one over ``MAX_MEMBER_BYTES`` raises FormatError, so
    memory is bounded by what is on disk. ``path`` may also be a seekable binary file
    (``storage``'s copy of an object, say), read from its start; ``name`` names it in
    messages."""
    opened = hasattr(path, "read")
    shard = shown(name or (os.path.basename(getattr(path, "name", "tar") or "tar") if opened else os.path.basename(path)), 120, quoted=False)
    try:
        # A regular file only: a FIFO put in a shard's place would block the reader forever.
        with nullcontext(path) if opened else open_regular_file(path) as handle:
            file_size = handle.seek(0, os.SEEK_END) if opened else os.fstat(handle.fileno()).st_size
            handle.seek(0)
            archive = tarfile.open(fileobj=_FileWithinItsSize(handle, file_size), mode="r:")
            for info in archive:
                if not info.isfile():
                    continue
                member = shown(info.name, 120, quoted=False)
                if info.issparse() or info.size > MAX_MEMBER_BYTES:
                    raise FormatError(f"{shard}: {member} claims {info.size} bytes (sparse or over {MAX_MEMBER_BYTES})")
                if info.offset_data + info.size > file_size:
                    raise FormatError(f"{shard}: {member} is truncated")
                extracted = archive.extractfile(info)
                data = extracted.read() if extracted is not None else b""
                if len(data) != info.size:
                    raise FormatError(f"{shard}: {member} is truncated")
                yield info.name, data
    except (tarfile.TarError, EOFError, OSError) as error:
        raise FormatError(f"{shard}: unreadable tar ({one_line(error)[:200]})") from None


def group_members(members: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """Consecutive members sharing a WebDataset key (:func:`split_member_name`), as
    ``(key, [(name, bytes), ...])``: the samples of a shard, for every reader."""
    key, group = None, []
    for name, data in members:
        member_key, _ = split_member_name(name)
        if key is not None and member_key != key:
            yield key, group
            group = []
        key = member_key
        group.append((name, data))
    if key is not None:
        yield key, group


def iter_shard_pairs(path: str | os.PathLike) -> Iterator[Pair]:
    """Decode every pair of one local shard, in order."""
    for key, group in group_members(iter_tar_members(path)):
        yield decode_pair(key, {split_member_name(name)[1]: data for name, data in group})
