"""GPU evidence in one run that fits a time budget; every phase prints its own JSON line.

Phases (``gpu_check_phases.py`` says what each measures), each in its own process with a
budget sized from the time left, so a phase that overruns is killed alone and a kill
loses nothing already printed:

- ``env``: versions, the GPU's name and memory, the CPU instruction set, JAX's settings;
- ``render``: a voice dataset rendered on JAX's default device (the GPU): pairs/s of the
  whole render and of the kernel alone;
- ``compare``: its first shard rendered again on the CPU, and the two compared as
  ``doppelgen verify --rerender`` compares renders of two platforms
  (``doppelgen.publish.cross_platform``), with the figures behind the verdict;
- ``train``: the paper's ResNet-18 recipe on those frozen shards in bf16, then fp32:
  pairs/s, data-wait fraction, held-out recall@1 before and after, peak GPU memory;
- ``streamed-gpu``, ``streamed-cpu``: ``doppeltrain fit RECIPE.json --render-on gpu|cpu``
  (pairs rendered while training; skipped with a line saying why where ``fit`` has no
  ``--render-on``);
- with ``--ddp`` instead of train and streamed: ``ddp``, torchrun over every GPU (NCCL,
  SyncBatchNorm), a few steps.

Each run writes into a fresh folder: ``--out-root/<UTC time>-<pid>`` (default
``gpu-check/`` in the repository), or ``--out``, which must be new or empty. The lines
also go to ``results.jsonl`` there, and each phase's log to ``phase-NAME.log``.

``benchmarks/gpu_check.sh`` runs it on a lent GPU machine; the test suite runs
``--tiny`` on the CPU (twice in one folder), where every render is a CPU render.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The device tool gives one command 600 s; the wheels' install and the import check come
# first: 500 s leaves a minute for them and for the margin below.
DEFAULT_BUDGET_S = 500.0
# Kept back from every phase's share so the run ends inside its budget: a killed phase
# is given this long to go, and the last line must still be printed.
MARGIN_S = 10.0
# A phase's budget: this share of the time left, at most this many seconds.
PHASE_SHARES = {
    "env": (0.15, 60.0),
    "render": (0.35, 200.0),
    "compare": (0.3, 120.0),
    "train": (0.55, 260.0),
    "streamed-gpu": (0.5, 150.0),
    "streamed-cpu": (1.0, 150.0),
    "ddp": (1.0, 300.0),
}
PHASES = ("env", "render", "compare", "train", "streamed-gpu", "streamed-cpu")
DDP_PHASES = ("env", "render", "ddp")
PHASE_SCRIPT = Path(__file__).with_name("gpu_check_phases.py")
EXIT_INPUT = 2
EXIT_IMPORTS = 3


class GpuCheckError(Exception):
    """Bad options: one line, exit 2."""


def fresh_folder(out: Path | None, out_root: Path) -> Path:
    """The run's folder: ``out`` if it is new or empty, else a new ``<UTC time>-<pid>``
    folder under ``out_root``. A kept folder is never reused: its shards would be skipped
    and its runs refused."""
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise GpuCheckError(f"--out {out} is not an empty folder: each run writes into a fresh one (leave --out out for a new folder under --out-root)")
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for attempt in range(1000):
        folder = out_root / (f"{stamp}-{os.getpid()}" + (f"-{attempt}" if attempt else ""))
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise GpuCheckError(f"cannot make a fresh folder under {out_root}")


def emit(record: dict, folder: Path | None, stream=None) -> None:
    """Print one JSON line now (flushed) and append it to ``results.jsonl``."""
    line = json.dumps(record, default=str)
    if folder is not None:
        with open(folder / "results.jsonl", "a") as handle:
            handle.write(line + "\n")
    stream = stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def phase_budget(name: str, left: float) -> float:
    share, cap = PHASE_SHARES[name]
    return max(0.0, min(cap, share * (left - MARGIN_S)))


def log_tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_phase(name: str, folder: Path, budget_s: float, args: argparse.Namespace) -> None:
    """Run one phase in its own process group, killed when its budget is spent. The phase
    prints its own lines; this prints one for a phase that died or ran out of time."""
    command = [sys.executable, str(PHASE_SCRIPT), name, str(folder), "--budget-s", f"{budget_s:.1f}"]
    command += ["--tiny"] if args.tiny else []
    command += ["--workers", str(args.workers)] if args.workers is not None else []
    log = folder / f"phase-{name}.log"
    started = time.perf_counter()
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=sys.stdout, stderr=stderr, start_new_session=True)
        try:
            code = process.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            code = None
    seconds = round(time.perf_counter() - started, 1)
    if code is None:
        emit({"phase": name, "status": "timeout", "budget_s": round(budget_s, 1), "seconds": seconds, "log_tail": log_tail(log)}, folder)
    elif code != 0:
        emit({"phase": name, "status": "failed", "exit_code": code, "seconds": seconds, "log_tail": log_tail(log)}, folder)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the phase's process group (its loader workers, torchrun's ranks, the CPU
    render), SIGKILL after a few seconds."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def chosen_phases(phases: tuple[str, ...], chosen: str | None) -> tuple[str, ...]:
    """``phases``, or those of them named in ``chosen`` (comma-separated), in their order:
    device time is short, so a phase that failed can run again without the others."""
    if chosen is None:
        return phases
    names = [name.strip() for name in chosen.split(",") if name.strip()]
    unknown = [name for name in names if name not in phases]
    if unknown or not names:
        raise GpuCheckError(f"--phases: unknown phase {unknown[0] if unknown else repr(chosen)}: choose from {','.join(phases)}")
    return tuple(name for name in phases if name in names)


def check_imports() -> dict:
    """Import every module the phases import; ``{"missing": {module: error}}`` names the
    ones that fail (on the lent machine: a wheel missing from device_wheels.txt)."""
    import importlib

    from benchmarks.gpu_check_phases import IMPORTS

    missing = {}
    for module in IMPORTS:
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or a library failing at import
            missing[module] = f"{type(error).__name__}: {error}"
    return {"phase": "imports", "status": "failed" if missing else "ok", "modules": len(IMPORTS), "missing": missing}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="the run's folder: must be new or empty")
    parser.add_argument("--out-root", type=Path, default=REPO / "gpu-check", help="where a fresh <UTC time>-<pid> folder is made when --out is not given")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run; each phase gets a share of what is left")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for the CPU dry run in the tests")
    parser.add_argument("--ddp", action="store_true", help="multi-GPU check instead of train and streamed: torchrun over every GPU (NCCL, SyncBatchNorm)")
    parser.add_argument("--workers", type=int, default=None, help="encoding and loader workers (default: CPU count - 2)")
    parser.add_argument("--phases", default=None,
                        help="only these phases, comma-separated, in their usual order (e.g. env,render); compare, train and "
                        "the streamed phases read the render phase's dataset, so keep render with them")
    parser.add_argument("--check-imports", action="store_true", help="only import what the phases import; exit 3 if anything is missing")
    args = parser.parse_args(argv)
    if args.check_imports:
        result = check_imports()
        emit(result, None)
        return EXIT_IMPORTS if result["missing"] else 0
    deadline = time.perf_counter() + args.budget_s
    try:
        if args.budget_s <= MARGIN_S:
            raise GpuCheckError(f"--budget-s must be more than {MARGIN_S:g}, got {args.budget_s:g}")
        if args.workers is not None and args.workers < 0:
            raise GpuCheckError(f"--workers must be >= 0, got {args.workers}")
        phases = chosen_phases(DDP_PHASES if args.ddp else PHASES, args.phases)
        folder = fresh_folder(args.out, args.out_root)
    except (GpuCheckError, OSError) as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return EXIT_INPUT
    emit({"phase": "start", "out": str(folder), "budget_s": args.budget_s, "phases": list(phases), "tiny": args.tiny}, folder)
    for name in phases:
        left = deadline - time.perf_counter()
        budget = phase_budget(name, left)
        if budget < 5:
            emit({"phase": name, "status": "skipped", "reason": f"out of time ({left:.0f} s left of --budget-s {args.budget_s:g})"}, folder)
            continue
        run_phase(name, folder, budget, args)
    emit({"phase": "end", "seconds": round(args.budget_s - (deadline - time.perf_counter()), 1), "out": str(folder)}, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
