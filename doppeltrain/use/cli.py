"""The commands that use or publish a trained model: ``embed``, ``probe``, ``eval``,
``eval-convert`` and ``export``.

Each parses options and calls one function (`inference.embed_command`,
`probe.run_probe`, `use.evaluation.run_eval`, `use.task_converters.convert`,
`model_folder.export_model`); ``register(app)`` adds them to the
doppeltrain CLI. A model is a checkpoint file or a model folder written by ``export``.
A bad input prints one line and exits with status 2 (as ``fit`` does), without a
traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer

from doppelgen.console import EXIT_USAGE, fail, one_line, reports_input_errors
from doppeltrain.use import downstream, evaluation, inference, model_folder, probe, task_converters

T = TypeVar("T")
# Option defaults come from the typed config and the API, so they live in one place.
PROBE_DEFAULTS = probe.ProbeConfig(checkpoint="", data="")
EVAL_DEFAULTS = evaluation.EvalConfig(model="", tasks=())
CONVERT_DEFAULTS = task_converters.ConvertOptions()


def _run(action: Callable[[], T]) -> T:
    """Bad options and files (console.InputError) are one line and exit 2 through
    ``reports_input_errors``; so are paths that cannot be read or written (OSError: e.g.
    --out under a file, or a full disk). Anything else is a bug and keeps its traceback."""
    try:
        return action()
    except OSError as error:
        fail(one_line(error), EXIT_USAGE)


def register(app: typer.Typer) -> None:
    """Add the ``embed``, ``probe``, ``eval``, ``eval-convert`` and ``export`` commands to `app`."""

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

    @app.command("eval")
    @reports_input_errors
    def eval_command(
        model: Path = typer.Argument(..., help="A doppeltrain checkpoint (.pt) or a model folder from doppeltrain export."),
        tasks: List[Path] = typer.Argument(..., help="Task folders in HEAR 2021's layout (task_metadata.json, {split}.json, RATE/{split}/ audio)."),
        out: Path = typer.Option(Path(EVAL_DEFAULTS.out), "--out", "-o", help="The folder for eval.json and eval.md."),
        baseline: List[str] = typer.Option(list(EVAL_DEFAULTS.baselines), help="Baselines scored beside the model: logmel, random (the same network untrained). Repeatable; --baseline none for none."),
        grid: str = typer.Option(EVAL_DEFAULTS.grid, help=f"heareval's hyperparameter grid: {', '.join(downstream.GRIDS)}."),
        grid_points: int = typer.Option(EVAL_DEFAULTS.grid_points, help="Grid points tried on the first fold (heareval's --grid-points)."),
        seed: int = typer.Option(EVAL_DEFAULTS.seed, help="Seed of the grid's shuffle (heareval's 42), each predictor's training and the untrained network."),
        cache_dir: Optional[Path] = typer.Option(None, help="Where embeddings are cached. (default: the project cache's eval-embeddings/)"),
        heareval_dir: Optional[Path] = typer.Option(None, help="Also write the embeddings in heareval's layout here (DIR/FEATURE_SET/TASK), for python -m heareval.predictions.runner."),
        batch_size: int = typer.Option(EVAL_DEFAULTS.batch_size, help="0.96 s examples per forward pass."),
        device: str = typer.Option(EVAL_DEFAULTS.device, help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
        progress: bool = typer.Option(EVAL_DEFAULTS.progress, help="Show progress bars."),
    ) -> None:
        """HEAR's downstream protocol on scene tasks: the model and its baselines, one table."""
        cfg = evaluation.EvalConfig(
            model=str(model), tasks=tuple(str(t) for t in tasks), out=str(out),
            baselines=tuple(b for b in baseline if b != "none"), grid=grid, grid_points=grid_points, seed=seed,
            cache_dir=str(cache_dir) if cache_dir else None, heareval_dir=str(heareval_dir) if heareval_dir else None,
            batch_size=batch_size, device=device, progress=progress,
        )
        report = _run(lambda: evaluation.run_eval(cfg))
        typer.echo(evaluation.format_table(report))
        typer.echo(f"report written to {Path(cfg.out) / evaluation.REPORT_JSON} and {Path(cfg.out) / evaluation.REPORT_MD}")

    @app.command("eval-convert")
    @reports_input_errors
    def eval_convert(
        dataset: str = typer.Argument(..., help=f"The dataset: {', '.join(task_converters.CONVERTERS)}."),
        source: Path = typer.Argument(..., help="The dataset as downloaded (UrbanSound8K/ with metadata/ and audio/; VIVAE/ with full_set/)."),
        out: Path = typer.Argument(..., help="The task folder to write (new or empty)."),
        sample_rate: int = typer.Option(CONVERT_DEFAULTS.sample_rate, help="Sample rate of the written audio (HEAR distributes 48000)."),
        duration: Optional[float] = typer.Option(None, help="Pad or trim every clip to this many seconds. (default: UrbanSound8K 4; VIVAE keeps lengths)"),
        subset: Optional[str] = typer.Option(None, help="VIVAE only: full (default) or core."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished task in OUT."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Convert UrbanSound8K or VIVAE into HEAR 2021's task layout, for doppeltrain eval."""
        options = task_converters.ConvertOptions(sample_rate=sample_rate, duration=duration, subset=subset,
                                                 overwrite=overwrite, progress=progress)
        folder = _run(lambda: task_converters.convert(dataset, source, out, options))
        typer.echo(f"wrote the task {folder}")

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
