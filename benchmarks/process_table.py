"""Other processes as Linux's /proc shows them: one reader for the benchmarks that count
their workers' CPU time and the tests that check that nothing outlives a run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Process:
    parent: int
    state: str  # "R", "S", ... "Z" for a zombie
    cpu_s: float  # user + system time so far


def process_table() -> dict[int, Process]:
    """Every process by pid; empty where there is no /proc."""
    table = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                # The command name (field 2) may hold spaces and parentheses: split after it.
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry)] = Process(parent=int(fields[1]), state=fields[0], cpu_s=(int(fields[11]) + int(fields[12])) / TICKS)
    return table


def descendants(pid: int, table: dict[int, Process] | None = None) -> set[int]:
    """The pids of every process under ``pid``, children's children included."""
    table = process_table() if table is None else table
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, row in table.items() if row.parent == parent]
        found.update(children)
        todo += children
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies count as gone: they hold nothing)."""
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid].state != "Z"}


def command_line(pid: int) -> bytes:
    """The NUL-separated command line of ``pid``; empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def processes_mentioning(text: str) -> list[int]:
    """Other processes whose command line contains ``text``."""
    return [pid for pid in process_table() if pid != os.getpid() and text.encode() in command_line(pid)]
