"""Windowed-sinc FIR high-pass and low-pass filters with a cutoff per row, as the
reference's filters (torch-audiomentations' ``HighPassFilter`` / ``LowPassFilter``,
which call ``julius.lowpass_filter`` with its defaults).

The kernel is julius's: ``2 c sinc(2 pi c t) * hann(2 h + 1)`` for ``t`` in
``[-h, h]``, with ``c`` the cutoff as a fraction of the sample rate and
``h = int(zeros / c / 2)`` (``zeros = 8``), scaled to sum to 1; the input is extended by
repeating its edge samples (julius's ``pad=True``, mode ``replicate``) so the output
keeps its length. The high-pass is the input minus its low-pass, as
torch-audiomentations computes it. About -44 dB at 1.25 x the cutoff.

julius builds one kernel for one cutoff, so torch-audiomentations loops over examples
(about 6,400 taps for a 20 Hz cutoff at 16 kHz). Here every row gets its own kernel,
zero-padded to the batch's longest, and one batched FFT convolution filters them all.
(Grouping rows by kernel length, so short kernels skip the padding, measured no faster
for a batch of 128 on one core: the FFT size is set mostly by the clip's length.)

The augmentation passes the lowest cutoff its config can draw (``lowest_hz``): the kernel
length then follows from the config, not from the drawn cutoffs, so a step reads nothing
back from the device and every call has the same shapes (one FFT plan on a GPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from doppeltrain.augment.fft_sizes import fast_fft_size
from doppeltrain.precision import precise_dtype

# julius's default, which torch-audiomentations keeps: zero crossings of the sinc kept
# either side of the centre.
ZEROS = 8


def hertz_to_mel_oshaughnessy(frequency: torch.Tensor) -> torch.Tensor:
    """O'Shaughnessy's mel scale, ``2595 log10(1 + f / 700)``: the scale
    torch-audiomentations draws its filter cutoffs in. (The features' HTK scale,
    ``1127 ln(1 + f / 700)``, is the same curve with its constant rounded differently;
    they differ by 6 parts in a million.)"""
    return 2595.0 * torch.log10(1.0 + frequency / 700.0)


def mel_oshaughnessy_to_hertz(mel: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`hertz_to_mel_oshaughnessy`."""
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def cutoffs_uniform_in_mel(uniform: torch.Tensor, low_hz: float, high_hz: float) -> torch.Tensor:
    """Map uniforms in [0, 1) to cutoffs spread evenly in (O'Shaughnessy) mel between
    ``low_hz`` and ``high_hz``, as torch-audiomentations draws them (in float64 where the
    device has it)."""
    low, high = (2595.0 * math.log10(1.0 + hz / 700.0) for hz in (float(low_hz), float(high_hz)))
    return mel_oshaughnessy_to_hertz(low + uniform.to(precise_dtype(uniform.device)) * (high - low))


def half_size(cutoff_fraction: float, zeros: float = ZEROS) -> int:
    """Taps either side of the centre of julius's kernel for one cutoff: ``int(zeros / c / 2)``."""
    return int(zeros / cutoff_fraction / 2.0)


def half_sizes(cutoff_fraction: torch.Tensor, zeros: float = ZEROS) -> torch.Tensor:
    """:func:`half_size` of each cutoff."""
    return torch.floor(zeros / cutoff_fraction / 2.0).long()


def lowpass_kernels(cutoff_fraction: torch.Tensor, zeros: float = ZEROS, longest: int | None = None) -> torch.Tensor:
    """(N,) cutoffs in (0, 0.5], as fractions of the sample rate -> (N, 2 H + 1) centred
    kernels; each row is julius's kernel for its cutoff, zero beyond its own half size.
    H is ``longest`` when given (half sizes beyond it are cut to it), else the largest
    half size, which reads the cutoffs back from their device."""
    cutoff = cutoff_fraction.to(precise_dtype(cutoff_fraction.device))
    half = half_sizes(cutoff, zeros)
    if longest is None:
        longest = int(half.max())
    else:
        half = half.clamp(max=longest)
    time = torch.arange(-longest, longest + 1, device=cutoff.device, dtype=cutoff.dtype)
    half = half.to(cutoff.dtype)[:, None]
    # hann(2h + 1, periodic=False) at offset t from its centre.
    window = torch.where(time.abs() <= half, 0.5 + 0.5 * torch.cos(math.pi * time / half), 0.0)
    kernels = 2.0 * cutoff[:, None] * window * torch.sinc(2.0 * cutoff[:, None] * time)
    # Unit sum, as julius: no leak of the input's constant component.
    return kernels / kernels.sum(dim=1, keepdim=True)


def lowpass(
    waves: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, zeros: float = ZEROS, lowest_hz: float | None = None
) -> torch.Tensor:
    """Low-pass each row of ``waves`` (N, T) at its own cutoff (julius's filter), keeping
    the length. Cutoffs above Nyquist are taken as Nyquist, where the filter is the
    identity (julius refuses them).

    ``lowest_hz``: no cutoff is below it (the caller's promise, unchecked); the kernels
    are then as long as its kernel, whatever the cutoffs, and nothing is read back from
    the device. Without it the cutoffs are checked (above 0 Hz) and the kernels are as
    long as the lowest one needs."""
    if cutoff_hz.numel() != waves.shape[0]:
        raise ValueError(f"{cutoff_hz.numel()} cutoffs for {waves.shape[0]} rows")
    # The dtype first, then the device: a device without float64 cannot take it.
    fraction = (cutoff_hz.to(precise_dtype(waves.device)).to(waves.device) / sample_rate).clamp(max=0.5)
    longest = None
    if lowest_hz is None:
        if not bool((fraction > 0).all()):
            raise ValueError("low-pass cutoffs must be above 0 Hz")
    else:
        if lowest_hz <= 0:
            raise ValueError(f"the lowest low-pass cutoff must be above 0 Hz, got {lowest_hz}")
        longest = half_size(min(lowest_hz / sample_rate, 0.5), zeros)
    if waves.shape[0] == 0:
        return waves.clone()
    kernels = lowpass_kernels(fraction, zeros, longest).to(waves.dtype)
    longest = (kernels.shape[1] - 1) // 2
    length = waves.shape[-1]
    padded = F.pad(waves[:, None], (longest, longest), mode="replicate")[:, 0]
    # Circular convolution of size >= T + 2H leaves outputs [2H, 2H + T) unaliased: the
    # wrapped tail of the full convolution lands below 2H.
    size = fast_fft_size(padded.shape[-1])
    product = torch.fft.rfft(padded, size) * torch.fft.rfft(kernels, size)
    return torch.fft.irfft(product, size)[:, 2 * longest : 2 * longest + length]


def highpass(
    waves: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, zeros: float = ZEROS, lowest_hz: float | None = None
) -> torch.Tensor:
    """High-pass each row at its own cutoff: the row minus its :func:`lowpass`, as
    torch-audiomentations' ``HighPassFilter``."""
    return waves - lowpass(waves, cutoff_hz, sample_rate, zeros, lowest_hz)
