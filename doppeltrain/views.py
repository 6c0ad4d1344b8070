"""What the network sees of one view: waveform augmentation, log-mel, spectrogram masking.

``(B, T)`` waveforms -> ``(B, 1, 96, 64)`` log-mel examples. Exactly one augmentation
mode is active (``AugmentConfig.mode``); without a generator (validation, retrieval)
nothing is augmented.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .augment import SpecAugment, WaveformAugment
from .config import TrainConfig
from .features import LogMelFrontend


class ViewPipeline(nn.Module):
    """Augmentation and features of one view, on the training device."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.frontend = LogMelFrontend(cfg.features)
        mode = cfg.augment.mode
        self.waveform_augment = WaveformAugment(cfg.augment, cfg.data.sample_rate) if mode == "waveform" else None
        self.spec_augment = SpecAugment(cfg.augment) if mode in ("specaugment", "masking") else None

    def forward(self, waves: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if self.waveform_augment is not None and generator is not None:
            waves = self.waveform_augment(waves, generator)
        spec = self.frontend(waves)
        if self.spec_augment is not None and generator is not None:
            spec = self.spec_augment(spec, generator)
        return spec
