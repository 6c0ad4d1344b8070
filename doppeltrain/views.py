"""What the network sees of one view: waveform augmentation, log-mel, spectrogram masking.

``(B, T)`` waveforms -> ``(B, 1, 96, 64)`` log-mel examples. Exactly one augmentation
mode is active (``AugmentConfig.mode``); without a generator (validation, retrieval)
nothing is augmented.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from doppelgen.irs import default_ir_dir
from doppeltrain.augment.chain import Augmenter
from doppeltrain.config import AugmentConfig, TrainConfig
from doppeltrain.features import LogMelFrontend


class ViewPipeline(nn.Module):
    """Augmentation and features of one view, on the training device."""

    def __init__(self, cfg: TrainConfig, clip_samples: Optional[int] = None):
        """`clip_samples`: the length of the clips it will see, when known; only that much
        of each impulse response is read."""
        super().__init__()
        self.frontend = LogMelFrontend(cfg.features)
        self.augmenter = Augmenter(with_impulse_responses(cfg.augment, cfg.data.sample_rate), cfg.data.sample_rate, clip_samples)

    def forward(self, waves: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        if generator is None:
            return self.frontend(waves)
        spec = self.frontend(self.augmenter.waveform(waves, generator))
        return self.augmenter.spectrogram(spec, generator)


def with_impulse_responses(augment: AugmentConfig, sample_rate: int) -> AugmentConfig:
    """``augment`` with an impulse-response folder whenever the convolution can run: the
    user's ``ir_dir``, else the default set of ``doppelgen irs``, rendered into the cache
    on first use (a few seconds), so all five waveform augmentations run out of the box."""
    if augment.mode != "waveform" or augment.ir_dir is not None or augment.p_impulse_response == 0:
        return augment
    return dataclasses.replace(augment, ir_dir=str(default_ir_dir(sample_rate)))
