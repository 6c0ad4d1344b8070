"""Files written so that a kill never leaves a half-written one under its final name.

One home for the atomic write, the temporaries it leaves behind when killed, a file's
sha256, the default number of worker processes and the cache folder; both programs import
them from here.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import stat
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


# flock fails with these where a file system has no locks (some network mounts): the
# caller's other guards (markers, atomic writes) are then all there is.
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def hold_lock(path: str | os.PathLike, exclusive: bool = True, wait: bool = False) -> Optional[int]:
    """``flock`` on ``path`` (a lock file, made if missing, or a folder), shared or
    exclusive; returns the descriptor whose closing releases it (the kernel releases it
    when the process dies, however it dies), or None where the file system has no locks.
    Without ``wait``, BlockingIOError when another process holds a conflicting lock."""
    path = Path(path)
    descriptor = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
    except OSError as error:
        os.close(descriptor)
        if isinstance(error, BlockingIOError) or error.errno not in NO_LOCKS:
            raise
        return None
    return descriptor


def release_lock(descriptor: Optional[int]) -> None:
    """Release a lock :func:`hold_lock` returned (None: there was none)."""
    if descriptor is not None:
        os.close(descriptor)


@contextmanager
def folder_writes(folder: str | os.PathLike) -> Iterator[None]:
    """Wait for, then hold, the exclusive lock of ``folder`` itself (its directory, no lock
    file left behind) for the ``with`` block: writers of files that belong together (an
    embedding matrix and its list of paths, a model folder's three files) put them in
    place one at a time, so that the last writer's set is the one left whole."""
    descriptor = hold_lock(folder, exclusive=True, wait=True)
    try:
        yield
    finally:
        release_lock(descriptor)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_writer`."""
    with atomic_writer(path) as handle:
        handle.write(data)


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")`` of a regular file; OSError (EINVAL, naming what it is) for
    anything else. Opened without blocking, then checked: a FIFO named like a data file would
    block ``open`` forever, and a device would read without end."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_file_kind(mode)})", os.fsdecode(path))
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (following links), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, a name too long, a NUL byte
        return False


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


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


# Worker processes any command may start: each imports numpy (an encoder, a decoder) or
# torch (a data loader) and holds its buffers; more than this is a typo, not a machine.
MAX_WORKERS = 1024


def workers_problem(workers: object, option: str = "workers") -> str:
    """Why `workers` is not a usable count of worker processes ('' if it is)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_WORKERS:
        text = repr(workers)
        return f"{option} must be a whole number from 0 to {MAX_WORKERS}, got {text if len(text) <= 30 else text[:27] + '...'}"
    return ""


def default_workers(cap: Optional[int] = None) -> int:
    """Worker processes to use by default: the CPU count, at most ``cap``."""
    count = max(1, os.cpu_count() or 1)
    return count if cap is None else min(cap, count)
