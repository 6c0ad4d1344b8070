"""CPU-seconds of a benchmark: this process's threads and the child processes it reaped."""

from __future__ import annotations

import resource
import time


def cpu_seconds() -> float:
    """CPU-seconds so far of every thread of this process and of its children that ended
    and were waited for (pool workers count once their pool closes; live ones do not)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime
