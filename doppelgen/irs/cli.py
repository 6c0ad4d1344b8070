"""``doppelgen irs``, and ``doppelgen verify`` on an impulse-response set: thin typer
commands over :mod:`doppelgen.irs.sets`."""

from __future__ import annotations

from pathlib import Path

import typer

from doppelgen.console import EXIT_FAILURE, EXIT_INTERRUPTED, fail, reports_input_errors
from doppelgen.irs.sets import IrSetConfig, render_ir_set
from doppelgen.irs.verify import is_ir_set, verify_ir_set

DEFAULTS = IrSetConfig()  # quoted by the options below; the values live in irs.py only

__all__ = ["irs", "is_ir_set", "register", "verify_ir_folder"]


@reports_input_errors
def irs(
    out: Path = typer.Argument(..., help="Output folder; created if missing."),
    count: int = typer.Option(DEFAULTS.count, "--count", help="Impulse responses in the set."),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", help="Set seed; response k is a function of (seed, k) only."),
    sample_rate: int = typer.Option(DEFAULTS.sample_rate, "--sample-rate", help="Sample rate in Hz."),
    workers: int = typer.Option(0, "--workers", help="Rendering processes (0: this one). Does not change the output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Render a frozen, reproducible set of room impulse responses (FLAC + manifest.json)
    for the trainer's convolution augmentation. Re-running completes a partial set."""
    try:
        summary = render_ir_set(out, IrSetConfig(count=count, seed=seed, sample_rate=sample_rate), workers=workers, progress=not quiet)
    except OSError as error:
        fail(f"writing {out} failed: {error.strerror or error}; finished files are kept, re-run to complete the set", EXIT_FAILURE)
    except KeyboardInterrupt:
        fail(f"interrupted; finished files in {out} are kept, run the same command again to complete the set", EXIT_INTERRUPTED)
    typer.echo(f"{summary.rendered} impulse responses rendered, {summary.skipped} already there, in {summary.seconds:.1f} s: {out}")


def verify_ir_folder(folder: Path) -> None:
    """``doppelgen verify`` on a set: one line per problem, exit 1 if any (bad input:
    an IrError, which the calling command reports)."""
    report = verify_ir_set(folder)
    for problem in report.problems:
        typer.echo(problem)
    if report.ok:
        typer.echo(f"ok: {folder}: {report.files_checked} impulse responses", err=True)
        return
    typer.echo(f"FAILED: {folder}: {len(report.problems)} problems ({report.files_checked} impulse responses checked)", err=True)
    raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add ``irs`` to ``app``."""
    app.command("irs")(irs)
