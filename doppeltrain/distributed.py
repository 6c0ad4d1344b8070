"""Device and rank set-up, and the collectives the loss and BatchNorm need.

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
the process joins the group with NCCL on CUDA and gloo on CPU; launched plainly it is
rank 0 of 1 and nothing here talks to other processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from doppelgen.console import InputError

COLLECTIVE_TIMEOUT = timedelta(hours=1)


class DistributedError(InputError):
    """The device or process-group set-up is impossible; the message is one line."""


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; ``cuda`` means this process's local GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DistributedError(f"unknown device {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError("device cuda requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DistributedError("device mps requested but MPS is not available")
    return device


def init_distributed(device: str = "auto") -> DistributedEnv:
    """Read torchrun's environment, pick the device and join the process group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1:
        if resolved.type == "mps":
            raise DistributedError("distributed training needs cuda or cpu devices, not mps")
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        if not dist.is_initialized():
            # Other ranks wait at a barrier while rank 0 validates and writes checkpoints:
            # allow that longer than NCCL's default 10 minutes.
            dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return DistributedEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order; gradients flow into the local slot.

    The other ranks' slots are constants here: each rank back-propagates the global loss
    into its own embeddings only, and DDP's gradient averaging combines them (the train
    step scales the loss by the world size so the result is the global batch's gradient).
    Every rank must pass the same shape.
    """
    if world_size() == 1:
        return x
    slots = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(slots, x.detach().contiguous())
    slots[dist.get_rank()] = x
    return torch.cat(slots, dim=0)


def barrier() -> None:
    if world_size() > 1:
        # NCCL otherwise guesses the device from the rank and warns.
        device_ids = [torch.cuda.current_device()] if dist.get_backend() == "nccl" else None
        dist.barrier(device_ids=device_ids)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics over every rank, on any device.

    torch's ``nn.SyncBatchNorm`` refuses CPU tensors, and the CPU (gloo) runs must
    normalize like the GPU ones. Sums and squared sums are all-reduced through an
    autograd-aware collective, so gradients through the statistics reach every rank.
    Outside training, or in a single process, it is a plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        local_count = torch.tensor([x.numel() // channels], dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), x.pow(2).sum(dim=(0, 2, 3)), local_count]))
        count = stats[-1]
        mean = stats[:channels] / count
        var = (stats[channels : 2 * channels] / count - mean.pow(2)).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(unbiased, momentum)
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronise every BatchNorm across ranks: torch's SyncBatchNorm on CUDA, ours elsewhere.

    Call before moving the model to its device; the state_dict keys do not change.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_all_reduce(model)


def _convert_all_reduce(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, AllReduceBatchNorm2d):
        converted = AllReduceBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, _convert_all_reduce(child))
    return module


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
