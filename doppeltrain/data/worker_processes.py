"""Loader worker processes: started deaf to Ctrl-C, and their failures as one line.

Ctrl-C reaches every process of the terminal's group. A worker that takes it dies in
the middle of a batch (with a traceback), and the main process, which stops the run at
the next step boundary, would then meet a dead worker instead of a clean stop. So
workers start with SIGINT ignored, a disposition a spawned interpreter keeps (Python
installs its own handler only where SIGINT is at its default), and the main process
alone decides when to stop them.

A worker that dies (killed, out of memory, ``os._exit``) makes the DataLoader raise a
RuntimeError, from ``next()`` or from its SIGCHLD handler wherever the main process
happens to be; an exception inside a worker comes back with the worker's traceback in
its message. :func:`worker_failure` turns either into a one-line :class:`WorkerError`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

from doppelgen.console import one_line


class WorkerError(RuntimeError):
    """A loader worker died or failed while the run was going; the message is one line."""


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored for the block (processes started in it inherit that), then the
    handler it had. Outside the main thread nothing changes (signals cannot be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ignore_interrupts(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: Ctrl-C is the main process's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_DEATH_MARKS = ("DataLoader worker (pid", "exited unexpectedly", "is killed by signal")


def worker_failure(error: BaseException) -> WorkerError | None:
    """The one-line error for a DataLoader failure that came from a worker, else None.

    A dead worker: ``DataLoader worker (pid 123) is killed by signal: Killed.`` or ``...
    exited unexpectedly``. An exception in a worker: its message holds ``Caught X in
    DataLoader worker process N`` and the worker's traceback, whose last line names it.
    """
    if isinstance(error, WorkerError):
        return error
    text = str(error)
    if "in DataLoader worker process" in text:
        name, message = raised_in_worker(error)
        return WorkerError(f"a loader worker failed: {name}: {message}" if message else f"a loader worker failed: {name}")
    if any(mark in text for mark in _DEATH_MARKS) and "DataLoader worker" in text:
        return WorkerError(f"a loader worker died: {one_line(error)}")
    return None


def raised_in_worker(error: BaseException) -> tuple[str, str]:
    """``(class name, one-line message)`` of the exception a worker raised, from the
    DataLoader's re-raise, whose message ends with the worker's traceback."""
    name, _, message = str(error).strip().splitlines()[-1].partition(": ")
    return name.rsplit(".", 1)[-1], one_line(Exception(message)) if message else ""
