"""A cap on what a block of code may allocate, torch's allocator included.

``tracemalloc`` sees Python's and numpy's allocations, not torch's (its CPU allocator
calls malloc directly), so a hostile model file that makes torch allocate 178 GiB would
slip past it. The cap here is the kernel's: the process's address space (RLIMIT_AS) may
grow by at most ``extra`` bytes inside the block; an allocation past it fails at once
(torch raises RuntimeError, numpy MemoryError) instead of reaching the OOM killer.
"""

from __future__ import annotations

import resource
import signal
import sys
import tracemalloc
from contextlib import contextmanager
from typing import Iterator

import pytest

GIB = 1 << 30


def address_space_bytes() -> int:
    """The process's current virtual size (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


@contextmanager
def address_space_cap(extra: int) -> Iterator[None]:
    """Let the process's address space grow by at most ``extra`` bytes in the block."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS is enforced on Linux only")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = address_space_bytes() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def bounded(what: str, seconds: float, traced_megabytes: float, extra_address_space: int = GIB) -> Iterator[None]:
    """Fail if the block runs past ``seconds``, if Python and numpy allocate past
    ``traced_megabytes`` at once, or (the allocation then fails) if the address space
    grows by more than ``extra_address_space``."""

    def hang(signum, frame):
        raise AssertionError(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracemalloc.start()
    try:
        with address_space_cap(extra_address_space):
            yield
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < traced_megabytes * 2**20, f"{what}: allocated {peak / 2**20:.0f} MB"
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
