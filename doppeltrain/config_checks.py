"""Training options: checked before any work starts, and compared when a run resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from doppelgen.console import InputError

from doppeltrain import distributed as dist_utils
from doppeltrain.augment.chain import check_augment_config
from doppeltrain.config import TrainConfig
from doppeltrain.data.streamed import RENDER_PLACES
from doppeltrain.loss import LOSS_OBJECTIVES
from doppeltrain.model import MODEL_BLOCKS
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


class TrainError(InputError):
    """Bad options or a run that cannot go on; the message is one line."""


def validate_config(cfg: TrainConfig) -> None:
    """Check every option before any work starts; raise TrainError naming the first bad one."""
    checks = [
        (len(cfg.data.datasets) > 0, "no datasets given"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.data.batch_size >= 2, f"--batch-size must be at least 2 (uniformity needs pairs), got {cfg.data.batch_size}"),
        (cfg.data.workers is None or cfg.data.workers >= 0, f"--workers must be 0 or more, got {cfg.data.workers}"),
        (cfg.data.val_shards >= 0, f"--val-shards must be 0 (none) or more, got {cfg.data.val_shards}"),
        (cfg.optim.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optim.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"),
        (cfg.optim.lr is None or cfg.optim.lr > 0, f"--lr must be positive, got {cfg.optim.lr}"),
        (cfg.optim.weight_decay is None or cfg.optim.weight_decay >= 0, "weight decay must be 0 or more"),
        (all(0 < m <= 1 for m in cfg.optim.milestones), "milestones must be fractions of the run's steps in (0, 1]"),
        (cfg.loss.objective in LOSS_OBJECTIVES, f"unknown --loss {cfg.loss.objective!r}: expected one of {', '.join(LOSS_OBJECTIVES)}"),
        (cfg.loss.temperature > 0, f"--temperature must be positive, got {cfg.loss.temperature}"),
        (cfg.model.model in MODEL_BLOCKS, f"unknown model {cfg.model.model!r}: expected one of {', '.join(MODEL_BLOCKS)}"),
        (cfg.model.width >= 1, f"--width must be at least 1, got {cfg.model.width}"),
        (cfg.model.embedding_dim >= 1, f"--embedding-dim must be at least 1, got {cfg.model.embedding_dim}"),
        (cfg.val_every >= 0, f"--val-every must be 0 (never) or more, got {cfg.val_every}"),
        (cfg.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {cfg.checkpoint_every}"),
        (cfg.log_every >= 1, f"--log-every must be at least 1, got {cfg.log_every}"),
        (cfg.precision in PRECISIONS, f"unknown precision {cfg.precision!r}: expected one of {', '.join(PRECISIONS)}"),
        (cfg.pairs_per_epoch is None or cfg.pairs_per_epoch >= 1, f"--pairs-per-epoch must be at least 1 (or all), got {cfg.pairs_per_epoch}"),
        (cfg.steps_per_epoch is None or cfg.steps_per_epoch >= 1, f"--steps-per-epoch must be at least 1, got {cfg.steps_per_epoch}"),
        (cfg.retrieval_group >= 2, f"--retrieval-group must be at least 2, got {cfg.retrieval_group}"),
        (cfg.until_epoch is None or 1 <= cfg.until_epoch <= cfg.epochs, f"--until-epoch must be within 1..{cfg.epochs}, got {cfg.until_epoch}"),
        (cfg.val_audio_pairs >= 0, f"val_audio_pairs must be 0 or more, got {cfg.val_audio_pairs}"),
        (bool(cfg.run) and "/" not in cfg.run and cfg.run not in (".", ".."), f"--run must be a plain folder name, got {cfg.run!r}"),
        (cfg.features.sample_rate == cfg.data.sample_rate, "features.sample_rate must equal data.sample_rate"),
        (cfg.data.render_on in RENDER_PLACES, f"unknown --render-on {cfg.data.render_on!r}: expected one of {', '.join(RENDER_PLACES)}"),
        (cfg.data.delta_from is None or 0 <= cfg.data.delta_from <= 4, f"--delta-from must lie in [0, 4], got {cfg.data.delta_from}"),
        (0 < cfg.data.delta_ramp <= 1, f"--delta-ramp must be a fraction of the run's steps in (0, 1], got {cfg.data.delta_ramp}"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainError(message)
    check_augment_config(cfg.augment)
    if cfg.augment.mode == "waveform" and cfg.augment.ir_dir is not None and not Path(cfg.augment.ir_dir).is_dir():
        raise TrainError(f"--ir-dir {cfg.augment.ir_dir}: no such folder")
    try:
        dist_utils.resolve_device(cfg.device)
    except dist_utils.DistributedError as error:
        raise TrainError(str(error)) from None


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
        f"{key} ({theirs.get(key)!r} -> {ours.get(key)!r})"
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
