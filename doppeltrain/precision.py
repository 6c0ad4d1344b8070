"""Which float types a device computes in: the augmentation's precise dtype and the
training step's autocast.

- The augmentation builds filter kernels, filter lengths and pitch ratios in float64
  where the device has it, so they match julius's and torchaudio's (Python-float)
  arithmetic; Apple's MPS has no float64 and gets float32 (the draws are float32
  uniforms, so a kernel length on a float32 rounding boundary is a measure-zero event).
- ``precision auto`` trains in bf16 autocast only on a GPU that runs bf16 natively
  (NVIDIA Ampere and later): torch emulates it on older cards (V100, T4), slower than fp32.
"""

from __future__ import annotations

import torch

# Device types that have no float64 tensors.
DEVICES_WITHOUT_FLOAT64 = frozenset({"mps"})


def precise_dtype(device: torch.device | str) -> torch.dtype:
    """float64, or float32 on a device without float64."""
    return torch.float32 if torch.device(device).type in DEVICES_WITHOUT_FLOAT64 else torch.float64


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 arithmetic in hardware: CUDA from compute capability
    8.0 on (torch's check without emulation). The CPU and MPS train in fp32 under ``auto``."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` option on ``device``; None: fp32, no autocast.
    ``bf16`` is what the user asked for, even where it is emulated."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return None
