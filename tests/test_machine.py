"""What a training rank takes from its machine: loader workers sized to its CPUs, the
autocast dtype of `precision`, the CUDA-only layout and cuDNN settings."""

from __future__ import annotations

import pytest
import torch

from doppeltrain.config import TrainConfig
from doppeltrain.machine import (
    MAX_ACCELERATOR_WORKERS,
    MAX_CPU_WORKERS,
    configure_backends,
    default_loader_workers,
    for_device,
)
from doppeltrain.model import build_model
from doppeltrain.precision import autocast_dtype, precise_dtype
from doppeltrain.train import sized_to_machine

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize(
    "device, cpus, ranks_here, expected",
    [
        (CUDA, 16, 1, 15),  # the rank's own process keeps a core
        (CUDA, 64, 8, 7),  # eight ranks share the machine
        (CUDA, 128, 1, MAX_ACCELERATOR_WORKERS),
        (CUDA, 1, 1, 1),
        (CUDA, 4, 8, 1),  # never none
        (CPU, 2, 1, 1),  # the network's threads need the cores
        (CPU, 32, 1, MAX_CPU_WORKERS),
    ],
)
def test_loader_workers_follow_the_cpus_a_rank_may_use(device, cpus, ranks_here, expected):
    assert default_loader_workers(device, cpus=cpus, ranks_here=ranks_here) == expected


def test_torchruns_local_world_size_shares_the_cpus(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_loader_workers(CUDA, cpus=32) == 7


def test_a_run_records_the_workers_it_was_sized_to():
    cfg = TrainConfig()
    assert cfg.data.workers is None  # the default: left to the machine
    sized = sized_to_machine(cfg, CPU)
    assert sized.data.workers == default_loader_workers(CPU) and cfg.data.workers is None  # a copy
    cfg.data.workers = 3
    assert sized_to_machine(cfg, CUDA).data.workers == 3  # what the user gave stays


def gpu(native: bool, monkeypatch) -> None:
    """Make torch report a CUDA GPU with bf16 in hardware (Ampere and later) or emulated
    only (V100, T4)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)


def test_auto_precision_is_bf16_only_where_the_gpu_has_it_in_hardware(monkeypatch):
    gpu(native=True, monkeypatch=monkeypatch)
    assert autocast_dtype("auto", CUDA) == torch.bfloat16
    gpu(native=False, monkeypatch=monkeypatch)
    assert autocast_dtype("auto", CUDA) is None  # fp32: emulated bf16 is slower
    assert autocast_dtype("bf16", CUDA) == torch.bfloat16  # asked for: given
    assert autocast_dtype("fp32", CUDA) is None
    assert autocast_dtype("auto", CPU) is None and autocast_dtype("bf16", CPU) == torch.bfloat16


def test_float64_is_used_where_the_device_has_it():
    assert precise_dtype(CPU) == precise_dtype(CUDA) == torch.float64
    assert precise_dtype(torch.device("mps")) == torch.float32


def test_cudnn_autotunes_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_backends(CPU)
    assert torch.backends.cudnn.benchmark is False
    configure_backends(CUDA)  # a flag: settable without a GPU
    assert torch.backends.cudnn.benchmark is True


def test_the_network_is_channels_last_on_cuda_only():
    network = build_model(TrainConfig().model)
    weights = {name: value.clone() for name, value in network.state_dict().items()}
    assert for_device(network, CPU).conv1.weight.is_contiguous()
    laid_out = for_device(network, CUDA)  # the layout changes, not the device
    assert laid_out.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(value, weights[name]) for name, value in laid_out.state_dict().items())
