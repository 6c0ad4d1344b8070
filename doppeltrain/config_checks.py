"""Training options: checked before any work starts, and compared when a run resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from doppelgen.console import InputError, one_line
from doppelgen.files import workers_problem
from doppelgen.format import is_number, shown, unfit_number
from doppeltrain import distributed as dist_utils
from doppeltrain.augment.chain import check_augment_config
from doppeltrain.config import TrainConfig
from doppeltrain.data.streamed import RENDER_PLACES
from doppeltrain.loss import LOSS_OBJECTIVES
from doppeltrain.model import MODEL_BLOCKS
from doppeltrain.model_limits import MAX_EMBEDDING_DIM, MAX_WIDTH, inference_config_problem
from doppeltrain.schedule import OPTIMIZERS

PRECISIONS = ("auto", "fp32", "bf16")
# Options a resumed run may change: they affect speed, logging or when to stop, not the
# weights. Not data.workers: it decides which worker reads which shard, hence the order.
# Datasets may move: their manifests' digests must still match the checkpoint's.
# Streamed pairs may render elsewhere: the same pairs, up to the device's arithmetic.
RESUME_MAY_CHANGE = frozenset(
    {"resume", "until_epoch", "device", "progress", "log_every", "audit", "runs_dir", "val_audio_pairs", "data.datasets",
     "data.render_on"}
)


MAX_SEED = 2**63 - 1
MAX_COUNT = 2**53


class TrainError(InputError):
    """Bad options or a run that cannot go on; the message is one line."""


def validate_config(cfg: TrainConfig) -> None:
    """Check every option before any work starts; raise TrainError naming the first bad one."""
    try:
        problem = _option_problem(cfg)
    except TypeError as error:  # a config read from a checkpoint may hold any JSON type
        problem = f"an option has the wrong type ({shown(one_line(error))})"
    if problem:
        raise TrainError(problem)
    check_augment_config(cfg.augment)
    if cfg.augment.mode == "waveform" and cfg.augment.ir_dir is not None and not Path(cfg.augment.ir_dir).is_dir():
        raise TrainError(f"--ir-dir {cfg.augment.ir_dir}: no such folder")
    try:
        dist_utils.resolve_device(cfg.device)
    except dist_utils.DistributedError as error:
        raise TrainError(str(error)) from None


def _finite(value: Any) -> bool:
    """An int or float, finite, and if whole within an int64 (10**400 is an int no float holds)."""
    return is_number(value) and unfit_number(value, "") is None


def _option_problem(cfg: TrainConfig) -> str:
    """The first bad option of `cfg` as a one-line message, '' if none."""
    checks = [
        (len(cfg.data.datasets) > 0, "no datasets given"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {shown(cfg.epochs)}"),
        (cfg.data.batch_size >= 2, f"--batch-size must be at least 2 (uniformity needs pairs), got {shown(cfg.data.batch_size)}"),
        (cfg.data.workers is None or not workers_problem(cfg.data.workers),  # None: sized to the machine
         workers_problem(cfg.data.workers, "--workers")),
        (cfg.data.shuffle_buffer >= 1, f"--shuffle-buffer must be at least 1 (1: no shuffling), got {shown(cfg.data.shuffle_buffer)}"),
        (_finite(cfg.data.val_shards) and cfg.data.val_shards >= 0,
         f"--val-shards must be 0 (none), a fraction below 1 or a count, got {shown(cfg.data.val_shards)}"),
        (cfg.optim.optimizer in OPTIMIZERS, f"unknown optimizer {shown(cfg.optim.optimizer)}: expected one of {', '.join(OPTIMIZERS)}"),
        (cfg.optim.lr is None or (_finite(cfg.optim.lr) and cfg.optim.lr > 0), f"--lr must be a positive finite number, got {shown(cfg.optim.lr)}"),
        (cfg.optim.weight_decay is None or (_finite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0),
         f"--weight-decay must be a finite number, 0 or more, got {shown(cfg.optim.weight_decay)}"),
        (all(0 < m <= 1 for m in cfg.optim.milestones), "milestones must be fractions of the run's steps in (0, 1]"),
        (_finite(cfg.optim.gamma) and cfg.optim.gamma > 0, f"optim.gamma must be a positive finite number, got {shown(cfg.optim.gamma)}"),
        (cfg.loss.objective in LOSS_OBJECTIVES, f"unknown --loss {shown(cfg.loss.objective)}: expected one of {', '.join(LOSS_OBJECTIVES)}"),
        (_finite(cfg.loss.temperature) and cfg.loss.temperature > 0, f"--temperature must be a positive finite number, got {shown(cfg.loss.temperature)}"),
        (cfg.model.model in MODEL_BLOCKS, f"unknown model {shown(cfg.model.model)}: expected one of {', '.join(MODEL_BLOCKS)}"),
        (1 <= cfg.model.width <= MAX_WIDTH, f"--width must be 1 to {MAX_WIDTH}, got {shown(cfg.model.width)}"),
        (1 <= cfg.model.embedding_dim <= MAX_EMBEDDING_DIM, f"--embedding-dim must be 1 to {MAX_EMBEDDING_DIM}, got {shown(cfg.model.embedding_dim)}"),
        (cfg.val_every >= 0, f"--val-every must be 0 (never) or more, got {shown(cfg.val_every)}"),
        (cfg.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {shown(cfg.checkpoint_every)}"),
        (cfg.log_every >= 1, f"--log-every must be at least 1, got {shown(cfg.log_every)}"),
        (cfg.precision in PRECISIONS, f"unknown precision {shown(cfg.precision)}: expected one of {', '.join(PRECISIONS)}"),
        (cfg.pairs_per_epoch is None or cfg.pairs_per_epoch >= 1, f"--pairs-per-epoch must be at least 1 (or all), got {shown(cfg.pairs_per_epoch)}"),
        (cfg.steps_per_epoch is None or cfg.steps_per_epoch >= 1, f"--steps-per-epoch must be at least 1, got {shown(cfg.steps_per_epoch)}"),
        (cfg.retrieval_group >= 2, f"--retrieval-group must be at least 2, got {shown(cfg.retrieval_group)}"),
        (cfg.until_epoch is None or 1 <= cfg.until_epoch <= cfg.epochs, f"--until-epoch must be within 1..{shown(cfg.epochs)}, got {shown(cfg.until_epoch)}"),
        (cfg.val_audio_pairs >= 0, f"val_audio_pairs must be 0 or more, got {shown(cfg.val_audio_pairs)}"),
        # torch.manual_seed takes a signed 64-bit seed; numpy none below 0.
        (isinstance(cfg.seed, int) and 0 <= cfg.seed <= MAX_SEED, f"--seed must be a whole number from 0 to 2**63 - 1, got {shown(cfg.seed)}"),
        (isinstance(cfg.run, str) and bool(cfg.run) and "/" not in cfg.run and cfg.run not in (".", ".."), f"--run must be a plain folder name, got {shown(cfg.run)}"),
        (cfg.features.sample_rate == cfg.data.sample_rate, "features.sample_rate must equal data.sample_rate"),
        (cfg.data.render_on in RENDER_PLACES, f"unknown --render-on {shown(cfg.data.render_on)}: expected one of {', '.join(RENDER_PLACES)}"),
        (cfg.data.delta_from is None or (_finite(cfg.data.delta_from) and 0 <= cfg.data.delta_from <= 4),
         f"--delta-from must lie in [0, 4], got {shown(cfg.data.delta_from)}"),
        (_finite(cfg.data.delta_ramp) and 0 < cfg.data.delta_ramp <= 1,
         f"--delta-ramp must be a fraction of the run's steps in (0, 1], got {shown(cfg.data.delta_ramp)}"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    # Counts enter float arithmetic (milestones are fractions of the run's steps): past
    # 2**53 they are no longer exact, and an integer of 400 digits overflows a float.
    counts = {"--epochs": cfg.epochs, "--until-epoch": cfg.until_epoch, "--pairs-per-epoch": cfg.pairs_per_epoch,
              "--steps-per-epoch": cfg.steps_per_epoch, "--batch-size": cfg.data.batch_size,
              "--shuffle-buffer": cfg.data.shuffle_buffer, "--retrieval-group": cfg.retrieval_group,
              "--val-every": cfg.val_every, "--checkpoint-every": cfg.checkpoint_every, "--log-every": cfg.log_every,
              "--val-shards": cfg.data.val_shards, "val_audio_pairs": cfg.val_audio_pairs}
    for option, value in counts.items():
        if value is not None and value > MAX_COUNT:
            return f"{option} must be at most 2**53, got {shown(value)}"
    # The network and frontend a run builds obey the bounds of a model read from a file
    # (its checkpoints must load in embed, probe and export).
    problem = inference_config_problem(cfg)
    if problem:
        return problem
    return run_folder_problem(Path(cfg.runs_dir), cfg.run)


def run_folder_problem(runs_dir: Path, run: str) -> str:
    """Why ``runs_dir/run`` cannot be a run folder ('' if it can, or does not exist yet)."""
    for path, what in ((Path(runs_dir), "--runs-dir"), (Path(runs_dir) / run, "the run folder")):
        if path.exists() and not path.is_dir():
            return f"{what} {path} exists and is not a folder"
    return ""


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(cfg: TrainConfig, saved: dict[str, Any]) -> list[str]:
    """Fields, other than RESUME_MAY_CHANGE, where ``cfg`` differs from a saved config."""
    ours, theirs = _flatten(cfg.to_dict()), _flatten(saved)
    return sorted(
        f"{key} ({shown(theirs.get(key))} -> {shown(ours.get(key))})"
        for key in set(ours) | set(theirs)
        if key not in RESUME_MAY_CHANGE and ours.get(key) != theirs.get(key)
    )


def check_resume(state: dict[str, Any], cfg: TrainConfig, run_dir: Path, manifests: dict[str, str], world_size: int) -> None:
    """Raise TrainError unless the checkpoint ``state`` of ``run_dir`` can be continued by
    ``cfg`` on ``world_size`` processes over data with these manifest digests."""
    trained_on = state.get("world_size", world_size)
    if trained_on != world_size:
        # The learning rate and every rank's share of the data depend on it.
        raise TrainError(f"--resume: {run_dir} was trained by {trained_on} processes, this is {world_size}")
    differences = config_differences(cfg, state["config"])
    if differences:
        raise TrainError(f"--resume: options differ from the run's: {'; '.join(differences)}")
    # By content, in order: the same data under another path is the same data (the
    # one way data.datasets may change on resume).
    if list(state["manifests"].values()) != list(manifests.values()):
        raise TrainError(f"--resume: the datasets' manifests changed since {run_dir} was checkpointed")
    if state["epoch"] >= (cfg.until_epoch or cfg.epochs):
        raise TrainError(f"--resume: {run_dir} has already completed {state['epoch']} epochs")
