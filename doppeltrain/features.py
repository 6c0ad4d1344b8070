"""The network's input: VGGish-style log-mel examples, computed in batch on the device.

The definition is docs/REFERENCE.md's ('Features fed to the network'): frames of 400 samples
(25 ms at 16 kHz) every 160 (10 ms), periodic Hann window, |FFT| of size 512, a 64-band
HTK mel filterbank from 125 to 7500 Hz with triangles in the mel domain and the DC bin
zeroed, ``log(mel + 0.01)``, then examples of 96 frames (0.96 s) every 96 frames. Frames
are not centred: frame ``t`` covers samples ``[160 t, 160 t + 400)``, so a 1 s clip has
98 frames and gives one example.

torchaudio's own mel filterbank draws its triangles in hertz, not in mel, so the
filterbank comes from ``doppelgen.vggish`` (the HTK mel scale, ``htk_hertz_to_mel``); the
STFT is torchaudio's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio

from doppelgen.vggish import vggish_mel_filterbank
from doppeltrain.config import FeatureConfig


def mel_filterbank(cfg: FeatureConfig) -> torch.Tensor:
    """The (n_fft // 2 + 1, n_mels) float32 weights: triangles whose edges are equally
    spaced on the HTK mel scale, evaluated at each FFT bin's mel value, the DC bin
    unweighted. Built once by ``doppelgen.vggish`` (NumPy), which draws the pictures of
    ``doppelgen export``: the two programs share one definition."""
    weights = vggish_mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max)
    return torch.from_numpy(weights.astype(np.float32))


def stft_window(cfg: FeatureConfig) -> torch.Tensor:
    """A periodic Hann window of ``window_length`` at the start of an ``n_fft`` frame: the
    STFT then reads ``n_fft`` samples per frame, of which only the first
    ``window_length`` count, which is VGGish's zero-padded FFT of a 400-sample frame."""
    window = torch.hann_window(cfg.window_length, periodic=True, dtype=torch.float64)
    return F.pad(window, (0, cfg.n_fft - cfg.window_length)).float()


def n_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames of a clip of ``n_samples`` (no centring, no padding)."""
    return 0 if n_samples < cfg.window_length else 1 + (n_samples - cfg.window_length) // cfg.hop_length


def example_samples(cfg: FeatureConfig) -> int:
    """Samples the frames of one example read: 400 + 95 * 160 = 15,600 by default."""
    return cfg.window_length + (cfg.example_frames - 1) * cfg.hop_length


def n_examples(n_samples: int, cfg: FeatureConfig) -> int:
    """Whole ``example_frames`` examples of a clip of ``n_samples``."""
    frames = n_frames(n_samples, cfg)
    return 0 if frames < cfg.example_frames else 1 + (frames - cfg.example_frames) // cfg.example_frames


def _log_mel(waveform: torch.Tensor, window: torch.Tensor, filterbank: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    # Under bf16 autocast the filterbank product would lose the precision the reference
    # test holds us to; features are cheap next to the network, so keep them in fp32.
    with torch.autocast(device_type=waveform.device.type, enabled=False):
        waveform = waveform.float()
        # Right-pad so the last whole window_length frame has n_fft samples to read.
        padded = F.pad(waveform, (0, cfg.n_fft - cfg.window_length))
        magnitude = torchaudio.functional.spectrogram(
            padded,
            pad=0,
            window=window,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.n_fft,
            power=1.0,
            normalized=False,
            center=False,
        )  # (..., n_bins, n_frames)
        mel = torch.matmul(magnitude.transpose(-1, -2), filterbank)  # (..., n_frames, n_mels)
        return torch.log(mel + cfg.log_offset)


def log_mel(waveform: torch.Tensor, cfg: FeatureConfig | None = None) -> torch.Tensor:
    """``(..., T)`` waveforms at ``cfg.sample_rate`` -> ``(..., n_frames, n_mels)`` log-mel."""
    cfg = cfg or FeatureConfig()
    device = waveform.device
    return _log_mel(waveform, stft_window(cfg).to(device), mel_filterbank(cfg).to(device), cfg)


def split_examples(spectrogram: torch.Tensor, example_frames: int) -> torch.Tensor:
    """``(B, n_frames, n_mels)`` -> ``(B, n_examples, 1, example_frames, n_mels)``, hop =
    one example; trailing frames that do not fill an example are dropped (as VGGish)."""
    batch, frames, mels = spectrogram.shape
    count = frames // example_frames
    examples = spectrogram[:, : count * example_frames].reshape(batch, count, example_frames, mels)
    return examples.unsqueeze(2)


class LogMelFrontend(torch.nn.Module):
    """Waveforms -> log-mel examples; the window and filterbank are buffers, so
    ``.to(device)`` moves them with the model.

    ``forward`` gives the clip's first example, ``(B, 1, 96, 64)``: the whole of a 1 s
    clip. ``frames`` gives every example of longer clips.
    """

    def __init__(self, cfg: FeatureConfig | None = None):
        super().__init__()
        self.cfg = cfg or FeatureConfig()
        self.register_buffer("window", stft_window(self.cfg), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(self.cfg), persistent=False)

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` -> ``(B, n_frames, n_mels)`` log-mel."""
        if waveform.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waveform.shape)}")
        if n_examples(waveform.shape[-1], self.cfg) == 0:
            needed = example_samples(self.cfg)
            raise ValueError(f"clips of {waveform.shape[-1]} samples are shorter than one example ({needed} samples)")
        return _log_mel(waveform, self.window, self.filterbank, self.cfg)

    def frames(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` -> ``(B, n_examples, 1, 96, 64)``: every whole example of each clip."""
        return split_examples(self.spectrogram(waveform), self.cfg.example_frames)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` -> ``(B, 1, 96, 64)``: the first example of each clip."""
        # Only the samples the first example's frames read: longer clips cost nothing extra.
        spectrogram = self.spectrogram(waveform[:, : example_samples(self.cfg)])
        return spectrogram[:, None, : self.cfg.example_frames]
