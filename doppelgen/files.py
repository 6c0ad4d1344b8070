"""Files written so that a kill never leaves a half-written one under its final name.

One home for the atomic write, the temporaries it leaves behind when killed, a file's
sha256, the default number of worker processes and the cache folder; both programs import
them from here.
"""

from __future__ import annotations

import hashlib
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

TEMP_MARK = ".tmp-"
CACHE_ENV = "DOPPELGANGERS_CACHE"


def cache_root() -> Path:
    """Where the project caches what it can make again (compiled kernels, impulse
    responses, benchmark data): ``$DOPPELGANGERS_CACHE``, else
    ``$XDG_CACHE_HOME/doppelgangers`` (``~/.cache/doppelgangers``)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "doppelgangers"


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is moved into place. Host and pid in the name
    let machines that write into one shared folder tell theirs apart, and let a later run
    remove those of writers that died (:func:`remove_dead_temporaries`)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}")


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary in ``path``'s folder; on a clean exit the data is
    flushed to disk and moved to ``path``, on any error (or interrupt) the temporary is
    removed and ``path`` keeps what it held before."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`."""
    with atomic_writer(path) as handle:
        handle.write(data)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_dead_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporaries in ``folder`` of writers on this host that are no longer
    running (a killed run's); those of live processes and of other hosts are left alone.
    Returns how many were removed."""
    folder = Path(folder)
    host = socket.gethostname()
    removed = 0
    if folder.is_dir():
        for entry in folder.iterdir():
            if not entry.name.startswith(".") or TEMP_MARK not in entry.name:
                continue
            writer_host, _, pid = entry.name.rsplit(TEMP_MARK, 1)[1].rpartition("-")
            if writer_host == host and pid.isdigit() and not process_alive(int(pid)):
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def file_sha256(path: str | os.PathLike) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of a file, read in 1 MiB blocks."""
    with open(path, "rb") as handle:
        return stream_sha256(handle)


def stream_sha256(handle: BinaryIO) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of what a binary handle reads to its end, in 1 MiB blocks."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def default_workers(cap: Optional[int] = None) -> int:
    """Worker processes to use by default: the CPU count, at most ``cap``."""
    count = max(1, os.cpu_count() or 1)
    return count if cap is None else min(cap, count)
