"""The pitch shift as it was before the one-pass rewrite (commit 977701b): a Python loop
over output frames for the phase locking, one FFT resampling call per distinct stretched
length, in chunks of 64 rows. Kept, unchanged but for its name, so the tests can check
that the one-pass version gives the same sound on the same draws."""

from __future__ import annotations

import math

import numpy as np
import torch

from doppeltrain.augment.fft_sizes import nearest_smooth

PITCH_N_FFT = 512
PITCH_HOP = 128
PEAK_REACH = 2
PITCH_CHUNK = 64


def pitch_shift_per_frame(waves: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    return torch.cat(
        [
            _pitch_shift(waves[start : start + PITCH_CHUNK], semitones[start : start + PITCH_CHUNK])
            for start in range(0, waves.shape[0], PITCH_CHUNK)
        ]
    )


def _pitch_shift(waves: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    length = waves.shape[-1]
    wanted = length * 2.0 ** (semitones.double() / 12.0)
    # The stretched length sets the true ratio; a 13-smooth one keeps the FFTs fast, at a
    # cost of at most 0.07 semitone.
    lengths = [nearest_smooth(round(n)) for n in wanted.tolist()]
    ratio = torch.tensor(lengths, dtype=torch.float64, device=waves.device) / length
    stretched = time_stretch(waves, ratio)
    out = torch.empty_like(waves)
    # One FFT call per distinct length, not one per row.
    for stretched_length in sorted(set(lengths)):
        rows = torch.tensor([i for i, n in enumerate(lengths) if n == stretched_length], device=waves.device)
        out[rows] = resample_fft(stretched[rows, :stretched_length], length)
    return out


def time_stretch(waves: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Make row ``i`` ``ratio[i]`` times longer at the same pitch (rows zero-padded to the
    longest): torchaudio's ``phase_vocoder`` rule with a rate per row, plus phase locking
    in the manner of Laroche & Dolson's identity locking: each bin keeps its analysed phase
    offset from the loudest bin near it, whose phase alone is accumulated. Without it the
    bins of one partial drift out of phase and a plain tone loses a third of its level."""
    device, dtype = waves.device, waves.dtype
    window = torch.hann_window(PITCH_N_FFT, device=device, dtype=dtype)
    spectrum = torch.stft(waves, PITCH_N_FFT, PITCH_HOP, window=window, center=True, return_complex=True)
    spectrum = torch.nn.functional.pad(spectrum, (0, 2))  # silence after the end to read from
    n_bins, n_frames = spectrum.shape[-2:]
    out_frames = math.ceil((n_frames - 2) * float(ratio.max())) + 1
    # Output frame j reads input position j / ratio, between frames `lower` and `lower + 1`.
    position = torch.arange(out_frames, device=device, dtype=torch.float64)[None, :] / ratio[:, None]
    position = position.clamp(max=n_frames - 2)
    lower = position.floor().long()
    fraction = (position - lower).to(dtype)[:, None, :]

    def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(values, 2, index[:, None, :].expand(-1, values.shape[1], -1))

    now, later = take(spectrum, lower), take(spectrum, lower + 1)
    magnitude = (1.0 - fraction) * now.abs() + fraction * later.abs()
    analysis_phase = now.angle()
    expected = (2.0 * math.pi * PITCH_HOP / PITCH_N_FFT) * torch.arange(n_bins, device=device, dtype=dtype)[:, None]
    deviation = later.angle() - analysis_phase - expected
    advance = expected + deviation - 2.0 * math.pi * torch.round(deviation / (2.0 * math.pi))
    anchors = loudest_neighbours(magnitude)

    phases = [analysis_phase[..., 0]]
    for frame in range(1, out_frames):
        anchor = anchors[..., frame]
        anchor_phase = torch.gather(phases[-1] + advance[..., frame - 1], 1, anchor)
        here = analysis_phase[..., frame]
        phases.append(anchor_phase + here - torch.gather(here, 1, anchor))
    phase = torch.stack(phases, -1)
    return torch.istft(
        torch.polar(magnitude, phase),
        PITCH_N_FFT,
        PITCH_HOP,
        window=window,
        center=True,
        length=(out_frames - 1) * PITCH_HOP,
    )


def loudest_neighbours(magnitude: torch.Tensor, reach: int = PEAK_REACH) -> torch.Tensor:
    """For (N, bins, frames) magnitudes, the bin each bin's phase follows: the loudest
    within ``reach`` bins (a peak's main lobe with a Hann window is 2 bins either side)."""
    count, n_bins, n_frames = magnitude.shape
    rows = magnitude.transpose(1, 2).reshape(count * n_frames, 1, n_bins)
    _, loudest = torch.nn.functional.max_pool1d(rows, 2 * reach + 1, stride=1, padding=reach, return_indices=True)
    return loudest.reshape(count, n_frames, n_bins).transpose(1, 2)


def resample_fft(signal: torch.Tensor, length: int) -> torch.Tensor:
    """Band-limited resampling of (..., n) signals to ``length`` samples: the spectrum cut
    or zero-padded (irfft does either), as ``scipy.signal.resample``; reading faster
    never folds back."""
    scale = length / signal.shape[-1]
    if signal.device.type == "cpu":
        # torch's CPU FFT takes ~15 ms for a call this small on a busy 2-core machine
        # (its threads fight), numpy's 0.3 ms; a batch makes dozens of such calls.
        spectrum = np.fft.rfft(signal.detach().numpy(), axis=-1)
        return torch.from_numpy(np.fft.irfft(spectrum, length, axis=-1)).to(signal.dtype) * scale
    return torch.fft.irfft(torch.fft.rfft(signal), length) * scale
