"""What a training rank takes from its machine: loader workers sized to its CPUs, and on
CUDA cuDNN's autotuner and the channels-last layout (docs/gpu.md, 'Training on a GPU').

None of this changes what is trained, only how fast: the data order depends on the
number of workers, so the number chosen is written into the run's config and a resumed
run reads it from there.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# Loader workers per rank, at most: FLAC decoding takes about 0.85 ms a pair on one core,
# so 16 workers give about 19,000 pairs/s, about what ResNet-18 in bf16 takes on one
# H100; more would only hold more shuffle buffers and shared-memory batches.
MAX_ACCELERATOR_WORKERS = 16
# On the CPU the network's own threads need the cores, and a step takes seconds: the
# workers only have to keep a few batches ready (the old fixed default).
MAX_CPU_WORKERS = 4


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and job
    schedulers set), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_loader_workers(device: torch.device, cpus: int | None = None, ranks_here: int | None = None) -> int:
    """Loader workers for one rank on ``device``: its share of the usable CPUs (shared
    among torchrun's ``LOCAL_WORLD_SIZE`` ranks on this machine) less one for the rank's
    own process, which augments and drives the device; at least 1, at most
    ``MAX_ACCELERATOR_WORKERS`` (``MAX_CPU_WORKERS`` when training on the CPU)."""
    cpus = usable_cpus() if cpus is None else cpus
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if ranks_here is None else ranks_here
    share = max(1, cpus // max(1, ranks_here) - 1)
    return min(share, MAX_CPU_WORKERS if device.type == "cpu" else MAX_ACCELERATOR_WORKERS)


def configure_backends(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape and keep
    the fastest (``cudnn.benchmark``): training shapes are fixed (batch, 1, 96, 64), and
    GPU runs make no bit-exactness claim (only CPU runs resume bit for bit). Leaves
    ``cudnn.allow_tf32`` at torch's default (on): fp32 convolutions run in TF32 on Ampere
    and later."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def for_device(network: nn.Module, device: torch.device) -> nn.Module:
    """``network`` in the memory layout its convolutions run fastest in on ``device``:
    channels-last on CUDA, where cuDNN's tensor-core kernels read NHWC and would
    otherwise transpose every activation; unchanged elsewhere. Weights keep their values
    (``state_dict`` digests and checkpoints read them in logical order)."""
    if device.type == "cuda":
        return network.to(memory_format=torch.channels_last)
    return network
