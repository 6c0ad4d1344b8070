"""The training loop: ``fit(cfg)`` trains, validates, logs and checkpoints one run.

Each step: a batch of pairs ``(a, b)`` -> device -> waveform augmentation (each view
drawn separately) -> log-mel -> SpecAugment -> the network on both views at once ->
L2-normalize -> gather over ranks -> alignment + uniformity -> optimizer step. The
learning rate follows a MultiStepLR stepped once per epoch.

Everything random is a function of ``(seed, epoch, step, rank)`` (augmentation draws),
``(seed, epoch, rank, worker)`` (data order) or ``(seed, epoch, rank)`` (the global
RNGs, e.g. for dropout), never of how long the process has lived: a run resumed at an
epoch boundary ends with the same weights as one that was never interrupted.

A run folder ``runs_dir/run/`` holds ``config.json``, ``metrics.jsonl``,
``tensorboard/`` and ``checkpoints/`` (``latest.pt`` every epoch, ``epoch-NNNN.pt``
every ``checkpoint_every`` epochs and at the end).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data
from . import distributed as dist_utils
from .augment import SpecAugment, WaveformAugment, make_generator
from .checkpoint import (
    LATEST_NAME,
    epoch_checkpoint_name,
    load_checkpoint,
    manifest_digests,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import AUGMENT_MODES, OptimConfig, TrainConfig
from .features import LogMelFrontend
from .loss import contrastive_loss
from .model import MODEL_BLOCKS, build_model

OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("auto", "fp32", "bf16")
REFERENCE_BATCH = 256  # the batch the reference's SGD learning rate is quoted for
SGD_BASE_LR = 0.12
ADAM_LR = 1e-3
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-6, "adam": 1e-4}
# Options a resumed run may change: they affect speed, logging or when to stop, not the
# weights. Not data.workers: it decides which worker reads which shard, hence the order.
# Datasets may move: their manifests' digests must still match the checkpoint's.
RESUME_MAY_CHANGE = frozenset(
    {"resume", "until_epoch", "device", "progress", "log_every", "audit", "runs_dir", "val_audio_pairs", "data.datasets"}
)


class TrainError(ValueError):
    """Bad options or a run that cannot go on; the message is one line."""


# --- options ---------------------------------------------------------------------------


def validate_config(cfg: TrainConfig) -> None:
    """Check every option before any work starts; raise TrainError naming the first bad one."""
    checks = [
        (len(cfg.data.datasets) > 0, "no datasets given"),
        (cfg.epochs >= 1, f"--epochs must be at least 1, got {cfg.epochs}"),
        (cfg.data.batch_size >= 2, f"--batch-size must be at least 2 (uniformity needs pairs), got {cfg.data.batch_size}"),
        (cfg.data.workers >= 0, f"--workers must be 0 or more, got {cfg.data.workers}"),
        (cfg.data.val_shards >= 0, f"--val-shards must be 0 (none) or more, got {cfg.data.val_shards}"),
        (cfg.augment.mode in AUGMENT_MODES, f"unknown augmentation mode {cfg.augment.mode!r}: expected one of {', '.join(AUGMENT_MODES)}"),
        (cfg.optim.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optim.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"),
        (cfg.optim.lr is None or cfg.optim.lr > 0, f"--lr must be positive, got {cfg.optim.lr}"),
        (cfg.optim.weight_decay is None or cfg.optim.weight_decay >= 0, "weight decay must be 0 or more"),
        (all(0 < m <= 1 for m in cfg.optim.milestones), "milestones must be fractions of the epochs in (0, 1]"),
        (cfg.model.model in MODEL_BLOCKS, f"unknown model {cfg.model.model!r}: expected one of {', '.join(MODEL_BLOCKS)}"),
        (cfg.model.width >= 1, f"--width must be at least 1, got {cfg.model.width}"),
        (cfg.model.embedding_dim >= 1, f"--embedding-dim must be at least 1, got {cfg.model.embedding_dim}"),
        (cfg.val_every >= 0, f"--val-every must be 0 (never) or more, got {cfg.val_every}"),
        (cfg.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {cfg.checkpoint_every}"),
        (cfg.log_every >= 1, f"--log-every must be at least 1, got {cfg.log_every}"),
        (cfg.precision in PRECISIONS, f"unknown precision {cfg.precision!r}: expected one of {', '.join(PRECISIONS)}"),
        (cfg.steps_per_epoch is None or cfg.steps_per_epoch >= 1, f"--steps-per-epoch must be at least 1, got {cfg.steps_per_epoch}"),
        (cfg.until_epoch is None or 1 <= cfg.until_epoch <= cfg.epochs, f"--until-epoch must be within 1..{cfg.epochs}, got {cfg.until_epoch}"),
        (cfg.val_audio_pairs >= 0, f"val_audio_pairs must be 0 or more, got {cfg.val_audio_pairs}"),
        (bool(cfg.run) and "/" not in cfg.run and cfg.run not in (".", ".."), f"--run must be a plain folder name, got {cfg.run!r}"),
        (cfg.features.sample_rate == cfg.data.sample_rate, "features.sample_rate must equal data.sample_rate"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainError(message)
    if cfg.augment.mode == "waveform" and cfg.augment.ir_dir is not None and not Path(cfg.augment.ir_dir).is_dir():
        raise TrainError(f"--ir-dir {cfg.augment.ir_dir}: no such folder")
    try:
        dist_utils.resolve_device(cfg.device)
    except dist_utils.DistributedError as error:
        raise TrainError(str(error)) from None


def learning_rate(optim: OptimConfig, batch_size: int, world_size: int) -> float:
    """The initial learning rate: ``optim.lr`` if set, else the reference's rule.

    SGD: ``0.12 * batch_size / 256 * world_size``, the linear scaling rule. The
    reference writes ``batch // 256``, which is 0 below 256 and a staircase above; the
    two agree at every multiple of 256 (the paper's 768 gives 0.36 on one GPU), and the
    ratio keeps small CPU batches trainable. Adam: 1e-3.
    """
    if optim.lr is not None:
        return optim.lr
    if optim.optimizer == "adam":
        return ADAM_LR
    return SGD_BASE_LR * batch_size / REFERENCE_BATCH * world_size


def weight_decay(optim: OptimConfig) -> float:
    return optim.weight_decay if optim.weight_decay is not None else DEFAULT_WEIGHT_DECAY[optim.optimizer]


def milestone_epochs(epochs: int, fractions: tuple[float, ...]) -> list[int]:
    """Epochs after which the learning rate drops: 155, 170, 185 for 200 epochs."""
    return [int(fraction * epochs) for fraction in fractions]


def build_optimizer(params, cfg: TrainConfig, world_size: int) -> torch.optim.Optimizer:
    lr = learning_rate(cfg.optim, cfg.data.batch_size, world_size)
    if cfg.optim.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay(cfg.optim))
    # The reference gives SGD no momentum.
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay(cfg.optim))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    milestones = milestone_epochs(cfg.epochs, cfg.optim.milestones)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.optim.gamma)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part (and on nothing else)."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Make python's, numpy's and torch's global RNGs functions of (seed, epoch, rank)."""
    value = derive_seed(seed, epoch, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.runs_dir) / cfg.run


def latest_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / LATEST_NAME


def resume_config(run_dir: Path) -> TrainConfig:
    """The config a run was started with, read from its latest checkpoint."""
    state = load_checkpoint(latest_checkpoint(run_dir))
    return TrainConfig.from_dict(state["config"])


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


# --- the loop --------------------------------------------------------------------------


class _Logger:
    """metrics.jsonl and TensorBoard, on rank 0 only (other ranks get a silent one)."""

    def __init__(self, run_dir: Path, active: bool, start_epoch: int, start_step: int):
        self.active = active
        self.metrics_path = run_dir / "metrics.jsonl"
        self.writer = None
        if not active:
            return
        # Drop what an earlier invocation logged after the checkpoint this one starts
        # from (all of it for a fresh start): those steps are trained again now.
        kept = []
        if start_epoch > 0 and self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines() if _logged_before(line, start_epoch)]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the earlier invocation's events from start_step on.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)

    def log(self, record: dict[str, Any], prefix: str) -> None:
        if not self.active:
            return
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch", "split") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.active:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _logged_before(line: str, epoch: int) -> bool:
    """Whether a metrics.jsonl line is a record of an epoch before ``epoch``; a line cut
    short by a kill is not."""
    try:
        return json.loads(line)["epoch"] < epoch
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


class _Pipeline(nn.Module):
    """Waveform augmentation, log-mel, SpecAugment: (B, T) waveforms -> (B, 1, 96, 64)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.frontend = LogMelFrontend(cfg.features)
        self.augment = cfg.augment.mode != "none"
        if self.augment:
            self.waveform_augment = WaveformAugment(cfg.augment, cfg.data.sample_rate)
            self.spec_augment = SpecAugment(cfg.augment)

    def forward(self, waves: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if self.augment and generator is not None:
            waves = self.waveform_augment(waves, generator)
        spec = self.frontend(waves)
        if self.augment and generator is not None:
            spec = self.spec_augment(spec, generator)
        return spec


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state_dict tensors, in key order."""
    digest = hashlib.sha256()
    for key, tensor in dist_utils.unwrap(model).state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _embed(model: nn.Module, pipeline: _Pipeline, a, b, generator, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalized embeddings of both views (augmented when ``generator`` is given).

    One forward over ``cat(a, b)``, as Wang & Isola's reference trainer does: BatchNorm
    statistics span both views.
    """
    spec_a = pipeline(a, generator)
    spec_b = pipeline(b, generator)
    with autocast:
        embeddings = model(torch.cat([spec_a, spec_b]))
    return F.normalize(embeddings.float(), dim=1).chunk(2)


@dataclass
class _Run:
    """What one invocation of fit trains with; ``step`` counts optimizer steps."""

    cfg: TrainConfig
    env: dist_utils.DistributedEnv
    run_dir: Path
    model: nn.Module  # DDP-wrapped under torchrun
    pipeline: _Pipeline
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    epoch_ref: data.SharedEpoch
    train_loader: Any
    val_loader: Any  # None: rank > 0, no validation shards, or val_every 0
    autocast: Any
    logger: _Logger
    audit: Any  # an open audit-rank{r}.jsonl, or None
    manifests: dict[str, str]
    start_epoch: int
    step: int
    timing: dict[str, float] = field(default_factory=lambda: {"wait": 0.0, "total": 0.0, "steps": 0})

    def close(self) -> None:
        self.logger.close()
        if self.audit is not None:
            self.audit.close()


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train a run end to end (or resume it) and return a summary.

    Raises TrainError, ``data.DataError``, ``augment.AugmentError`` or ``CheckpointError``
    with a one-line message on bad options or inputs, before any training starts. Under
    ``torchrun`` every process calls ``fit`` with the same config.

    The summary: ``run_dir``, ``checkpoint`` (latest), ``epochs_completed``, ``step``,
    ``loss``/``alignment``/``uniformity`` of the last step, ``val`` (last validation
    losses or None), ``pairs_per_s`` and ``data_wait_fraction`` over this invocation's
    steps other than each epoch's first (which includes starting the workers),
    ``world_size``, ``device``.
    """
    validate_config(cfg)
    env = dist_utils.init_distributed(cfg.device)
    try:
        run = _prepare(cfg, env)
        try:
            return _train(run)
        finally:
            run.close()
    finally:
        dist_utils.cleanup()


def _prepare(cfg: TrainConfig, env: dist_utils.DistributedEnv) -> _Run:
    """Find the data, check a resume, build (or restore) model, optimizer and loaders."""
    device, run_dir = env.device, run_dir_of(cfg)
    infos = data.discover(cfg.data.datasets, cfg.data.sample_rate)
    manifests = manifest_digests((info.location, info.manifest) for info in infos)
    train_shards, val_shards = data.split_shards(infos, cfg.data.val_shards, cfg.seed)
    state = _checked_resume_state(cfg, run_dir, manifests, env.world_size) if cfg.resume else None
    if state is None and latest_checkpoint(run_dir).exists():
        raise TrainError(f"{run_dir} already holds a run: pass --resume, or choose another --run")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg.model)
    if state is not None:
        model.load_state_dict(state["model"])
    if env.distributed:
        model = dist_utils.convert_sync_batchnorm(model, device)
    model = model.to(device)
    pipeline = _Pipeline(cfg).to(device)  # loads the impulse responses: fails early
    optimizer = build_optimizer(model.parameters(), cfg, env.world_size)
    scheduler = build_scheduler(optimizer, cfg)
    start_epoch, step = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"], state["step"]
        set_rng_state(state["rng"])
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    epoch_ref = data.SharedEpoch(start_epoch)
    train_loader = data.make_loader(train_shards, cfg, train=True, epoch_ref=epoch_ref, rank=env.rank, world_size=env.world_size)
    # Every rank's validation loader would read every validation pair: rank 0 alone validates.
    val_loader = None
    if val_shards and env.is_main and cfg.val_every:
        val_loader = data.make_loader(val_shards, cfg, train=False, epoch_ref=epoch_ref)

    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    dist_utils.barrier()
    resumed = state is not None
    return _Run(
        cfg=cfg, env=env, run_dir=run_dir, model=model, pipeline=pipeline, optimizer=optimizer, scheduler=scheduler,
        epoch_ref=epoch_ref, train_loader=train_loader, val_loader=val_loader,
        autocast=torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext(),
        logger=_Logger(run_dir, env.is_main, start_epoch, step),
        audit=open(run_dir / f"audit-rank{env.rank}.jsonl", "a" if resumed else "w") if cfg.audit else None,
        manifests=manifests, start_epoch=start_epoch, step=step,
    )


def _checked_resume_state(cfg: TrainConfig, run_dir: Path, manifests: dict[str, str], world_size: int) -> dict[str, Any]:
    state = load_checkpoint(latest_checkpoint(run_dir))
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
    return state


def _train(run: _Run) -> dict[str, Any]:
    cfg, env = run.cfg, run.env
    end_epoch = cfg.until_epoch or cfg.epochs
    last, val_losses = {}, None
    for epoch in range(run.start_epoch, end_epoch):
        last = train_one_epoch(run, epoch)
        run.scheduler.step()
        done = epoch + 1
        if run.val_loader is not None and (done % cfg.val_every == 0 or done == cfg.epochs):
            val_losses = evaluate(run, epoch)
        if env.is_main:
            _save(run, done)
        dist_utils.barrier()
    if run.audit is not None:
        run.audit.write(json.dumps({"final_weights_sha256": weights_digest(run.model), "step": run.step}) + "\n")
    timing = run.timing
    return {
        "run_dir": str(run.run_dir),
        "checkpoint": str(latest_checkpoint(run.run_dir)),
        "epochs_completed": end_epoch,
        "step": run.step,
        **last,
        "val": val_losses,
        "pairs_per_s": timing["steps"] * cfg.data.batch_size * env.world_size / timing["total"] if timing["total"] else None,
        "data_wait_fraction": timing["wait"] / timing["total"] if timing["total"] else None,
        "skipped_samples": run.train_loader.skipped,
        "world_size": env.world_size,
        "device": str(env.device),
    }


def train_one_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """``len(train_loader)`` optimizer steps; returns the last step's losses."""
    cfg, env = run.cfg, run.env
    run.epoch_ref.set_value(epoch)
    seed_epoch(cfg.seed, epoch, env.rank)
    run.model.train()
    steps = len(run.train_loader)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and env.is_main), leave=False)
    batches = iter(run.train_loader)
    window = {"wait": 0.0, "start": time.perf_counter(), "steps": 0}
    losses_sum, last = 0.0, {}
    for index in range(steps):
        started = time.perf_counter()
        try:
            a, b, keys = next(batches)  # data.PairBatch
        except StopIteration:
            raise TrainError(f"the training loader ended after {index} of {steps} batches") from None
        waited = time.perf_counter() - started
        if run.audit is not None:
            run.audit.write(json.dumps({"epoch": epoch, "step": run.step, "keys": list(keys)}) + "\n")
        last = train_step(run, a, b, epoch)
        losses_sum += last["loss"]
        if index > 0:  # the first batch of an epoch includes starting the workers
            run.timing["wait"] += waited
            run.timing["total"] += time.perf_counter() - started
            run.timing["steps"] += 1
        window["wait"] += waited
        window["steps"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{last['loss']:.4f}")
        if run.step % cfg.log_every == 0 or index == steps - 1:
            span = time.perf_counter() - window["start"]
            record = {
                "split": "train", "step": run.step, "epoch": epoch, **last,
                "lr": run.optimizer.param_groups[0]["lr"],
                "pairs_per_s": window["steps"] * cfg.data.batch_size * env.world_size / span,
                "data_wait_fraction": window["wait"] / span,
                "skipped_samples": run.train_loader.skipped,  # unreadable data, so far
            }
            run.logger.log(record, "train")
            window = {"wait": 0.0, "start": time.perf_counter(), "steps": 0}
    bar.close()
    run.logger.scalar("train/epoch_loss", losses_sum / steps, epoch + 1)
    return last


def train_step(run: _Run, a: torch.Tensor, b: torch.Tensor, epoch: int) -> dict[str, float]:
    """One optimizer step on a batch of pairs; returns its (global-batch) losses."""
    cfg, env, device = run.cfg, run.env, run.env.device
    a, b = a.to(device, non_blocking=True), b.to(device, non_blocking=True)
    # One generator for the step, a function of (seed, epoch, step, rank): view a draws
    # first, then view b.
    generator = make_generator(cfg.seed, epoch, run.step, env.rank, device if device.type == "cuda" else "cpu")
    za, zb = _embed(run.model, run.pipeline, a, b, generator, run.autocast)
    loss, alignment, uniformity = contrastive_loss(dist_utils.gather_with_grad(za), dist_utils.gather_with_grad(zb), cfg.loss)
    run.optimizer.zero_grad(set_to_none=True)
    # Each rank back-propagates the global loss into its own embeddings only and DDP
    # averages the ranks' gradients; scaling by the world size makes the result the
    # gradient of the global-batch loss, as with one process.
    (loss * env.world_size).backward()
    values = dict(zip(("loss", "alignment", "uniformity"), torch.stack([loss, alignment, uniformity]).tolist()))
    if not math.isfinite(values["loss"]):
        raise TrainError(f"the loss became {values['loss']} at step {run.step} (epoch {epoch + 1})")
    run.optimizer.step()
    run.step += 1
    return values


def _save(run: _Run, epochs_done: int) -> None:
    """latest.pt every epoch; epoch-NNNN.pt every checkpoint_every epochs and at the end."""
    checkpoint = {
        "model": dist_utils.unwrap(run.model).state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "epoch": epochs_done,
        "step": run.step,
        "rng": rng_state(),
        "config": run.cfg.to_dict(),
        "manifests": run.manifests,
        "world_size": run.env.world_size,
    }
    checkpoint_dir = run.run_dir / "checkpoints"
    save_checkpoint(checkpoint, checkpoint_dir / LATEST_NAME)
    if epochs_done % run.cfg.checkpoint_every == 0 or epochs_done == run.cfg.epochs:
        save_checkpoint(checkpoint, checkpoint_dir / epoch_checkpoint_name(epochs_done))


@torch.no_grad()
def evaluate(run: _Run, epoch: int) -> Optional[dict[str, float]]:
    """Validation losses over the held-out pairs, without augmentation; logs a few pairs.

    Runs on rank 0 alone with the bare network (BatchNorm uses its running statistics,
    so there is nothing to synchronise). Uniformity is measured within each batch of
    ``batch_size`` pairs, as in single-process training; batch losses are weighted by
    their size. Returns None when there is no batch of at least two pairs.
    """
    cfg, device = run.cfg, run.env.device
    model = dist_utils.unwrap(run.model)
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    pairs = 0
    for a, b, _ in run.val_loader:
        if a.shape[0] < 2:  # a last partial batch of one pair has no uniformity
            continue
        a, b = a.to(device), b.to(device)
        za, zb = _embed(model, run.pipeline, a, b, None, run.autocast)
        losses = torch.stack(contrastive_loss(za, zb, cfg.loss)).double().cpu()
        sums += losses * a.shape[0]
        if pairs == 0 and cfg.val_audio_pairs:
            _log_pairs(run.logger, a, b, run.pipeline, cfg, run.step)
        pairs += a.shape[0]
    model.train()
    if pairs == 0:
        return None
    result = dict(zip(("loss", "alignment", "uniformity"), (sums / pairs).tolist()))
    run.logger.log({"split": "val", "step": run.step, "epoch": epoch, **result}, "val")
    return result


def _log_pairs(logger: _Logger, a: torch.Tensor, b: torch.Tensor, pipeline: _Pipeline, cfg: TrainConfig, step: int) -> None:
    """Audio of up to val_audio_pairs pairs, and their two log-mel images side by side."""
    count = min(cfg.val_audio_pairs, a.shape[0])
    spec_a, spec_b = pipeline.frontend(a[:count]), pipeline.frontend(b[:count])
    for k in range(count):
        for view, wave in (("a", a[k]), ("b", b[k])):
            peak = wave.abs().max().clamp_min(1e-8)  # the synth is not bounded to [-1, 1]
            logger.writer.add_audio(f"val_pair{k}/{view}", (wave / peak).float().cpu()[None], step, sample_rate=cfg.data.sample_rate)
        # (1, frames, mels) -> (mels, frames), low frequencies at the bottom.
        images = [spec[k, 0].T.flip(0).float().cpu() for spec in (spec_a, spec_b)]
        gap = torch.full((images[0].shape[0], 2), float("nan"))
        image = torch.cat([images[0], gap, images[1]], dim=1)
        finite = image[torch.isfinite(image)]
        image = ((image - finite.min()) / (finite.max() - finite.min()).clamp_min(1e-8)).nan_to_num(1.0)
        logger.writer.add_image(f"val_pair{k}/logmel_a_b", image[None], step, dataformats="CHW")
