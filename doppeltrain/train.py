"""The training loop: ``fit(cfg)`` trains, validates, logs and checkpoints one run.

Each step: a batch of pairs ``(a, b)`` -> device -> each view augmented on its own (one
mode: waveform, specaugment or masking) -> log-mel -> the network, one forward pass per
view (as the reference: BatchNorm statistics per view) -> L2-normalize -> gather over
ranks -> alignment + uniformity -> optimizer step at the learning rate of that step.

Everything random is a function of ``(seed, epoch, step, rank)`` (augmentation draws),
``(seed, epoch, rank, worker)`` (data order) or ``(seed, epoch, rank)`` (the global
RNGs, e.g. for dropout), never of how long the process has lived: a run resumed at an
epoch boundary ends with the same weights as one that was never interrupted.

A run folder ``runs_dir/run/`` holds ``config.json``, ``metrics.jsonl``,
``tensorboard/`` and ``checkpoints/`` (``latest.pt`` every epoch, ``epoch-NNNN.pt``
every ``checkpoint_every`` epochs and at the end).
"""

from __future__ import annotations

import copy
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from doppelgen.files import write_atomic
from doppelgen.format import json_text
from doppeltrain import data
from doppeltrain import distributed as dist_utils
from doppeltrain.augment.chain import make_generator
from doppeltrain.checkpoint import (
    LATEST_NAME,
    config_from_state,
    epoch_checkpoint_name,
    load_checkpoint,
    network_with_weights,
    save_checkpoint,
    state_dict_sha256,
)
from doppeltrain.config import TrainConfig
from doppeltrain.config_checks import TrainError, check_resume, validate_config
from doppeltrain.evaluate import embed_views, evaluate
from doppeltrain.features import example_samples, n_examples
from doppeltrain.loss import contrastive_loss
from doppeltrain.machine import configure_backends, default_loader_workers, for_device
from doppeltrain.model import TwoViewEncoder, build_model
from doppeltrain.precision import autocast_dtype, precise_dtype
from doppeltrain.rng_state import rng_state, set_rng_state
from doppeltrain.run_lock import locked_run_folder
from doppeltrain.run_log import RunLogger, epoch_line, log_pairs, validation_text
from doppeltrain.schedule import base_learning_rate, build_optimizer, learning_rate_at, milestone_steps, set_learning_rate
from doppeltrain.views import ViewPipeline


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
    return config_from_state(state["config"], latest_checkpoint(run_dir))  # CheckpointError, one line


def weights_digest(model: nn.Module) -> str:
    """sha256 over the (unwrapped) network's state_dict tensors, in key order."""
    return state_dict_sha256(dist_utils.unwrap(model).state_dict())


@contextmanager
def interrupt_between_steps() -> Any:
    """Ctrl-C stops the run at the next step boundary instead of wherever it lands.

    Decoding calls Python back from C (soundfile's virtual I/O through cffi), and an
    interrupt raised inside such a callback is printed and dropped: the run went on. The
    handler only records the request (``yield``s a callable that raises
    KeyboardInterrupt once one came); a second Ctrl-C interrupts at once. Outside the
    main thread (signal handlers cannot be set there) it does nothing.
    """
    requested = threading.Event()

    def check() -> None:
        if requested.is_set():
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield check
        return

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print("interrupt: stopping after this step (Ctrl-C again to stop now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the run ---------------------------------------------------------------------------


@dataclass
class _Run:
    """What one invocation of fit trains with; ``step`` counts optimizer steps."""

    cfg: TrainConfig
    env: dist_utils.DistributedEnv
    run_dir: Path
    network: nn.Module  # the bare embedding network: what checkpoints hold
    encoder: nn.Module  # TwoViewEncoder(network), DDP-wrapped under torchrun
    pipeline: ViewPipeline
    optimizer: torch.optim.Optimizer
    base_lr: float
    milestones: list[int]  # steps
    epoch_ref: data.SharedEpoch
    train_loader: Any
    val_loader: Any  # None: rank > 0, no validation shards, or val_every 0
    autocast: Any
    precision: str  # what the step computes in: "bf16" (autocast) or "fp32"
    logger: RunLogger
    audit: Any  # an open audit-rank{r}.jsonl, or None
    manifests: dict[str, str]
    start_epoch: int
    step: int
    timing: dict[str, float] = field(default_factory=lambda: {"wait": 0.0, "total": 0.0, "steps": 0})
    check_interrupt: Any = lambda: None  # raises KeyboardInterrupt once Ctrl-C was pressed
    loaders: Any = None  # data.RunLoaders: closing it stops the rendering workers

    def close(self) -> None:
        if self.loaders is not None:
            self.loaders.close()
        self.logger.close()
        if self.audit is not None:
            self.audit.close()


def fit(cfg: TrainConfig) -> dict[str, Any]:
    """Train a run end to end (or resume it) and return a summary.

    Raises TrainError, ``data.DataError``, ``augment.AugmentError`` or ``CheckpointError``
    with a one-line message on bad options or inputs, before any training starts. Under
    ``torchrun`` every process calls ``fit`` with the same config.

    The summary: ``run_dir``, ``checkpoint`` (latest), ``epochs_completed``, ``step``,
    ``loss``/``alignment``/``uniformity``/``lr`` (means over the last epoch), ``val``
    (the last validation: losses, ``recall_at_1``, ``recall_at_10``, ``median_rank``,
    ``group``; None without validation), ``val_untrained`` (the same for the network
    before its first step; None when resumed), ``pairs_per_s`` and ``data_wait_fraction``
    over this invocation's steps other than each epoch's first (which includes starting
    the workers), ``data_wait_seconds`` (the waiting those steps did), ``skipped_samples``,
    ``world_size``, ``device``.
    """
    validate_config(cfg)
    env = dist_utils.init_distributed(cfg.device)
    try:
        with locked_run_folder(run_dir_of(cfg), active=env.is_main):
            run = _prepare(sized_to_machine(cfg, env.device), env)
            try:
                with interrupt_between_steps() as run.check_interrupt:
                    try:
                        return _train(run)
                    except RuntimeError as error:  # a loader worker that died or failed: one line
                        failure = data.worker_failure(error)
                        if failure is None:
                            raise
                        raise failure from None
            finally:
                run.close()
    finally:
        dist_utils.cleanup()


def sized_to_machine(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """A copy of ``cfg`` with what was left to the machine filled in (``data.workers``):
    the run's config then records it, and a resumed run reads the same data order."""
    if cfg.data.workers is not None:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.data.workers = default_loader_workers(device)
    return cfg


def _prepare(cfg: TrainConfig, env: dist_utils.DistributedEnv) -> _Run:
    """Find the data, check a resume, build (or restore) model, optimizer and loaders."""
    device, run_dir = env.device, run_dir_of(cfg)
    sources = data.find_sources(cfg.data.datasets, cfg.data.sample_rate)
    if n_examples(sources.n_samples, cfg.features) == 0:
        # The network sees a clip's first example: a shorter clip would fail every step.
        raise TrainError(f"the data's clips of {sources.n_samples} samples are shorter than one example of the "
                         f"network's input ({example_samples(cfg.features)} samples): use clips of at least that length")
    manifests = sources.digests()
    state = None
    if cfg.resume:
        state = load_checkpoint(latest_checkpoint(run_dir))
        check_resume(state, cfg, run_dir, manifests, env.world_size)
    if state is None and latest_checkpoint(run_dir).exists():
        raise TrainError(f"{run_dir} already holds a run: pass --resume, or choose another --run")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if state is not None:  # checked by name, shape and value before it is built
        network = network_with_weights(cfg, state["model"], latest_checkpoint(run_dir))
    else:
        network = build_model(cfg.model)
    if env.distributed:
        network = dist_utils.convert_sync_batchnorm(network, device)
    network = for_device(network.to(device), device)
    configure_backends(device)
    encoder = TwoViewEncoder(network)
    pipeline = ViewPipeline(cfg, sources.n_samples).to(device)  # loads the impulse responses: fails early
    base_lr = base_learning_rate(cfg.optim, cfg.data.batch_size, env.world_size)
    optimizer = build_optimizer(network.parameters(), cfg.optim, base_lr)
    start_epoch, step = 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step = state["epoch"], state["step"]
        set_rng_state(state["rng"])
    if env.distributed:
        encoder = nn.parallel.DistributedDataParallel(encoder, device_ids=[device.index] if device.type == "cuda" else None)

    epoch_ref = data.SharedEpoch(start_epoch)
    # Every rank's validation loader would read every validation pair: rank 0 alone validates.
    loaders = data.make_run_loaders(sources, cfg, epoch_ref=epoch_ref, rank=env.rank, world_size=env.world_size,
                                    device=device, validate=env.is_main and bool(cfg.val_every))
    train_loader, val_loader = loaders.train, loaders.validation

    autocast = autocast_dtype(cfg.precision, device)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Streamed recipes: their sha256 and the pair indices the run trains and validates on.
        streams = {"streams": loaders.streams} if loaders.streams else {}
        write_atomic(run_dir / "config.json", (json_text({**cfg.to_dict(), **streams}, indent=2) + "\n").encode())
    dist_utils.barrier()
    resumed = state is not None
    return _Run(
        cfg=cfg, env=env, run_dir=run_dir, network=network, encoder=encoder, pipeline=pipeline, optimizer=optimizer,
        base_lr=base_lr, milestones=milestone_steps(cfg.epochs * len(train_loader), cfg.optim.milestones),
        epoch_ref=epoch_ref, train_loader=train_loader, val_loader=val_loader,
        autocast=torch.autocast(device.type, dtype=autocast) if autocast is not None else nullcontext(),
        precision="bf16" if autocast == torch.bfloat16 else "fp32",
        logger=RunLogger(run_dir, env.is_main, start_epoch, step),
        audit=open(run_dir / f"audit-rank{env.rank}.jsonl", "a" if resumed else "w") if cfg.audit else None,
        manifests=manifests, start_epoch=start_epoch, step=step, loaders=loaders,
    )


def _train(run: _Run) -> dict[str, Any]:
    cfg, env = run.cfg, run.env
    end_epoch = cfg.until_epoch or cfg.epochs
    last, val, val_untrained = {}, None, None
    if run.step == 0 and run.val_loader is not None:
        # The same network before its first step: the baseline every later figure is read against.
        val = val_untrained = validate(run, epoch=0)
        run.logger.line(f"untrained: {validation_text(val)}" if val else "untrained: no validation batch of 2 pairs")
    for epoch in range(run.start_epoch, end_epoch):
        last = train_one_epoch(run, epoch)
        done = epoch + 1
        validated = None
        if run.val_loader is not None and (done % cfg.val_every == 0 or done == cfg.epochs):
            val = validated = validate(run, epoch)
        run.logger.line(epoch_line(epoch, cfg.epochs, last, validated))
        if env.is_main:
            _save(run, done)
        dist_utils.barrier()
    if run.audit is not None:
        run.audit.write(json_text({"final_weights_sha256": weights_digest(run.network), "step": run.step}) + "\n")
    timing = run.timing
    return {
        "run_dir": str(run.run_dir),
        "checkpoint": str(latest_checkpoint(run.run_dir)),
        "epochs_completed": end_epoch,
        "step": run.step,
        **{key: last[key] for key in ("loss", "alignment", "uniformity", "lr") if key in last},
        "val": val,
        "val_untrained": val_untrained,
        "pairs_per_s": timing["steps"] * cfg.data.batch_size * env.world_size / timing["total"] if timing["total"] else None,
        "data_wait_fraction": timing["wait"] / timing["total"] if timing["total"] else None,
        "data_wait_seconds": timing["wait"],
        "skipped_samples": run.train_loader.skipped,
        "world_size": env.world_size,
        "device": str(env.device),
        "precision": run.precision,
    }


LOSS_NAMES = ("loss", "alignment", "uniformity")


class LossTally:
    """A step's losses, kept on the device until read: the latest, the epoch's sums and
    the first step whose loss was not finite. Adding a step reads nothing back, so the
    host can queue the next step while the device still runs this one; :meth:`read`
    reads them all at once (one sync)."""

    def __init__(self, device: torch.device):
        self.dtype = precise_dtype(device)  # float64 sums where the device has it, as Python floats were
        self.latest = torch.zeros(len(LOSS_NAMES), dtype=self.dtype, device=device)
        self.sums = torch.zeros_like(self.latest)
        self.first_bad = torch.full((2,), -1.0, dtype=self.dtype, device=device)  # (step, loss); step -1: none yet

    def add(self, losses: torch.Tensor, step: int) -> None:
        """Tally step ``step``'s ``(loss, alignment, uniformity)``."""
        self.latest = losses.detach().to(self.dtype)
        self.sums += self.latest
        first = ~torch.isfinite(self.latest[0]) & (self.first_bad[0] < 0)
        here = torch.stack([torch.full((), float(step), dtype=self.dtype, device=self.latest.device), self.latest[0]])
        self.first_bad = torch.where(first, here, self.first_bad)

    def read(self, epoch: int) -> tuple[dict[str, float], dict[str, float]]:
        """The latest step's losses and the epoch's sums; raises TrainError naming the
        first step, so far, whose loss was not finite."""
        numbers = torch.cat([self.latest, self.sums, self.first_bad]).tolist()
        bad_step, bad_loss = numbers[-2:]
        if bad_step >= 0:
            raise TrainError(f"the loss became {bad_loss} at step {int(bad_step)} (epoch {epoch + 1})")
        count = len(LOSS_NAMES)
        return dict(zip(LOSS_NAMES, numbers[:count])), dict(zip(LOSS_NAMES, numbers[count : 2 * count]))


def train_one_epoch(run: _Run, epoch: int) -> dict[str, float]:
    """``len(train_loader)`` optimizer steps; returns the epoch's mean losses, its last
    learning rate and its throughput.

    The losses are read from the device only when a record is logged (every
    ``log_every`` steps) and at the epoch's last step, not every step. A loss that is not
    finite is therefore noticed up to ``log_every - 1`` steps late (the error names the
    step it happened at), always before the epoch's checkpoint is written."""
    cfg, env = run.cfg, run.env
    run.epoch_ref.set_value(epoch)
    seed_epoch(cfg.seed, epoch, env.rank)
    run.encoder.train()
    steps = len(run.train_loader)
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and env.is_main), leave=False)
    batches = iter(run.train_loader)
    window = {"wait": 0.0, "start": time.perf_counter(), "steps": 0}
    tally = LossTally(env.device)
    epoch_wait, epoch_start = 0.0, time.perf_counter()
    for index in range(steps):
        started = time.perf_counter()
        try:
            a, b, keys = next(batches)  # data.PairBatch
        except StopIteration:
            raise TrainError(f"the training loader ended after {index} of {steps} batches") from None
        waited = time.perf_counter() - started
        if run.audit is not None:
            run.audit.write(json_text({"epoch": epoch, "step": run.step, "keys": list(keys)}) + "\n")
        lr = learning_rate_at(run.step, run.base_lr, run.milestones, cfg.optim.gamma)
        tally.add(train_step(run, a, b, epoch, lr), run.step - 1)
        run.check_interrupt()
        run.logger.scalar("train/lr", lr, run.step)  # every step: the schedule is visible whole
        if index > 0:  # the first batch of an epoch includes starting the workers
            run.timing["wait"] += waited
            run.timing["total"] += time.perf_counter() - started
            run.timing["steps"] += 1
        epoch_wait += waited
        window["wait"] += waited
        window["steps"] += 1
        bar.update(1)
        if run.step % cfg.log_every == 0 or index == steps - 1:
            values, sums = tally.read(epoch)
            bar.set_postfix(loss=f"{values['loss']:.4f}")
            span = time.perf_counter() - window["start"]
            record = {
                "split": "train", "step": run.step, "epoch": epoch, **values, "lr": lr,
                "pairs_per_s": window["steps"] * cfg.data.batch_size * env.world_size / span,
                "data_wait_fraction": window["wait"] / span,
                "skipped_samples": run.train_loader.skipped,  # unreadable data, so far
            }
            run.logger.log(record, "train", tensorboard_skip=("lr",))
            window = {"wait": 0.0, "start": time.perf_counter(), "steps": 0}
    bar.close()
    span = time.perf_counter() - epoch_start
    means = {key: value / steps for key, value in sums.items()}
    run.logger.scalar("train/epoch_loss", means["loss"], epoch + 1)
    return {
        **means, "lr": lr,
        "pairs_per_s": steps * cfg.data.batch_size * env.world_size / span,
        "data_wait_fraction": epoch_wait / span,
    }


def train_step(run: _Run, a: torch.Tensor, b: torch.Tensor, epoch: int, lr: float) -> torch.Tensor:
    """One optimizer step at learning rate ``lr`` on a batch of pairs; returns its
    (global-batch) ``(loss, alignment, uniformity)``, on the device, unread: nothing in
    a step waits for the device."""
    cfg, env, device = run.cfg, run.env, run.env.device
    a, b = a.to(device, non_blocking=True), b.to(device, non_blocking=True)
    # One generator for the step, a function of (seed, epoch, step, rank): view a draws
    # first, then view b.
    generator = make_generator(cfg.seed, epoch, run.step, env.rank, device if device.type == "cuda" else "cpu")
    za, zb = embed_views(run.encoder, run.pipeline, a, b, generator, run.autocast)
    loss, alignment, uniformity = contrastive_loss(dist_utils.gather_with_grad(za), dist_utils.gather_with_grad(zb), cfg.loss)
    run.optimizer.zero_grad(set_to_none=True)
    # Each rank back-propagates the global loss into its own embeddings only and DDP
    # averages the ranks' gradients; scaling by the world size makes the result the
    # gradient of the global-batch loss, as with one process.
    (loss * env.world_size).backward()
    set_learning_rate(run.optimizer, lr)
    run.optimizer.step()
    run.step += 1
    return torch.stack([loss, alignment, uniformity]).detach()


def validate(run: _Run, epoch: int) -> Optional[dict[str, float]]:
    """:func:`evaluate` on the validation loader, logged as a ``val`` record."""
    cfg = run.cfg

    def show_pairs(a, b, spec_a, spec_b):
        if cfg.val_audio_pairs:
            log_pairs(run.logger, a, b, spec_a, spec_b, cfg.val_audio_pairs, cfg.data.sample_rate, run.step)

    encoder = TwoViewEncoder(run.network)  # the bare network: no DDP on rank 0 alone
    result = evaluate(encoder, run.pipeline, run.val_loader, cfg.loss, cfg.retrieval_group, run.env.device, run.autocast, show_pairs)
    if result is not None:
        run.logger.log({"split": "val", "step": run.step, "epoch": epoch, **result}, "val")
    return result


def _save(run: _Run, epochs_done: int) -> None:
    """latest.pt every epoch; epoch-NNNN.pt every checkpoint_every epochs and at the end.
    The learning rate is a function of the step, so no scheduler state is needed."""
    checkpoint = {
        "model": run.network.state_dict(),
        "optimizer": run.optimizer.state_dict(),
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
