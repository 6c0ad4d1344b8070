"""The commands that use a trained model: ``embed`` and ``probe``.

Each parses options and calls one function (`inference.embed_command`,
`probe.run_probe`); ``register(app)`` adds them to the doppeltrain CLI. A bad input
prints one line and exits with status 2 (as ``fit`` does), without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer

from doppeltrain import inference, probe
from doppeltrain.distributed import DistributedError

T = TypeVar("T")
USAGE_EXIT = 2
# Option defaults come from the typed config and the API, so they live in one place.
PROBE_DEFAULTS = probe.ProbeConfig(checkpoint="", data="")

# Errors that mean "your input is wrong", reported in one line: bad options and files,
# and paths that cannot be read or written (OSError: e.g. --out under a file, or a full
# disk). Anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, DistributedError, OSError)


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except INPUT_ERRORS as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=USAGE_EXIT) from None


def register(app: typer.Typer) -> None:
    """Add the ``embed`` and ``probe`` commands to `app`."""

    @app.command("embed")
    def embed(
        checkpoint: Path = typer.Argument(..., help="A doppeltrain checkpoint (.pt)."),
        inputs: List[str] = typer.Argument(..., help="Audio files, folders (recursive) or @list.txt (one path per line)."),
        out: Path = typer.Option(Path("embeddings.npy"), "--out", "-o", help="The .npy to write; the paths go to the .txt beside it."),
        batch_size: int = typer.Option(inference.DEFAULT_BATCH_SIZE, help="0.96 s examples per forward pass."),
        device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Embed audio files of any length, format and rate: one row per file, in input order."""
        result = _run(lambda: inference.embed_command(checkpoint, inputs, out, batch_size, device, progress))
        typer.echo(f"wrote {result.shape[0]} x {result.shape[1]} embeddings to {result.embeddings} "
                   f"and their paths to {result.paths_file}")

    @app.command("probe")
    def probe_command(
        checkpoint: Path = typer.Argument(..., help="A doppeltrain checkpoint (.pt)."),
        data_dir: Path = typer.Argument(..., help="A folder with one sub-folder per class, or a CSV of path,label."),
        test_fraction: float = typer.Option(PROBE_DEFAULTS.test_fraction, help="Fraction of each class held out for testing."),
        split: Optional[Path] = typer.Option(None, help="A CSV of path,split (train or test) instead of a random split."),
        val_fraction: float = typer.Option(PROBE_DEFAULTS.val_fraction, help="Fraction of the training split that chooses the L2 strength."),
        baseline: List[str] = typer.Option([], help="Also probe a baseline on the same split: logmel or random. Repeatable."),
        seed: int = typer.Option(PROBE_DEFAULTS.seed, help="Seed of the split and of the random network."),
        batch_size: int = typer.Option(inference.DEFAULT_BATCH_SIZE, help="0.96 s examples per forward pass."),
        device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
        out: Path = typer.Option(Path(PROBE_DEFAULTS.out), "--out", "-o", help="The JSON report to write."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Linear probe on frozen embeddings: held-out accuracy, with optional baselines."""
        cfg = probe.ProbeConfig(
            checkpoint=str(checkpoint), data=str(data_dir), test_fraction=test_fraction,
            split_file=str(split) if split is not None else None, val_fraction=val_fraction,
            baselines=tuple(baseline), seed=seed, batch_size=batch_size, device=device,
            out=str(out), progress=progress,
        )
        report = _run(lambda: probe.run_probe(cfg))
        typer.echo(probe.format_report(report))
        typer.echo(f"report written to {out}")
