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
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from doppeltrain.augment.pitch_shift import is_smooth

# julius's default, which torch-audiomentations keeps: zero crossings of the sinc kept
# either side of the centre.
ZEROS = 8


def fast_fft_size(n: int) -> int:
    """The smallest 5-smooth size >= ``n``: within a few percent of ``n``, where the next
    power of two can be half again as long (T + 2H = 22,400 -> 22,500, not 32,768)."""
    while not is_smooth(n, (2, 3, 5)):
        n += 1
    return n


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
    ``low_hz`` and ``high_hz``, as torch-audiomentations draws them."""
    low = hertz_to_mel_oshaughnessy(torch.tensor(float(low_hz), dtype=torch.float64))
    high = hertz_to_mel_oshaughnessy(torch.tensor(float(high_hz), dtype=torch.float64))
    return mel_oshaughnessy_to_hertz(low + uniform.double() * (high - low))


def half_sizes(cutoff_fraction: torch.Tensor, zeros: float = ZEROS) -> torch.Tensor:
    """Taps either side of the centre of each kernel: julius's ``int(zeros / c / 2)``."""
    return torch.floor(zeros / cutoff_fraction.double() / 2.0).long()


def lowpass_kernels(cutoff_fraction: torch.Tensor, zeros: float = ZEROS) -> torch.Tensor:
    """(N,) cutoffs in (0, 0.5], as fractions of the sample rate -> (N, 2 H + 1) centred
    kernels, H the largest half size; each row is julius's kernel for its cutoff, zero
    beyond its own half size."""
    cutoff = cutoff_fraction.double()
    half = half_sizes(cutoff, zeros)
    longest = int(half.max())
    time = torch.arange(-longest, longest + 1, device=cutoff.device, dtype=torch.float64)
    half = half.to(cutoff.device, torch.float64)[:, None]
    # hann(2h + 1, periodic=False) at offset t from its centre.
    window = torch.where(time.abs() <= half, 0.5 + 0.5 * torch.cos(math.pi * time / half), 0.0)
    kernels = 2.0 * cutoff[:, None] * window * torch.sinc(2.0 * cutoff[:, None] * time)
    # Unit sum, as julius: no leak of the input's constant component.
    return kernels / kernels.sum(dim=1, keepdim=True)


def lowpass(waves: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, zeros: float = ZEROS) -> torch.Tensor:
    """Low-pass each row of ``waves`` (N, T) at its own cutoff (julius's filter), keeping
    the length. Cutoffs above Nyquist are taken as Nyquist, where the filter is the
    identity (julius refuses them)."""
    if cutoff_hz.numel() != waves.shape[0]:
        raise ValueError(f"{cutoff_hz.numel()} cutoffs for {waves.shape[0]} rows")
    fraction = (cutoff_hz.double() / sample_rate).clamp(max=0.5)
    if not bool((fraction > 0).all()):
        raise ValueError("low-pass cutoffs must be above 0 Hz")
    if waves.shape[0] == 0:
        return waves.clone()
    kernels = lowpass_kernels(fraction.to(waves.device), zeros).to(waves.dtype)
    longest = (kernels.shape[1] - 1) // 2
    length = waves.shape[-1]
    padded = F.pad(waves[:, None], (longest, longest), mode="replicate")[:, 0]
    # Circular convolution of size >= T + 2H leaves outputs [2H, 2H + T) unaliased: the
    # wrapped tail of the full convolution lands below 2H.
    size = fast_fft_size(padded.shape[-1])
    product = torch.fft.rfft(padded, size) * torch.fft.rfft(kernels, size)
    return torch.fft.irfft(product, size)[:, 2 * longest : 2 * longest + length]


def highpass(waves: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, zeros: float = ZEROS) -> torch.Tensor:
    """High-pass each row at its own cutoff: the row minus its :func:`lowpass`, as
    torch-audiomentations' ``HighPassFilter``."""
    return waves - lowpass(waves, cutoff_hz, sample_rate, zeros)
