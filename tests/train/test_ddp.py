"""Distributed training on the CPU (gloo): torchrun end to end, and the collectives."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from doppeltrain.checkpoint import load_checkpoint_network
from doppeltrain.config import LossConfig
from doppeltrain.distributed import AllReduceBatchNorm2d, gather_with_grad
from doppeltrain.loss import contrastive_loss
from doppeltrain.train import weights_digest

REPO = Path(__file__).resolve().parents[2]
WORLD = 2


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_ranks_read_disjoint_pairs_and_end_with_equal_weights(voice_shards, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
        "-m", "doppeltrain", "fit", str(voice_shards), "--runs-dir", str(tmp_path), "--name", "ddp",
        "--model", "small", "--width", "8", "--embedding-dim", "32", "--batch-size", "4", "--workers", "1",
        "--val-shards", "1", "--epochs", "2", "--pairs-per-epoch", "all", "--val-every", "1", "--log-every", "1", "--audit",
        "--device", "cpu", "--no-progress",  # gloo on the CPU even where a GPU is: NCCL refuses two ranks on one GPU
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    audits = [read_jsonl(run_dir / f"audit-rank{rank}.jsonl") for rank in range(WORLD)]

    # 24 training pairs, a global batch of 8: 3 steps per epoch on each rank.
    for epoch in (0, 1):
        seen = [[key for record in audit if record.get("epoch") == epoch for key in record["keys"]] for audit in audits]
        assert [len(keys) for keys in seen] == [3 * 4, 3 * 4]
        assert not set(seen[0]) & set(seen[1]), f"ranks shared pairs in epoch {epoch}"

    digests = [audit[-1]["final_weights_sha256"] for audit in audits]
    assert digests[0] == digests[1]
    # The checkpoint holds those very weights (BatchNorm buffers included).
    model, config = load_checkpoint_network(run_dir / "checkpoints" / "latest.pt")
    assert weights_digest(model) == digests[0]
    assert config.data.batch_size == 4

    # Rank 0 alone logs; the learning rate follows the world size (0.12 * 4/256 * 2).
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r for r in records if r["split"] == "train"][0]["lr"] == pytest.approx(0.12 * 4 / 256 * WORLD)
    # The untrained network, then after each epoch.
    assert [(r["epoch"], r["step"]) for r in records if r["split"] == "val"] == [(0, 0), (0, 3), (1, 6)]


# --- the collectives, against one process computing the global batch -----------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _collectives_worker(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        _check_gather_gives_the_global_gradient(rank, world)
        _check_batchnorm_uses_global_statistics(rank, world)
    finally:
        dist.destroy_process_group()


def _check_gather_gives_the_global_gradient(rank: int, world: int) -> None:
    batch = 3
    generator = torch.Generator().manual_seed(0)  # every rank builds the same global data
    a_all = torch.randn(world * batch, 5, generator=generator)
    b_all = torch.randn(world * batch, 5, generator=generator)
    torch.manual_seed(1)
    reference = torch.nn.Linear(5, 4)
    ddp_encoder = torch.nn.parallel.DistributedDataParallel(_copy(reference))

    # One process, the global batch.
    total, _, _ = contrastive_loss(F.normalize(reference(a_all), dim=1), F.normalize(reference(b_all), dim=1), LossConfig())
    total.backward()

    # Each rank its slice; gather with the local slot kept; the loss scaled by the world size.
    rows = slice(rank * batch, (rank + 1) * batch)
    za = F.normalize(ddp_encoder(a_all[rows]), dim=1)
    zb = F.normalize(ddp_encoder(b_all[rows]), dim=1)
    gathered_a, gathered_b = gather_with_grad(za), gather_with_grad(zb)
    torch.testing.assert_close(gathered_a.detach(), F.normalize(reference(a_all), dim=1).detach())
    assert gathered_a.requires_grad
    distributed_total, _, _ = contrastive_loss(gathered_a, gathered_b, LossConfig())
    torch.testing.assert_close(distributed_total, total.detach())
    (distributed_total * world).backward()
    for ours, theirs in zip(ddp_encoder.module.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad)


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    clone = type(module)(module.in_features, module.out_features)
    clone.load_state_dict(module.state_dict())
    return clone


def _check_batchnorm_uses_global_statistics(rank: int, world: int) -> None:
    batch, channels = 2, 3
    generator = torch.Generator().manual_seed(2)
    x_all = torch.randn(world * batch, channels, 4, 5, generator=generator) * 3 + 1
    weights = torch.randn(world * batch, channels, 4, 5, generator=generator)
    reference = torch.nn.BatchNorm2d(channels)
    synced = AllReduceBatchNorm2d(channels)

    x_ref = x_all.clone().requires_grad_(True)
    (reference(x_ref) * weights).sum().backward()

    rows = slice(rank * batch, (rank + 1) * batch)
    x_local = x_all[rows].clone().requires_grad_(True)
    y_local = synced(x_local)
    torch.testing.assert_close(y_local, _normalized(x_all, reference)[rows])
    (y_local * weights[rows]).sum().backward()
    torch.testing.assert_close(x_local.grad, x_ref.grad[rows])
    weight_grad = synced.weight.grad.clone()
    dist.all_reduce(weight_grad)  # DDP would average; the sum over ranks is the global gradient
    torch.testing.assert_close(weight_grad, reference.weight.grad)
    torch.testing.assert_close(synced.running_mean, reference.running_mean)
    torch.testing.assert_close(synced.running_var, reference.running_var)


def _normalized(x: torch.Tensor, reference: torch.nn.BatchNorm2d) -> torch.Tensor:
    """What the reference produced in its training forward (without touching its buffers)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return ((x - mean) / torch.sqrt(var + reference.eps) * reference.weight.detach().view(1, -1, 1, 1)
            + reference.bias.detach().view(1, -1, 1, 1))


@pytest.mark.slow
def test_gather_and_batchnorm_across_two_processes_match_one_process():
    mp.spawn(_collectives_worker, args=(WORLD, free_port()), nprocs=WORLD, join=True)
