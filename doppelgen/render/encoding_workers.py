"""Encoding worker processes, fed rendered shards through shared-memory slots.

Pickling a shard's float audio to a worker cost as much as encoding it, so the main
process copies rendered rows into a slot (one shard each) and sends only the slot's
number. Nothing outlives a killed render: every worker maps every slot when it starts,
after which the main process unlinks the slots' names, so no segment of the render stays
in /dev/shm whoever is killed; and each worker exits when the main process dies.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import secrets
import shutil
import signal
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from doppelgen.console import one_line
from doppelgen.render.shard_writer import ShardOptions, ShardPairs, write_shard
from doppelgen.render.worker_lifetime import exit_with_parent

# Segment names start with this, then the main process's pid: a person (or a test) can
# tell a render's segments from anyone else's.
SEGMENT_PREFIX = "doppelgen-"
# How often a waiting main process checks that its workers are alive.
LIVENESS_SECONDS = 1.0


class EncodingWorkerError(RuntimeError):
    """An encoding worker died or could not start; the message is one line."""


@dataclass(frozen=True)
class SlotLayout:
    """Where a shard's arrays lie in one slot: indices, view a, view b, params, redraws."""

    rows: int
    samples: int
    param_shape: tuple[int, int, int]  # (n_layers, 3, P)

    def arrays(self, buffer) -> ShardPairs:
        """Views of the slot's arrays inside ``buffer`` (shard index filled in by the caller)."""
        offset, views = 0, []
        for shape, dtype in (
            ((self.rows,), np.int64),
            ((self.rows, self.samples), np.float32),
            ((self.rows, self.samples), np.float32),
            ((self.rows, *self.param_shape), np.float32),
            ((self.rows,), np.int64),
        ):
            views.append(np.ndarray(shape, dtype=dtype, buffer=buffer, offset=offset))
            offset += int(np.prod(shape)) * np.dtype(dtype).itemsize
        return ShardPairs(-1, *views)

    @property
    def nbytes(self) -> int:
        per_row = 8 + 2 * self.samples * 4 + int(np.prod(self.param_shape)) * 4 + 8
        return self.rows * per_row


def first_rows(view: ShardPairs, shard: int, n_rows: int) -> ShardPairs:
    return ShardPairs(shard, *(array[:n_rows] for array in (view.indices, view.a, view.b, view.params, view.redraws)))


def shared_memory_room() -> int:
    """Free bytes where shared memory lives (Linux: /dev/shm); unbounded elsewhere."""
    try:
        return shutil.disk_usage("/dev/shm").free
    except OSError:
        return 2**62


class EncoderPool:
    """``slots - 1`` encoding processes and ``slots`` shared-memory slots: one slot filling
    in the main process while every worker encodes one."""

    def __init__(self, slots: int, layout: SlotLayout, out: Path, options: ShardOptions):
        self.layout = layout
        context = multiprocessing.get_context("spawn")  # JAX threads run here: never fork
        self.tasks, self.results = context.Queue(), context.Queue()
        token = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.segments: list[shared_memory.SharedMemory] = []
        self.processes: list = []
        self.views: list[ShardPairs] = []
        self.linked = True
        self.broken = False  # a worker died
        try:
            for slot in range(slots):
                self.segments.append(shared_memory.SharedMemory(name=f"{token}-{slot}", create=True, size=max(1, layout.nbytes)))
            names = [segment.name for segment in self.segments]
            for _ in range(slots - 1):
                process = context.Process(
                    target=encoding_worker, args=(names, layout, str(out), options, self.tasks, self.results, os.getpid()), daemon=True
                )
                process.start()
                self.processes.append(process)
            for _ in self.processes:
                self._next_result()  # "ready": the worker has mapped every slot
            self._unlink()
        except BaseException:
            self.close()
            raise
        self.views = [layout.arrays(segment.buf) for segment in self.segments]
        self.free = list(range(slots))
        self.running = 0

    def acquire(self) -> tuple[int, ShardPairs]:
        while not self.free:
            self._collect()
        slot = self.free.pop()
        return slot, self.views[slot]

    def submit(self, slot: int, shard: int, n_rows: int) -> None:
        self.tasks.put((slot, shard, n_rows))
        self.running += 1

    def drain(self) -> None:
        while self.running:
            self._collect()

    def _collect(self) -> None:
        _, slot, error = self._next_result()
        self.running -= 1
        self.free.append(slot)
        if error is not None:
            raise error  # the worker's own exception (an OSError for a full disk, say)

    def _next_result(self) -> tuple:
        while True:
            try:
                return self.results.get(timeout=LIVENESS_SECONDS)
            except queue.Empty:
                dead = [p for p in self.processes if not p.is_alive()]
                if dead:
                    # A worker killed inside a queue operation holds its lock forever:
                    # the others cannot be stopped politely.
                    self.broken = True
                    raise EncodingWorkerError(
                        f"an encoding worker died (exit code {dead[0].exitcode}); completed shards are kept, re-run to resume"
                    ) from None

    def _unlink(self) -> None:
        if self.linked:
            self.linked = False
            for segment in self.segments:
                segment.unlink()

    def close(self) -> None:
        """Let the workers finish the shards they were given (unless one died: then stop
        them at once), then free the slots."""
        for process in self.processes:
            if self.broken:
                process.kill()
            elif process.is_alive():
                self.tasks.put(None)
        for process in self.processes:
            process.join()
        self.views = []  # numpy views pin the buffers; close() needs them gone
        self._unlink()
        for segment in self.segments:
            try:
                segment.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping goes with this process
        for channel in (self.tasks, self.results):
            channel.close()
            channel.join_thread()


def encoding_worker(names: list[str], layout: SlotLayout, out: str, options: ShardOptions, tasks, results, parent: int) -> None:
    """A worker's main loop: map every slot, say so, then encode ``(slot, shard, rows)``
    tasks until a None arrives, answering ``("done", slot, error or None)``."""
    exit_with_parent(parent)
    # Ctrl-C is the main process's to handle: it stops the workers cleanly (a worker
    # interrupted inside soundfile's I/O callback printed a traceback instead).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    blocks = [shared_memory.SharedMemory(name=name) for name in names]
    views = [layout.arrays(block.buf) for block in blocks]
    results.put(("ready", None, None))
    while (task := tasks.get()) is not None:
        slot, shard, n_rows = task
        try:
            write_shard(out, first_rows(views[slot], shard, n_rows), options)
            results.put(("done", slot, None))
        except Exception as error:
            results.put(("done", slot, portable(error)))
    del views
    for block in blocks:
        block.close()


def portable(error: Exception) -> Exception:
    """``error`` if it survives pickling to the main process, else a RuntimeError with its
    message (a queue drops what it cannot pickle, and the main process would wait forever)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {one_line(error)}")


class InlineWriter:
    """workers=0: encode in the main process (simplest path; used by tests and debugging)."""

    def __init__(self, layout: SlotLayout, out: Path, options: ShardOptions):
        self.layout, self.out, self.options = layout, out, options

    def acquire(self) -> tuple[ShardPairs, ShardPairs]:
        view = self.layout.arrays(bytearray(max(1, self.layout.nbytes)))
        return view, view

    def submit(self, slot: ShardPairs, shard: int, n_rows: int) -> None:
        write_shard(self.out, first_rows(slot, shard, n_rows), self.options)

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass
