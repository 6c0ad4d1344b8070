"""Run a program as a user does (a fresh Python process) and check its one-line errors."""

from __future__ import annotations

import signal
import subprocess
import sys


def default_ctrl_c() -> None:
    """A ``preexec_fn`` for a program a test will Ctrl-C: SIGINT's default handler, which
    a terminal's Ctrl-C meets. A shell starts background jobs with SIGINT ignored (``make
    test &``, ``nohup``), the program would inherit that, and Python installs its
    KeyboardInterrupt only where SIGINT is not ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args: list[str], env: dict | None = None, program: str = "doppelgen") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", program, *args], env=env, capture_output=True, text=True, timeout=300)


def assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """The run failed with one line on stderr, no traceback, holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
