"""What both command lines share: one-line errors, exit codes and the typer runner.

``doppelgen`` and ``doppeltrain`` import it; it knows nothing of either program.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, List, NoReturn, Optional, TypeVar

import typer
from typer.exceptions import TyperException

# Exit codes: 2 for input refused before any work, 1 for a failure during it.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130

Command = TypeVar("Command", bound=Callable)


class InputError(ValueError):
    """Bad input from the user or a file; the CLI prints one line and exits 2.

    Every error class that means bad input subclasses it (FormatError, RecipeError,
    DataError, CheckpointError, ...), so a command line catches this one class and any
    other exception, a bug, keeps its traceback."""


def one_line(error: BaseException, path: Optional[Path] = None) -> str:
    """The error's message on one line (its type's name if it has none); with ``path``,
    that path is replaced by "file" (where the caller names the file itself)."""
    text = str(error)
    if path is not None:
        text = text.replace(f"'{path}'", "file").replace(str(path), "file")
    return " ".join(text.split()) or type(error).__name__


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` on stderr and leave the command with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def reports_input_errors(command: Command) -> Command:
    """The one way a command turns bad input into one line and exit 2: wrap the command
    (``@reports_input_errors`` under ``@app.command()``); typer still sees its options."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except InputError as error:
            fail(one_line(error))

    return run  # type: ignore[return-value]


def run_app(typer_app: typer.Typer, argv: Optional[List[str]], prog_name: str) -> int:
    """Run a typer app; a usage error (unknown option, bad value, missing argument) is one
    line on stderr instead of click's box. Returns the exit status."""
    try:
        status = typer_app(args=argv, prog_name=prog_name, standalone_mode=False)
    except TyperException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # a bare command: its help, as usual
            typer.echo(error.format_message(), err=True)
        else:
            typer.echo(f"error: {error.format_message()}", err=True)
        status = getattr(error, "exit_code", EXIT_USAGE)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        status = EXIT_INTERRUPTED
    return status if isinstance(status, int) else 0
