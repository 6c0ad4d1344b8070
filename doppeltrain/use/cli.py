"""The commands that use or publish a trained model: ``embed``, ``probe`` and ``export``.

Each parses options and calls one function (`inference.embed_command`,
`probe.run_probe`, `model_folder.export_model`); ``register(app)`` adds them to the
doppeltrain CLI. A model is a checkpoint file or a model folder written by ``export``.
A bad input prints one line and exits with status 2 (as ``fit`` does), without a
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer

from doppelgen.console import EXIT_USAGE, fail, one_line, reports_input_errors

from doppeltrain.use import inference, model_folder, probe

T = TypeVar("T")
# Option defaults come from the typed config and the API, so they live in one place.
PROBE_DEFAULTS = probe.ProbeConfig(checkpoint="", data="")


def _run(action: Callable[[], T]) -> T:
    """Bad options and files (console.InputError) are one line and exit 2 through
    ``reports_input_errors``; so are paths that cannot be read or written (OSError: e.g.
    --out under a file, or a full disk). Anything else is a bug and keeps its traceback."""
    try:
        return action()
    except OSError as error:
        fail(one_line(error), EXIT_USAGE)


def register(app: typer.Typer) -> None:
    """Add the ``embed``, ``probe`` and ``export`` commands to `app`."""

    @app.command("embed")
    @reports_input_errors
    def embed(
        checkpoint: Path = typer.Argument(..., help="A doppeltrain checkpoint (.pt) or a model folder from doppeltrain export."),
        inputs: List[str] = typer.Argument(..., help="Audio files, folders (recursive) or @list.txt (one path per line)."),
        out: Path = typer.Option(Path("embeddings.npy"), "--out", "-o", help="The .npy to write; the paths go to the .txt beside it, one a line (a backslash, control characters and non-UTF-8 bytes escaped: \\\\, \\n, \\uHHHH, \\xHH)."),
        batch_size: int = typer.Option(inference.DEFAULT_BATCH_SIZE, help="0.96 s examples per forward pass."),
        device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Embed audio files of any length, format and rate: one row per file, in input order."""
        result = _run(lambda: inference.embed_command(checkpoint, inputs, out, batch_size, device, progress))
        typer.echo(f"wrote {result.shape[0]} x {result.shape[1]} embeddings to {result.embeddings} "
                   f"and their paths to {result.paths_file}")

    @app.command("probe")
    @reports_input_errors
    def probe_command(
        checkpoint: Path = typer.Argument(..., help="A doppeltrain checkpoint (.pt) or a model folder from doppeltrain export."),
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

    @app.command("export")
    @reports_input_errors
    def export(
        checkpoint: Path = typer.Argument(..., help="A doppeltrain checkpoint (.pt), e.g. runs/NAME/checkpoints/latest.pt."),
        out: Path = typer.Argument(..., help="The model folder to write (made if missing): model.safetensors, config.json, README.md."),
        license: str = typer.Option(model_folder.DEFAULT_LICENSE, "--license", help="License id for the model card (Hub ids: cc-by-4.0, mit, apache-2.0, other, ...)."),
        title: Optional[str] = typer.Option(None, "--title", help="The model card's title. (default: one naming the network)"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an earlier export in OUT."),
    ) -> None:
        """Write a publishable model folder in the Hugging Face Hub's layout (upload it with hf upload USER/NAME OUT)."""
        result = _run(lambda: model_folder.export_model(checkpoint, out, license=license, title=title, overwrite=overwrite))
        typer.echo(model_folder.describe(result))
