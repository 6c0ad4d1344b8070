"""``doppeltrain``: train (``fit``) and use (``embed``, ``probe``) audio embeddings.

Every ``fit`` option defaults to None, meaning "not given": a fresh run takes the
value from :class:`TrainConfig` (the one place defaults live), a ``--resume`` takes it
from the run's checkpoint. A bad option or input prints one line and exits with 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from doppelgen.console import EXIT_FAILURE, fail, one_line, reports_input_errors, run_app
from doppeltrain.config import TrainConfig
from doppeltrain.data import WorkerError
from doppeltrain.train import fit, resume_config
from doppeltrain.use.cli import register as register_use_commands

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train audio embeddings on doppelgänger pair shards, and use them.",
)

DEFAULTS = TrainConfig()  # quoted in --help; the values live in doppeltrain/config.py only


def build_config(overrides: dict[str, Any], resume: bool) -> TrainConfig:
    """A TrainConfig from dotted-field overrides (None = not given) on the right base.

    The base is the run's own config when resuming (so a bare ``--resume --run NAME``
    continues it exactly), the defaults otherwise.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if resume:
        base = TrainConfig()
        run_dir = Path(given.get("runs_dir", base.runs_dir)) / given.get("run", base.run)
        config = resume_config(run_dir)
        # Invocation-level choices of the earlier run do not carry over.
        config.resume, config.until_epoch = True, None
    else:
        config = TrainConfig()
    for dotted, value in given.items():
        target = config
        *parents, name = dotted.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, None if value is _ALL_PAIRS else value)
    return config


# "all" is stored as None (one pass over the training shards); None here means not given.
_ALL_PAIRS = object()


def _pairs_per_epoch(text: Optional[str]):
    if text is None:
        return None
    if text.strip().lower() == "all":
        return _ALL_PAIRS
    try:
        return int(text)
    except ValueError:
        fail(f"--pairs-per-epoch must be a whole number or 'all', got {text!r}")


@app.command("fit")
@reports_input_errors
def fit_command(
    datasets: Optional[List[str]] = typer.Argument(None, help="Pair datasets: folders, file://, s3:// or gs:// URLs, or WebDataset URLs (pipe:, http://; docs/FORMAT.md); or recipe JSON files (e.g. manifests/voice.json, or a dataset's manifest.json), whose pairs are rendered on the fly."),
    run: Optional[str] = typer.Option(
        None, "--run", "--name",
        help=f"Run name: its files go to RUNS_DIR/RUN. Spell it --name under torchrun, whose own parser reads --run as its --run-path. (default: {DEFAULTS.run})",
    ),
    runs_dir: Optional[str] = typer.Option(None, help=f"Folder of runs. (default: {DEFAULTS.runs_dir})"),
    epochs: Optional[int] = typer.Option(None, help=f"Epochs of the schedule. (default: {DEFAULTS.epochs})"),
    until_epoch: Optional[int] = typer.Option(None, help="Stop this invocation after this many epochs; continue later with --resume."),
    pairs_per_epoch: Optional[str] = typer.Option(None, help=f"Pairs per epoch, or 'all' for one pass over the training shards; steps per epoch = this // global batch. (default: {DEFAULTS.pairs_per_epoch}, the reference's 117 x 768)"),
    steps_per_epoch: Optional[int] = typer.Option(None, help="Batches per epoch per rank; overrides --pairs-per-epoch."),
    retrieval_group: Optional[int] = typer.Option(None, help=f"Validation retrieval ranks each pair among groups of this many. (default: {DEFAULTS.retrieval_group})"),
    batch_size: Optional[int] = typer.Option(None, help=f"Pairs per batch per rank. (default: {DEFAULTS.data.batch_size})"),
    workers: Optional[int] = typer.Option(None, help="Data-loader worker processes per rank; the data order depends on it. (default: sized to the machine: its CPUs per rank less one, at most 16 per GPU, 4 on the CPU; recorded in the run's config)"),
    shuffle_buffer: Optional[int] = typer.Option(None, help=f"Pairs in each worker's shuffle buffer. (default: {DEFAULTS.data.shuffle_buffer})"),
    val_shards: Optional[float] = typer.Option(None, help=f"Shards held out per dataset (a recipe: the shards its frozen render would hold out): a fraction (<1) or a count; 0 for none. (default: {DEFAULTS.data.val_shards})"),
    render_on: Optional[str] = typer.Option(None, help=f"Where recipes' pairs render: cpu (loader workers), gpu (the training GPU) or auto (gpu when training on CUDA and JAX sees a GPU). (default: {DEFAULTS.data.render_on})"),
    delta_from: Optional[float] = typer.Option(None, help="Ramp the delta of streamed recipes linearly from this value at step 0 to the recipe's delta at --delta-ramp of the run. (default: the recipe's delta throughout)"),
    delta_ramp: Optional[float] = typer.Option(None, help=f"Fraction of the run's steps the --delta-from ramp lasts. (default: {DEFAULTS.data.delta_ramp})"),
    val_every: Optional[int] = typer.Option(None, help=f"Validate every N epochs (and at the end); 0 never. (default: {DEFAULTS.val_every})"),
    checkpoint_every: Optional[int] = typer.Option(None, help=f"Keep a checkpoint every N epochs; latest.pt is written every epoch. (default: {DEFAULTS.checkpoint_every})"),
    loss: Optional[str] = typer.Option(None, "--loss", help=f"align_uniform (the paper's alignment + uniformity) or infonce (symmetric InfoNCE at --temperature). (default: {DEFAULTS.loss.objective})"),
    temperature: Optional[float] = typer.Option(None, help=f"InfoNCE temperature (--loss infonce). (default: {DEFAULTS.loss.temperature})"),
    optimizer: Optional[str] = typer.Option(None, help=f"sgd or adam. (default: {DEFAULTS.optim.optimizer})"),
    lr: Optional[float] = typer.Option(None, help="Learning rate. (default: sgd 0.12 * batch/256 * world size; adam 1e-3)"),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay. (default: sgd 1e-6; adam 1e-4)"),
    model: Optional[str] = typer.Option(None, help=f"resnet18 (the paper's) or small (one block per stage). (default: {DEFAULTS.model.model})"),
    width: Optional[int] = typer.Option(None, help=f"Channels of the first stage; e.g. 16 with --model small for CPU. (default: {DEFAULTS.model.width})"),
    embedding_dim: Optional[int] = typer.Option(None, help=f"Embedding size. (default: {DEFAULTS.model.embedding_dim})"),
    augment: Optional[str] = typer.Option(None, "--augment", help=f"Augmentation mode: waveform, specaugment, masking or none. (default: {DEFAULTS.augment.mode})"),
    no_augment: bool = typer.Option(False, "--no-augment", help="Same as --augment none."),
    ir_dir: Optional[str] = typer.Option(None, help="Folder of impulse responses for the convolution augmentation."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUNS_DIR/RUN from its latest checkpoint."),
    device: Optional[str] = typer.Option(None, help=f"auto (cuda, then mps, then cpu), cpu, cuda or mps. (default: {DEFAULTS.device})"),
    precision: Optional[str] = typer.Option(None, help=f"auto (bf16 autocast on a GPU with bf16 in hardware, fp32 elsewhere), fp32 or bf16. (default: {DEFAULTS.precision})"),
    seed: Optional[int] = typer.Option(None, help=f"Seed of the initial weights, data order and augmentations. (default: {DEFAULTS.seed})"),
    log_every: Optional[int] = typer.Option(None, help=f"Log train metrics every N steps. (default: {DEFAULTS.log_every})"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar. (default: on)"),
    audit: Optional[bool] = typer.Option(None, "--audit/--no-audit", help="Each rank logs the pair keys it trained on and its final weight digest."),
) -> None:
    """Train (or resume) a run: ResNet embeddings with alignment + uniformity loss (or InfoNCE: --loss)."""
    overrides = {
        "data.datasets": list(datasets) if datasets else None,
        "run": run,
        "runs_dir": runs_dir,
        "epochs": epochs,
        "until_epoch": until_epoch,
        "pairs_per_epoch": _pairs_per_epoch(pairs_per_epoch),
        "steps_per_epoch": steps_per_epoch,
        "retrieval_group": retrieval_group,
        "data.batch_size": batch_size,
        "data.workers": workers,
        "data.shuffle_buffer": shuffle_buffer,
        "data.val_shards": val_shards,
        "data.render_on": render_on,
        "data.delta_from": delta_from,
        "data.delta_ramp": delta_ramp,
        "val_every": val_every,
        "checkpoint_every": checkpoint_every,
        "loss.objective": loss,
        "loss.temperature": temperature,
        "optim.optimizer": optimizer,
        "optim.lr": lr,
        "optim.weight_decay": weight_decay,
        "model.model": model,
        "model.width": width,
        "model.embedding_dim": embedding_dim,
        "augment.mode": "none" if no_augment else augment,
        "augment.ir_dir": ir_dir,
        "device": device,
        "precision": precision,
        "seed": seed,
        "log_every": log_every,
        "progress": progress,
        "audit": audit,
    }
    # Bad input (TrainError, DataError, CheckpointError, IrError, ...: console.InputError)
    # is one line and exit 2; anything else is a bug and keeps its traceback, except a
    # failure while the run was going (a loader worker that died, a write to the run
    # folder that failed, e.g. on a full disk): one line and exit 1, as render's.
    try:
        summary = fit(build_config(overrides, resume))
    except WorkerError as error:
        fail(str(error), EXIT_FAILURE)
    except OSError as error:  # CheckpointWriteError or another failed write
        fail(one_line(error), EXIT_FAILURE)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(fit_summary_line(summary))


def fit_summary_line(summary: dict) -> str:
    """The run in one line, ending with what the network learned: held-out recall@1 of
    the untrained and the trained network side by side."""
    val, untrained = summary["val"], summary.get("val_untrained")
    text = f"{summary['run_dir']}: {summary['epochs_completed']} epochs, {summary['step']} steps, loss {summary['loss']:.4f}"
    if val:
        text += f", val loss {val['loss']:.4f}"
    text += f"; checkpoint {summary['checkpoint']}"
    if val and untrained:
        text += (
            f"\nheld-out recall@1 (view a finds its view b among {val['group']}; chance {1 / val['group']:.4f}): "
            f"untrained {untrained['recall_at_1']:.4f}, trained {val['recall_at_1']:.4f}"
        )
    return text


register_use_commands(app)  # embed and probe, defined with the inference code


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    The console script exits with it; tests call ``main([...])``.
    """
    return run_app(app, argv, "doppeltrain")
