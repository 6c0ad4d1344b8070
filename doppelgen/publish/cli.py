"""``doppelgen verify | info | export | card | pack``: publishing and inspecting datasets.

Each command parses its options and calls one Python function (``verify_dataset``,
``describe_dataset``, ``export_pairs``, ``write_card``, ``pack_folder``). Bad input is
one line on stderr, ``error: ...``, exit code 2; a dataset that fails verification
exits with 1 after one line per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from doppelgen.console import EXIT_FAILURE, InputError, fail, reports_input_errors
from doppelgen.format import DATASET_KINDS, codecs_help
from doppelgen.pack.packing import PackConfig
from doppelgen.publish.export import DEFAULT_EXPORT_PAIRS
from doppelgen.publish.verify import default_verify_workers

PACK_DEFAULTS = PackConfig()  # quoted by the options below; the values live in pack.py only


@reports_input_errors
def verify(
    folder: str = typer.Argument(..., help="Dataset folder (holds manifest.json and pairs-*.tar), or its file://, s3:// or gs:// URL."),
    rerender: int = typer.Option(0, "--rerender", help="Render this many sampled pairs again and compare them with the shards."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --rerender sample."),
    workers: int = typer.Option(default_verify_workers(), "--workers", help="Processes checking shards (0: this one)."),
) -> None:
    """Check every shard against the manifest and docs/FORMAT.md; exit 1 with one line per problem."""
    from doppelgen.irs.cli import is_ir_set, verify_ir_folder
    from doppelgen.storage import is_url

    if not is_url(folder) and is_ir_set(folder):  # a `doppelgen irs` set (a local folder): its own checks
        return verify_ir_folder(folder)
    from doppelgen.publish.verify import verify_dataset

    report = verify_dataset(folder, rerender=rerender, workers=workers, seed=seed)
    for problem in report.problems:
        typer.echo(problem)
    checked = f"{report.shards_checked} shards, {report.pairs_checked} pairs"
    if report.rerendered:
        checked += f", {report.rerendered} pairs rendered again (compared: {report.rerender_mode}"
        measured = report.rerender_measured
        if measured:
            checked += (
                f"; measured: worst clip {measured['worst_clip']:.3g}, median clip {measured['median_clip']:.3g}, "
                f"params differ by up to {measured['params_difference']:.2g}"
            )
        checked += ")"
    if report.ok:
        typer.echo(f"ok: {folder}: {checked}", err=True)
        return
    typer.echo(f"FAILED: {folder}: {len(report.problems)} problems ({checked})", err=True)
    raise typer.Exit(EXIT_FAILURE)


@reports_input_errors
def info(
    folder: str = typer.Argument(..., help="Dataset folder or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object for scripts."),
) -> None:
    """The recipe, totals, software and per-shard statistics of a dataset."""
    from doppelgen.publish.info import describe_dataset, description_json, format_description

    description = describe_dataset(folder)
    typer.echo(description_json(description) if as_json else format_description(description))


@reports_input_errors
def export(
    folder: str = typer.Argument(..., help="Dataset folder or URL."),
    n: int = typer.Option(DEFAULT_EXPORT_PAIRS, "--n", help="Pairs to export (the first N)."),
    to: Path = typer.Option(Path("export"), "--to", help="Folder for the WAV and PNG files."),
) -> None:
    """WAV files and a log-mel picture of N pairs, to hear and see what delta does."""
    from doppelgen.publish.export import export_pairs

    try:
        result = export_pairs(folder, to, n=n)
    except InputError:
        raise  # one line, exit 2: a StorageError reading the dataset too
    except OSError as error:
        fail(f"writing {to} failed: {error.strerror or error}", EXIT_FAILURE)
    for problem in result.problems:
        typer.echo(problem, err=True)
    typer.echo(f"{len(result.keys)} pairs exported to {result.out} ({len(result.files)} files)")
    if result.n_problems:
        more = f" ({result.more_problems} not shown)" if result.more_problems else ""
        typer.echo(f"FAILED: {result.n_problems} bad pairs or shards skipped{more}; `doppelgen verify` checks the whole dataset", err=True)
        raise typer.Exit(EXIT_FAILURE)


@reports_input_errors
def card(
    folder: str = typer.Argument(..., help="Dataset folder or URL; README.md is written into it."),
    license: Optional[str] = typer.Option(None, "--license", help=f"License id for the Hub. [default: {'; '.join(f'{kind.license} for {kind.described} pairs' for kind in DATASET_KINDS.values())}]"),
    title: Optional[str] = typer.Option(None, "--title", help="Title of the card. [default: from the recipe]"),
) -> None:
    """Write a Hugging Face dataset card (README.md) for a finished dataset."""
    from doppelgen.publish.card import write_card

    path = write_card(folder, license=license, title=title)
    typer.echo(f"wrote {path}")


@reports_input_errors
def pack(
    audio_dir: Path = typer.Argument(..., help="Folder of recordings (wav, flac, ogg; nested folders are searched)."),
    out: str = typer.Argument("shards", help="Output dataset folder, or a file://, s3:// or gs:// URL."),
    temporal_jitter: bool = typer.Option(PACK_DEFAULTS.temporal_jitter, "--temporal-jitter", help="Two independent crops per pair instead of one crop for both views."),
    n_layers: int = typer.Option(PACK_DEFAULTS.n_layers, "--n-layers", help="Sum this many random 1 s segments of a recording per pair (renormalized)."),
    max_n: Optional[int] = typer.Option(PACK_DEFAULTS.max_n, "--max-n", help="Pairs to make at most (default: one per readable recording)."),
    pairs_per_shard: int = typer.Option(PACK_DEFAULTS.pairs_per_shard, "--pairs-per-shard", help="Pairs in each shard."),
    seed: int = typer.Option(PACK_DEFAULTS.seed, "--seed", help="Seed of the crops and of the order recordings are taken in."),
    codec: str = typer.Option(PACK_DEFAULTS.codec, "--codec", help=f"{codecs_help()}."),
    workers: int = typer.Option(0, "--workers", help="Decoding processes (0: this one). Does not change the output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in OUT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Pack real recordings into pair shards (the paper's real-data baseline)."""
    from doppelgen.pack.packing import pack_folder

    try:
        config = PackConfig(
            temporal_jitter=temporal_jitter, n_layers=n_layers, max_n=max_n,
            pairs_per_shard=pairs_per_shard, seed=seed, codec=codec,
        )
        summary = pack_folder(audio_dir, out, config, workers=workers, overwrite=overwrite, progress=not quiet)
    except InputError:
        raise  # one line, exit 2: a StorageError too
    except OSError as error:
        fail(f"writing {out} failed: {error.strerror or error}", EXIT_FAILURE)
    skipped = f", {len(summary.skipped)} unreadable recordings skipped (listed in manifest.json)" if summary.skipped else ""
    typer.echo(f"{summary.pairs} pairs in {summary.shards} shards in {summary.seconds:.1f} s: {out}{skipped}")


def register(app: typer.Typer) -> None:
    """Add ``verify``, ``info``, ``export``, ``card`` and ``pack`` to ``app``."""
    for command in (verify, info, export, card, pack):
        app.command(command.__name__)(command)
