"""``doppelgen``: a thin typer layer over :func:`doppelgen.render.loop.render_dataset` and friends."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from doppelgen.console import EXIT_FAILURE, EXIT_INTERRUPTED, fail, reports_input_errors, run_app
from doppelgen.format import codecs_help, shown
from doppelgen.recipe import Recipe, RecipeError, make_recipe
from doppelgen.render.distributors import DISTRIBUTORS, ClusterError, RayOptions
from doppelgen.synths import SYNTHS, synth_args_help

app = typer.Typer(
    help="Render reproducible doppelgänger pair datasets (SynthAX) into WebDataset shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Render, verify, inspect and publish doppelgänger pair datasets."""


def parse_synth_args(texts: List[str]) -> dict[str, int]:
    """``--synth-arg NAME=VALUE`` options as ``{NAME: VALUE}``; the synth registry judges them."""
    args = {}
    for text in texts:
        name, equals, value = text.partition("=")
        if not equals or not name.strip():
            raise RecipeError(f"--synth-arg takes NAME=VALUE, e.g. sine=3; got {shown(text)}")
        try:
            args[name.strip()] = int(value)
        except ValueError:
            raise RecipeError(f"--synth-arg {shown(name.strip(), quoted=False)} must be a whole number, got {shown(value)}") from None
    return args


def recipe_from_options(manifest: Optional[Path], overrides: dict, synth_args: dict[str, int]) -> Recipe:
    """Start from the recipe file (or the paper's defaults) and apply the options given;
    a synth given anew starts from its own default arguments."""
    from doppelgen.paper_recipes import load_recipe

    base = load_recipe(manifest) if manifest else make_recipe()
    given = {key: value for key, value in overrides.items() if value is not None}
    synth = given.pop("synth", base.synth.name)
    args = base.synth.args if synth == base.synth.name else {}
    return Recipe.from_dict(base.to_dict() | given | {"synth": {"name": synth, "args": args | synth_args}})


@app.command()
@reports_input_errors
def render(
    out: str = typer.Argument("shards", help="Output folder, or a file://, s3:// or gs:// URL; created if missing."),
    synth: Optional[str] = typer.Option(None, help=f"Synth architecture: {', '.join(SYNTHS)}.  [default: {Recipe().synth.name}]"),
    delta: Optional[float] = typer.Option(None, help="Perturbation scale in normalized parameter space.  [default: 0.25]"),
    shards: Optional[int] = typer.Option(None, help="Number of shards.  [default: 512]"),
    pairs_per_shard: Optional[int] = typer.Option(None, help="Pairs in each shard.  [default: 1000]"),
    seed: Optional[int] = typer.Option(None, help="Dataset seed; every pair's keys derive from it and the pair index.  [default: 0]"),
    sample_rate: Optional[int] = typer.Option(None, help="Sample rate in Hz.  [default: 16000]"),
    duration: Optional[float] = typer.Option(None, help="Clip length in seconds.  [default: 1.0]"),
    n_layers: Optional[int] = typer.Option(None, help="Voices mixed into each view (their mean).  [default: 1]"),
    codec: Optional[str] = typer.Option(None, help=f"Audio codec: {codecs_help()}.  [default: {Recipe.codec}]"),
    synth_arg: List[str] = typer.Option([], "--synth-arg", help=f"A synth's constructor argument, NAME=VALUE; repeatable.  [default: {synth_args_help()}]"),
    manifest: Optional[Path] = typer.Option(None, help="Recipe (or manifest.json) to render; other options override it."),
    batch_size: int = typer.Option(256, help="Pairs per kernel call. Does not change the output."),
    workers: Optional[int] = typer.Option(None, help="Encoding processes (0: encode in this process; with --distributor ray, in each task). Does not change the output.  [default: CPU count; ray: 0 in a CPU task, its CPUs in a GPU task]"),
    shard_range: Optional[str] = typer.Option(None, help="Render only shards A:B (B exclusive), e.g. to split a render across machines."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset of a different recipe in OUT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    distributor: str = typer.Option("local", help=f"Where shards are rendered: {' or '.join(DISTRIBUTORS)} (local: this process; ray: tasks on a Ray cluster, needs the package's ray extra)."),
    ray_address: Optional[str] = typer.Option(None, help="ray: auto (RAY_ADDRESS, else the cluster `ray start` started on this machine, else a new local one), local (always a new one), HOST:PORT or ray://HOST:PORT.  [default: auto]"),
    shards_per_task: Optional[int] = typer.Option(None, help=f"ray: shards rendered by one task.  [default: {RayOptions.shards_per_task}]"),
    cpus_per_task: Optional[float] = typer.Option(None, help=f"ray: CPUs each task asks for.  [default: {RayOptions.cpus_per_task:g}]"),
    gpus_per_task: Optional[float] = typer.Option(None, help="ray: GPUs each task asks for (a fraction shares one).  [default: 1 where the cluster has GPUs, else 0]"),
    max_retries: Optional[int] = typer.Option(None, help=f"ray: retries of a task whose process died or hit a storage error; a retry resumes.  [default: {RayOptions.max_retries}]"),
) -> None:
    """Render the pairs of a recipe into OUT. Re-running resumes: only missing shards are rendered."""
    from doppelgen.render.encoding_workers import EncodingWorkerError
    from doppelgen.render.kernel import RenderError
    from doppelgen.render.loop import render_dataset

    overrides = dict(synth=synth, delta=delta, n_shards=shards, pairs_per_shard=pairs_per_shard, seed=seed, sample_rate=sample_rate, duration=duration, n_layers=n_layers, codec=codec)
    recipe = recipe_from_options(manifest, overrides, parse_synth_args(synth_arg))
    given = dict(address=ray_address, shards_per_task=shards_per_task, cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, max_retries=max_retries)
    ray_options = RayOptions(**{key: value for key, value in given.items() if value is not None})
    try:
        summary = render_dataset(
            recipe, out, batch_size=batch_size, workers=workers, shard_range=shard_range, overwrite=overwrite, progress=not quiet,
            distributor=distributor, ray_options=ray_options, warn=lambda message: typer.echo(f"note: {message}", err=True),
        )
    except (RenderError, EncodingWorkerError, ClusterError) as error:
        fail(str(error), EXIT_FAILURE)
    except OSError as error:  # before InputError: a StorageError midway is a failed write
        fail(f"writing {out} failed: {error.strerror or error}; completed shards are kept, re-run to resume", EXIT_FAILURE)
    except KeyboardInterrupt:
        fail(f"interrupted; completed shards in {out} are kept, run the same command again to resume", EXIT_INTERRUPTED)
    state = "complete" if summary.complete else "not complete yet: render the remaining shards to get manifest.json"
    typer.echo(f"{len(summary.rendered)} shards rendered, {len(summary.skipped)} already complete, {summary.pairs} pairs in {summary.seconds:.1f} s: {out} ({state})")


from doppelgen.publish.cli import register as register_publish_commands  # noqa: E402  (needs `app`)

register_publish_commands(app)

from doppelgen.irs.cli import register as register_irs_command  # noqa: E402

register_irs_command(app)


def main(argv: Optional[List[str]] = None) -> int:
    """The ``doppelgen`` console script; returns the exit status (tests call ``main([...])``)."""
    from doppelgen.render.jax_runtime import prepare_jax_backends

    prepare_jax_backends()  # before any command starts a JAX backend (param_layout does, eagerly)
    return run_app(app, argv, "doppelgen")
