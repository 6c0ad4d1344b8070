"""Shards to samples to batch rows: each sample checked and decoded in place; bad data logged, counted and skipped."""

from __future__ import annotations

import logging
import multiprocessing as mp
from typing import Iterable, Iterator, Sequence

import numpy as np
from webdataset.tariterators import tar_file_expander, url_opener

from doppelgen.console import one_line
from doppelgen.format import FormatError, decode_pair, group_members, iter_tar_members, pair_key, shown, split_member_name
from doppelgen.storage import is_store_location, local_folder, open_object
from doppeltrain.data.batches import BatchBuilder
from doppeltrain.data.datasets import ShardRef

logger = logging.getLogger(__name__)


class SampleReader:
    """Reads shards into samples and decodes them into batch rows. Whatever cannot be
    used (a member, a sample, the rest of a shard) is logged, counted in :attr:`skipped`
    (shared with the worker processes) and skipped."""

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.skipped = mp.Value("i", 0)

    def skip(self, error: BaseException) -> bool:
        """Log and count one piece of bad data; True: carry on (webdataset's handler)."""
        with self.skipped.get_lock():
            self.skipped.value += 1
        logger.warning("skipped unreadable data: %s", one_line(error))
        return True

    # -- shards to samples

    def samples(self, shards: Sequence[ShardRef]) -> Iterator[dict]:
        """Samples of ``shards`` in order, as webdataset's dicts (``__key__``, ``__url__``,
        member bytes by extension): members grouped by ``doppelgen.format.group_members``,
        the grouper of every reader. A key a shard holds twice is read once, and so is a
        member a sample holds twice."""
        for shard in shards:
            seen = set()
            for key, group in group_members(self._members(shard.url)):
                if key in seen:
                    # verify flags such a shard; training on the pair twice would weigh it double
                    self.skip(FormatError(f"{shard.url}: sample {key} appears again; the repeat is skipped"))
                    continue
                seen.add(key)
                sample = {"__key__": key, "__url__": shard.url}
                for name, data in group:
                    extension = split_member_name(name)[1]
                    if extension in sample:
                        self.skip(FormatError(f"{shard.url}: {shown(name, 120, quoted=False)} appears again; the repeat is skipped"))
                        continue
                    sample[extension] = data
                yield sample

    def _members(self, url: str) -> Iterator[tuple[str, bytes]]:
        """``(name, bytes)`` of a shard's members in tar order; what cannot be read is
        logged, counted and ends the shard."""
        if not is_store_location(url):  # pipe:, http://: webdataset's gopen
            records = tar_file_expander(url_opener([{"url": url}], handler=self.skip), handler=self.skip, eof_value=None)
            yield from ((record["fname"], record["data"]) for record in records)
        elif (path := local_folder(url)) is not None:  # a path or file://
            yield from self._local_members(str(path), url)
        else:  # an object store: streamed through fsspec
            yield from self._stored_members(url)

    def _stored_members(self, url: str) -> Iterator[tuple[str, bytes]]:
        """The members of a tar streamed from an object store, read ahead in large ranged
        requests (``storage.ObjectStore.open``) by webdataset's stream reader."""
        try:
            stream = open_object(url)
        except OSError as error:  # storage.StorageError or a missing object
            self.skip(FormatError(f"{url}: unreadable tar ({one_line(error)})"))
            return
        with stream:
            records = tar_file_expander([{"url": url, "stream": stream}], handler=self.skip, eof_value=None)
            yield from ((record["fname"], record["data"]) for record in records)

    def _local_members(self, path: str, url: str) -> Iterator[tuple[str, bytes]]:
        """The members of a local tar through ``doppelgen.format.iter_tar_members``, the
        bounded reader that ``verify`` and the fuzz tests use: random access (tarfile's
        stream mode, webdataset's for URLs, costs a fifth of the FLAC decoding), and no
        member past the file's end, sparse or over ``MAX_MEMBER_BYTES`` is ever allocated.
        ``url``: how the shard was named, for messages."""
        try:
            yield from iter_tar_members(path, url)
        except FormatError as error:
            self.skip(error)

    # -- samples to rows

    def decode(self, samples: Iterable[dict], batch: BatchBuilder) -> Iterator[str]:
        """Decode each sample into ``batch``'s free rows; yields the key of each pair decoded
        (the caller adds it to the batch). A sample that cannot be used, whatever the
        reason, is skipped and named with its shard: its rows stay free."""
        for sample in samples:
            key = sample.get("__key__", "?")
            try:
                members = {name: value for name, value in sample.items() if not name.startswith("__")}
                self.decode_pair_into(key, members, *batch.free_rows())
            except Exception as error:  # crafted data raises more than FormatError (deep JSON: RecursionError)
                self.skip(FormatError(f"{sample.get('__url__')}: sample {key}: {one_line(error)}"))
                continue
            yield key

    def decode_pair_into(self, key: str, members: dict[str, bytes], row_a: np.ndarray, row_b: np.ndarray) -> None:
        """``doppelgen.format.decode_pair`` into two given rows (they fix the clip length;
        it refuses gains that are not finite or absurd), then checked: this stream's
        sample rate, an index that matches the key, and finite audio (a float WAV may
        hold NaN). FormatError if the sample is unusable (the rows then hold junk)."""
        pair = decode_pair(key, members, out=(row_a, row_b))
        if pair.sample_rate != self.sample_rate:
            raise FormatError(f"{pair.sample_rate} Hz, expected {self.sample_rate} Hz")
        index = pair.meta["index"]
        if type(index) is not int or index < 0 or pair_key(index) != key:
            raise FormatError(f"its JSON says index {shown(index, 40)}, not the key's")
        if not (np.isfinite(row_a).all() and np.isfinite(row_b).all()):
            raise FormatError("audio holds NaN or infinity")
