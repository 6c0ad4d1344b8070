"""What the network sees of one view: waveform augmentation, log-mel, spectrogram masking.

``(B, T)`` waveforms -> ``(B, 1, 96, 64)`` log-mel examples. Exactly one augmentation
mode is active (``AugmentConfig.mode``); without a generator (validation, retrieval)
nothing is augmented.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .augment import Augmenter
from .config import TrainConfig
from .features import LogMelFrontend


class ViewPipeline(nn.Module):
    """Augmentation and features of one view, on the training device."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.frontend = LogMelFrontend(cfg.features)
        self.augmenter = Augmenter(cfg.augment, cfg.data.sample_rate)

    def forward(self, waves: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if generator is None:
            return self.frontend(waves)
        spec = self.frontend(self.augmenter.waveform(waves, generator))
        return self.augmenter.spectrogram(spec, generator)
