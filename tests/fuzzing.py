"""What the fuzzers share: hypothesis's settings, and a cap on the time and memory a block
of code may take, torch's allocator included.

``tracemalloc`` sees Python's and numpy's allocations, not torch's (its CPU allocator
calls malloc directly), so a hostile model file that makes torch allocate 178 GiB would
slip past it. The cap here is the kernel's: the process's address space (RLIMIT_AS) may
grow by at most ``extra`` bytes inside the block; an allocation past it fails at once
(torch raises RuntimeError, numpy MemoryError) instead of reaching the OOM killer.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import tracemalloc
from contextlib import contextmanager
from typing import Iterator

import pytest
from hypothesis import HealthCheck, settings

GIB = 1 << 30


def fuzz_settings(default_examples: int, *also_suppressed: HealthCheck) -> settings:
    """``DOPPELGANGERS_FUZZ_EXAMPLES`` examples a target (``default_examples`` in the
    suite, more from ``make fuzz``), no deadline (``bounded`` checks time, tolerating a
    noisy machine) and no example database (every run draws afresh)."""
    return settings(
        max_examples=int(os.environ.get("DOPPELGANGERS_FUZZ_EXAMPLES", str(default_examples))),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, *also_suppressed],
    )


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
def bounded(what: str, seconds: float, traced_megabytes: float, extra_address_space: int | None = GIB) -> Iterator[None]:
    """Fail if the block runs past ``seconds``, if Python and numpy allocate past
    ``traced_megabytes`` at once, or (the allocation then fails) if the address space
    grows by more than ``extra_address_space`` (None: no such cap)."""

    def hang(signum, frame):
        raise AssertionError(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    tracemalloc.start()
    try:
        if extra_address_space is None:
            yield
        else:
            with address_space_cap(extra_address_space):
                yield
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < traced_megabytes * 2**20, f"{what}: allocated {peak / 2**20:.0f} MB"
    finally:
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
