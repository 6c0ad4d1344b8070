"""Worker processes that exit when the process that started them dies, even by kill -9.

Without this a killed render left its encoding workers running, and with them the
multiprocessing resource tracker (which waits for every holder of its pipe to exit)
and their shared memory.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_SECONDS = 0.5


def exit_with_parent(parent_pid: int) -> None:
    """Make this process die with ``parent_pid``: on Linux the kernel sends it SIGKILL
    when its parent dies (``PR_SET_PDEATHSIG``); everywhere a daemon thread checks the
    parent every ``PARENT_POLL_SECONDS`` and exits the process once it is gone (which also
    covers the kernel signal's catch: it follows the parent *thread* that started us)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the thread below still notices
    if os.getppid() != parent_pid:  # the parent died before we could ask
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="exit-with-parent", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
