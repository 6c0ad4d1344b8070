"""Where a dataset lives: a folder on this machine, or an object store reached through fsspec.

Everything that reads or writes a dataset goes through a store (:func:`open_store`):
list its names, read or stream an object, put a whole object atomically, create one only
if it is absent, delete one. Two kinds:

- :class:`LocalStore`, a folder given as a path or a ``file://`` URL: the code path and
  speed of plain files. A put writes a temporary in the folder and ``os.replace``s it
  (``doppelgen.files``); a create hard-links a written temporary to the name.
- :class:`ObjectStore`, ``s3://bucket/prefix`` or ``gs://bucket/prefix``: a put is one
  PUT of the whole object (a single request, or a multipart upload that the store
  assembles only on completion), so an object is either absent or whole and no
  temporary ever exists, under a final name or any other. A create is a conditional PUT
  (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``).

Both stores are made from a location string alone and hold no connection, so a worker
process or a cluster task opens its own from the same string. Endpoints and credentials
come from the environment, as for any AWS or Google tool (``AWS_ENDPOINT_URL``,
``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``; or fsspec's ``FSSPEC_S3_*``).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import unquote

from doppelgen.console import InputError, one_line
from doppelgen.files import open_regular_file, remove_dead_temporaries, temporary_path, write_atomic

# Object-store URL schemes -> (fsspec protocol, the package that implements it, our extra).
OBJECT_SCHEMES = {
    "s3": ("s3", "s3fs", "s3"),
    "s3a": ("s3", "s3fs", "s3"),
    "gs": ("gcs", "gcsfs", "gcs"),
    "gcs": ("gcs", "gcsfs", "gcs"),
}
# Reads of an object for random access are copied here first, in memory up to this size
# (a 100-pair voice shard is about 9 MB), on local disk beyond it.
SPOOL_BYTES = 64 << 20
# Streamed reads fetch this much per request: few requests per shard, bounded memory.
STREAM_BLOCK_BYTES = 8 << 20


class StorageError(OSError, InputError):
    """A location cannot be used (a bad URL, a missing package, no credentials, an
    endpoint that does not answer, a failed request); the message is one line. Bad input
    to a command line (exit 2), except where a command reports a write that failed
    midway as a failure (``render``, ``export``, ``pack``: exit 1)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a path."""
    return isinstance(location, str) and "://" in location


def local_folder(location: "str | os.PathLike | Store") -> Path | None:
    """The folder ``location`` names on this machine (a path, a ``file://`` URL or a
    :class:`LocalStore`), None for any other URL or store."""
    if isinstance(location, LocalStore):
        return location.folder
    if isinstance(location, ObjectStore):
        return None
    if not is_url(location):
        return Path(location)
    scheme, rest = str(location).split("://", 1)
    if scheme.lower() != "file":
        return None
    host, slash, path = rest.partition("/")
    if host not in ("", "localhost"):
        raise StorageError(f"{location}: a file:// URL names a folder on this machine (file:///path), not on {host}")
    return Path(unquote("/" + path if slash else "/"))


def is_store_location(location: object) -> bool:
    """Whether ``location`` is something :func:`open_store` opens: a path, or a ``file://``,
    ``s3://`` or ``gs://`` URL (not ``pipe:`` or ``http://``, which readers stream by other means)."""
    if not is_url(location):
        return not str(location).startswith("pipe:")
    return str(location).split("://", 1)[0].lower() in ("file", *OBJECT_SCHEMES)


def open_object(url: str) -> BinaryIO:
    """A binary handle streaming the object at ``url`` (``s3://bucket/prefix/name``, a path,
    ``file://``): its store's :meth:`open`."""
    location, _, name = str(url).rstrip("/").rpartition("/")
    return open_store(location or ".").open(name)


def open_store(location: str | os.PathLike | "Store") -> "Store":
    """The store ``location`` names: a :class:`LocalStore` for a path or ``file://`` URL, an
    :class:`ObjectStore` for ``s3://`` or ``gs://``. StorageError (one line) for any other
    URL, or when the package for the scheme is not installed."""
    if isinstance(location, (LocalStore, ObjectStore)):
        return location
    folder = local_folder(location)
    if folder is not None:
        return LocalStore(folder, str(location) if is_url(location) else None)
    return ObjectStore(str(location))


class LocalStore:
    """A dataset folder on this machine."""

    local = True

    def __init__(self, folder: Path, url: str | None = None):
        self.folder = Path(folder)
        self.url = url  # the file:// URL it was named by, if any
        self.location = url or str(self.folder)

    def __repr__(self) -> str:
        return f"LocalStore({self.location!r})"

    @property
    def as_given(self) -> Path | str:
        """The location as a caller named it: the folder's Path, or its file:// URL."""
        return self.url or self.folder

    def where(self, name: str) -> str:
        """How messages name object ``name``."""
        return f"{self.url.rstrip('/')}/{name}" if self.url else str(self.folder / name)

    def found(self) -> bool:
        """Whether the folder exists."""
        return self.folder.is_dir()

    def names(self) -> list[str]:
        """The names in the folder (files and anything else), [] if it does not exist."""
        return os.listdir(self.folder) if self.folder.is_dir() else []

    def sizes(self) -> dict[str, int]:
        """Size in bytes of every regular file in the folder."""
        if not self.folder.is_dir():
            return {}
        with os.scandir(self.folder) as entries:
            return {entry.name: entry.stat().st_size for entry in entries if entry.is_file()}

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    # Reads open regular files only (files.open_regular_file): a FIFO named like a shard,
    # a manifest or the recipe marker would block the reader forever.

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        """The object's bytes, at most ``limit`` of them. FileNotFoundError if absent,
        OSError if it is not a regular file."""
        with open_regular_file(self.folder / name) as handle:
            return handle.read(-1 if limit is None else limit)

    def open(self, name: str) -> BinaryIO:
        """A binary handle for reading the object from its start."""
        return open_regular_file(self.folder / name)

    @contextmanager
    def open_local(self, name: str) -> Iterator[BinaryIO]:
        """A seekable handle on the object's bytes on this machine: here, the file itself."""
        with open_regular_file(self.folder / name) as handle:
            yield handle

    def put(self, name: str, data: bytes) -> None:
        """Write the object whole: a temporary in the folder, flushed, then moved to the name."""
        write_atomic(self.folder / name, data)

    def create(self, name: str, data: bytes) -> bool:
        """Write the object only if the name is free; True if this call wrote it. Of
        writers racing for one name exactly one wins: a fully written temporary is
        hard-linked to the name, which fails if it exists (on NFS too)."""
        temporary = temporary_path(self.folder / name)
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, self.folder / name)
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def prepare(self) -> None:
        """Make the folder and check that it takes files; StorageError (one line) if not.
        Then remove the temporaries of writers on this host that died."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise StorageError(f"cannot write to {self.location}: {error.strerror or error}") from None
        remove_dead_temporaries(self.folder)

    def remove_dead_temporaries(self) -> None:
        remove_dead_temporaries(self.folder)


class ObjectStore:
    """A dataset under a prefix of an object store bucket (``s3://bucket/prefix``)."""

    local = False

    def __init__(self, url: str):
        scheme, rest = url.split("://", 1)
        if scheme.lower() not in OBJECT_SCHEMES:
            known = ", ".join(f"{s}://" for s in ("file", "s3", "gs"))
            raise StorageError(f"{url}: unsupported location {scheme}://; a dataset is a folder or a {known} URL")
        self.protocol, self.package, self.extra = OBJECT_SCHEMES[scheme.lower()]
        self.root = rest.strip("/")
        if not self.root or self.root.startswith("/") or any(part in ("", ".", "..") for part in self.root.split("/")):
            raise StorageError(f"{url}: expected {scheme}://bucket or {scheme}://bucket/prefix")
        self.bucket = self.root.split("/", 1)[0]
        self.location = f"{scheme}://{self.root}"
        self._fs = None
        self._pid = None
        self.fs  # a missing package or a bad configuration is one line now, before any work

    def __repr__(self) -> str:
        return f"ObjectStore({self.location!r})"

    @property
    def as_given(self) -> str:
        return self.location

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None, "_pid": None}  # a filesystem is per process

    @property
    def fs(self):
        """This process's fsspec filesystem for the scheme (fsspec shares one per process)."""
        if self._fs is None or self._pid != os.getpid():
            try:
                import fsspec

                self._fs = fsspec.filesystem(self.protocol)
            except ImportError:
                raise StorageError(f"{self.protocol_name}:// needs {self.package}: pip install doppelgangers[{self.extra}]") from None
            except Exception as error:  # a bad configuration in the environment, say
                raise StorageError(f"{self.location}: cannot open {self.protocol_name}:// ({one_line(error)})") from None
            self._pid = os.getpid()
        return self._fs

    @property
    def protocol_name(self) -> str:
        return self.location.split("://", 1)[0]

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def where(self, name: str) -> str:
        return f"{self.location}/{name}"

    @contextmanager
    def _requests(self, doing: str) -> Iterator[None]:
        """Any failure of the store's client (no credentials, no answer, access denied) as
        one StorageError naming the location; a missing or existing object passes through."""
        try:
            yield
        except (FileNotFoundError, FileExistsError, StorageError):
            raise
        except Exception as error:
            raise StorageError(f"{self.location}: {doing} failed ({_client_error(error)})") from None

    def found(self) -> bool:
        """Whether any object lies under the prefix."""
        return bool(self.names())

    def _listing(self) -> list[dict]:
        fs = self.fs
        with self._requests("listing"):
            fs.invalidate_cache(self.root)  # other processes and machines write here too
            try:
                return [entry for entry in fs.ls(self.root, detail=True) if entry.get("type") == "file"]
            except FileNotFoundError:  # nothing under the prefix, or no such bucket
                return []

    def names(self) -> list[str]:
        return [entry["name"].rsplit("/", 1)[-1] for entry in self._listing()]

    def sizes(self) -> dict[str, int]:
        return {entry["name"].rsplit("/", 1)[-1]: int(entry.get("size") or 0) for entry in self._listing()}

    def exists(self, name: str) -> bool:
        fs = self.fs
        with self._requests(f"looking up {name}"):
            fs.invalidate_cache(self.root)
            return bool(fs.isfile(self.path(name)))

    def read_bytes(self, name: str, limit: int | None = None) -> bytes:
        fs = self.fs
        with self._requests(f"reading {name}"):
            if limit is None:
                return fs.cat_file(self.path(name))
            with fs.open(self.path(name), "rb", block_size=min(limit, STREAM_BLOCK_BYTES) or 1) as handle:
                return handle.read(limit)

    def open(self, name: str) -> BinaryIO:
        """A binary handle streaming the object from its start (large ranged reads ahead)."""
        fs = self.fs
        with self._requests(f"opening {name}"):
            return fs.open(self.path(name), "rb", block_size=STREAM_BLOCK_BYTES, cache_type="readahead")

    @contextmanager
    def open_local(self, name: str) -> Iterator[BinaryIO]:
        """A seekable copy of the object on this machine (read once, in memory up to
        ``SPOOL_BYTES`` and in a temporary file beyond), for readers that seek."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as copy:
            with self.open(name) as stream, self._requests(f"reading {name}"):
                shutil.copyfileobj(stream, copy, STREAM_BLOCK_BYTES)
            copy.seek(0)
            yield copy

    def put(self, name: str, data: bytes) -> None:
        """One PUT of the whole object (a multipart upload past 100 MB, completed only once
        every part is in): readers see the old object, or none, until it is whole."""
        fs = self.fs
        with self._requests(f"writing {name}"):
            fs.pipe_file(self.path(name), data)

    def create(self, name: str, data: bytes) -> bool:
        """A conditional PUT: True if the object did not exist and this call wrote it. The
        store decides between racing writers. A server that ignores the condition (some
        S3-compatible ones do) is caught by reading the object back: a writer that finds
        other bytes there has lost."""
        fs = self.fs
        with self._requests(f"creating {name}"):
            try:
                fs.pipe_file(self.path(name), data, mode="create")
            except FileExistsError:
                return False
            return self.read_bytes(name, len(data) + 1) == data

    def delete(self, name: str) -> None:
        fs = self.fs
        with self._requests(f"deleting {name}"):
            try:
                fs.rm_file(self.path(name))
            except FileNotFoundError:
                pass

    def prepare(self) -> None:
        """Check that the bucket exists and takes objects (a probe object is written and
        deleted); StorageError (one line) if not. Buckets are not created: that is the
        store's administration (region, access, lifecycle), not a render's."""
        fs = self.fs
        probe = f".write-test-{os.getpid()}"
        with self._requests("writing"):
            try:
                fs.pipe_file(self.path(probe), b"")
            except FileNotFoundError:
                raise StorageError(f"{self.location}: no bucket {self.bucket} (create it first)") from None
            fs.rm_file(self.path(probe))

    def remove_dead_temporaries(self) -> None:
        """Nothing to do: objects are written whole, never through temporaries."""


Store = LocalStore | ObjectStore


def _client_error(error: BaseException) -> str:
    """A store client's error on one line, with what to do about the common ones."""
    text = one_line(error)
    name = type(error).__name__
    if name == "NoCredentialsError" or "Unable to locate credentials" in text:
        return f"{text}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or isinstance(error, ConnectionError):
        return f"{text}: is the endpoint (AWS_ENDPOINT_URL) right and reachable?"
    if isinstance(error, PermissionError) or getattr(error, "errno", None) == errno.EACCES:
        return f"access denied ({text})"
    return text
