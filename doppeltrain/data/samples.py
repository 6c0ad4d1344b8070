"""Shards to samples to batch rows: each sample checked and decoded in place; bad data logged, counted and skipped."""

from __future__ import annotations

import logging
import multiprocessing as mp
import tarfile
from typing import Iterable, Iterator, Sequence

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

from doppelgen.console import one_line
from doppelgen.files import open_regular_file
from doppelgen.format import FormatError, decode_pair, pair_key
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
        """Samples (members grouped by key) of ``shards`` in order; a key a shard holds
        twice is read once."""
        return self._first_of_each_key(group_by_keys(self._members(shards), handler=self.skip))

    def _members(self, shards: Sequence[ShardRef]) -> Iterator[dict]:
        for shard in shards:
            if not is_store_location(shard.url):  # pipe:, http://: webdataset's gopen
                yield from tar_file_expander(url_opener([{"url": shard.url}], handler=self.skip), handler=self.skip)
            elif (path := local_folder(shard.url)) is not None:  # a path or file://
                yield from self._local_members(str(path), shard.url)
            else:  # an object store: streamed through fsspec
                yield from self._stored_members(shard.url)

    def _stored_members(self, url: str) -> Iterator[dict]:
        """webdataset's member records for a tar streamed from an object store, read ahead
        in large ranged requests (``storage.ObjectStore.open``)."""
        try:
            stream = open_object(url)
        except OSError as error:  # storage.StorageError or a missing object
            self.skip(FormatError(f"{url}: unreadable tar ({one_line(error)})"))
            yield {}
            return
        with stream:
            yield from tar_file_expander([{"url": url, "stream": stream}], handler=self.skip)

    def _local_members(self, path: str, url: str | None = None) -> Iterator[dict]:
        """webdataset's member records for a local tar, read by random access: tarfile's
        stream mode (webdataset's, for URLs) costs a fifth of the FLAC decoding. ``url``:
        how the shard was named (a file:// URL), for messages and ``__url__``."""
        url = url or path
        try:
            # A regular file only: a FIFO put in a shard's place would block the worker.
            with open_regular_file(path) as raw, tarfile.open(fileobj=raw, mode="r:") as archive:
                for info in archive:
                    if info.isfile():
                        data = archive.extractfile(info).read()
                        if len(data) != info.size:
                            raise OSError(f"{info.name} is truncated")
                        yield {"fname": info.name, "data": data, "__url__": url}
        except (tarfile.TarError, EOFError, OSError) as error:
            self.skip(FormatError(f"{url}: unreadable tar ({one_line(error)})"))
        yield {}  # end of shard: samples never span two shards

    def _first_of_each_key(self, samples: Iterable[dict]) -> Iterator[dict]:
        """The samples, without a key seen before in the same shard (``verify`` flags such
        a shard; training on the pair twice would weigh it double)."""
        shard, seen = None, set()
        for sample in samples:
            if sample.get("__url__") != shard:
                shard, seen = sample.get("__url__"), set()
            key = sample["__key__"]
            if key in seen:
                self.skip(FormatError(f"{shard}: sample {key} appears again; the repeat is skipped"))
                continue
            seen.add(key)
            yield sample

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
            raise FormatError(f"its JSON says index {repr(index)[:40]}, not the key's")
        if not (np.isfinite(row_a).all() and np.isfinite(row_b).all()):
            raise FormatError("audio holds NaN or infinity")
