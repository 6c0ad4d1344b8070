"""benchmarks/process_table.py: the /proc reader the CPU-time benchmarks and the tests that
check that nothing outlives a run share."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from benchmarks.process_table import alive, command_line, descendants, process_table, processes_mentioning
from benchmarks.render_ray import live_descendants_cpu

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def test_a_process_tree_is_found_whole_and_is_gone_once_killed():
    mark = f"process-table-{uuid.uuid4().hex}"
    # A child that starts a grandchild, both marked on their command lines, then spins.
    grandchild = f"import time\nwhile True: time.sleep(0.01)  # {mark}"
    child = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {grandchild!r}])\nwhile True: pass  # {mark}"
    process = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.time() + 60
        while len(processes_mentioning(mark)) < 2:
            assert time.time() < deadline, "the grandchild did not start"
            time.sleep(0.05)
        tree = descendants(os.getpid())
        marked = set(processes_mentioning(mark))
        assert process.pid in marked and marked <= tree
        assert descendants(process.pid) == marked - {process.pid}
        assert mark.encode() in command_line(process.pid)
        table = process_table()
        assert table[process.pid].parent == os.getpid() and table[os.getpid()].state == "R"
        time.sleep(0.3)  # the child spins: it has used CPU time
        assert live_descendants_cpu()[process.pid] > 0
        assert alive(marked) == marked
    finally:
        for pid in processes_mentioning(mark):
            os.kill(pid, signal.SIGKILL)
        process.wait()
    deadline = time.time() + 30
    while alive(marked):  # the grandchild is reaped by init; zombies count as gone
        assert time.time() < deadline, alive(marked)
        time.sleep(0.05)
    assert command_line(process.pid) == b""
