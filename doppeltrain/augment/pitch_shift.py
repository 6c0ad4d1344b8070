"""Pitch shift per example, keeping the length: a phase-locked vocoder time stretch, then
band-limited FFT resampling, a fractional number of semitones per row.

Every row goes through the same fixed-shape operations, with no Python loop over frames
or lengths and nothing read back from the device: the whole batch is about 200 aten ops
(the per-frame loop it replaced ran 142 frames x 5 ops per chunk of 64 rows, then one
resampling per distinct length). The sizes follow from the clip length and the largest
shift (:func:`pitch_plan`), not from the draws:

- the stretched length of each row is looked up in a table of fast FFT sizes made once
  per (length, largest shift);
- the vocoder's phase locking, a recurrence over output frames, runs as a parallel scan
  (:func:`locked_phases`): log2(frames) batched steps instead of one step per frame;
- each row's resampling from its own stretched length is one chirp-z transform
  (Bluestein's algorithm, :func:`resample_rows`): the DFT of every row's own length
  through FFTs of one common size, so rows of different lengths share each FFT call.

On the CPU the batch goes in chunks of ``PITCH_CHUNK`` rows, which bounds the memory
of the vocoder's spectra (about 2 MB a row).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from doppeltrain.augment.fft_sizes import fast_fft_size, nearest_smooth_range
from doppeltrain.precision import precise_dtype

PITCH_N_FFT = 512
PITCH_HOP = 128
# Bins either side whose loudest one anchors a bin's phase: a Hann main lobe's half-width.
PEAK_REACH = 2
# Examples pitch-shifted at once on the CPU: bounds the memory the phase vocoder's
# spectra take. Other devices take the whole batch in one pass.
PITCH_CHUNK = 64


def default_chunk(device: torch.device) -> int | None:
    """Rows per pass: ``PITCH_CHUNK`` on the CPU, all of them elsewhere (None)."""
    return PITCH_CHUNK if device.type == "cpu" else None


def pitch_shift(
    waves: torch.Tensor,
    semitones: torch.Tensor,
    max_semitones: float | None = None,
    chunk: int | None | str = "auto",
) -> torch.Tensor:
    """Shift each row's pitch by its own (fractional) number of semitones, keeping its
    length: a phase-vocoder time stretch by ``ratio = 2 ** (semitones / 12)``, then
    band-limited resampling that plays the stretched sound ``ratio`` times faster. This is
    what torchaudio's ``pitch_shift`` does, but that takes one integer shift per call and
    resamples between rates with no common divisor, far too slow to run per example. The
    FFT resampling treats each row as periodic, which rings for a few samples at the ends.

    ``max_semitones``: the largest shift, either way, that ``semitones`` may hold (larger
    ones are cut to it); it sizes every array. None takes the largest of ``semitones``,
    a read back from the device. ``chunk``: rows per pass; ``"auto"``:
    :func:`default_chunk`, None: all at once.
    """
    if max_semitones is None:
        max_semitones = float(semitones.abs().max()) if semitones.numel() else 0.0
    if chunk == "auto":
        chunk = default_chunk(waves.device)
    plan = pitch_plan(waves.shape[-1], float(max_semitones), waves.device, waves.dtype)
    if chunk is None or waves.shape[0] <= chunk:
        return _pitch_shift(waves, semitones, plan)
    return torch.cat(
        [_pitch_shift(waves[start : start + chunk], semitones[start : start + chunk], plan) for start in range(0, waves.shape[0], chunk)]
    )


@dataclass(frozen=True)
class PitchPlan:
    """Everything about a pitch shift that depends on the clip length and the largest
    shift only, on the device it is used on: made once, then shared by every call."""

    length: int  # T, samples of a clip
    max_semitones: float
    lowest: int  # the smallest rounded stretched length the table covers
    slot_of: torch.Tensor  # (highest - lowest + 1,) long: rounded length -> slot
    stretched_lengths: torch.Tensor  # (slots,) precise dtype: the fast stretched length of each slot
    out_frames: int  # vocoder output frames: enough for the longest stretch
    fft_size: int  # the chirp-z transform's convolution size
    in_chirp: torch.Tensor  # (slots, S) complex: exp(-i pi j^2 / n) for j < n, 0 beyond
    chirp_filter: torch.Tensor  # (slots, fft_size) complex: FFT of exp(i pi m^2 / n) laid out circularly
    out_chirp: torch.Tensor  # (slots, T // 2 + 1) complex: exp(-i pi k^2 / n) T / n for k <= n // 2, 0 beyond
    imag_kept: torch.Tensor  # (T // 2 + 1,) real: 0 at DC and at Nyquist (T even), 1 elsewhere


def pitch_plan(length: int, max_semitones: float, device: torch.device | str, dtype: torch.dtype = torch.float32) -> PitchPlan:
    """The :class:`PitchPlan` of clips of ``length`` samples shifted by at most
    ``max_semitones`` either way, for ``dtype`` waveforms on ``device``. Made on the CPU
    in float64 and copied to ``device`` once (cached)."""
    device = torch.device(device)
    return _pitch_plan(length, max_semitones, device, dtype, precise_dtype(device))


@functools.lru_cache(maxsize=16)
def _pitch_plan(length: int, max_semitones: float, device: torch.device, dtype: torch.dtype, precise: torch.dtype) -> PitchPlan:
    lowest = max(1, math.floor(length * 2.0 ** (-max_semitones / 12.0)) - 1)
    highest = math.ceil(length * 2.0 ** (max_semitones / 12.0)) + 1
    # The stretched length sets the true ratio; a 13-smooth one keeps the FFTs fast, at a
    # cost of at most 0.07 semitone.
    smooth = nearest_smooth_range(lowest, highest)
    distinct = sorted(set(smooth))
    slot_of = torch.tensor([distinct.index(n) for n in smooth])
    n = torch.tensor(distinct, dtype=torch.float64)
    n_frames = length // PITCH_HOP + 1
    out_frames = math.ceil(n_frames * (max(distinct) / length)) + 1
    stretched = (out_frames - 1) * PITCH_HOP
    assert stretched >= max(distinct), (stretched, max(distinct))
    bins = length // 2 + 1
    fft_size = fast_fft_size(max(distinct) + bins)

    # exp(i pi m^2 / n) per slot (rows) and m (columns), for every m any of the three
    # tables reads; m^2 mod 2n in integers keeps the angle exact where m^2 / n in floating
    # point would not be.
    m = torch.arange(max(stretched, fft_size - bins + 1, bins))
    squares = (m[None, :] ** 2) % (2 * n.long()[:, None])
    chirp = torch.polar(torch.ones((), dtype=torch.float64).expand(squares.shape), math.pi * squares.double() / n[:, None])
    samples = torch.arange(stretched)
    in_chirp = chirp[:, :stretched].conj() * (samples[None, :] < n[:, None]).double()
    # Offsets k - j run over [-(n - 1), T / 2]: 0..T/2 at the start, the negative ones
    # wrapped to the end (fft_size >= n + T / 2 keeps the two apart).
    positions = torch.arange(fft_size)
    offsets = torch.where(positions < bins, positions, fft_size - positions)
    chirp_filter = torch.fft.fft(chirp[:, offsets], dim=-1)
    frequencies = torch.arange(bins)
    kept = (frequencies[None, :] <= (n.long() // 2)[:, None]).double()
    out_chirp = chirp[:, :bins].conj() * kept * (length / n[:, None])
    # The C2R transform drops the imaginary part of DC and of Nyquist on the CPU; say so,
    # so that every backend does the same as numpy's irfft.
    imag_kept = torch.ones(bins, dtype=torch.float64)
    imag_kept[0] = 0.0
    if length % 2 == 0:
        imag_kept[-1] = 0.0
    complex_dtype = (torch.ones((), dtype=dtype) * 1j).dtype
    return PitchPlan(
        length=length,
        max_semitones=max_semitones,
        lowest=lowest,
        slot_of=slot_of.to(device),
        stretched_lengths=n.to(precise).to(device),
        out_frames=out_frames,
        fft_size=fft_size,
        in_chirp=in_chirp.to(complex_dtype).to(device),
        chirp_filter=chirp_filter.to(complex_dtype).to(device),
        out_chirp=out_chirp.to(complex_dtype).to(device),
        imag_kept=imag_kept.to(dtype).to(device),
    )


def _pitch_shift(waves: torch.Tensor, semitones: torch.Tensor, plan: PitchPlan) -> torch.Tensor:
    length = waves.shape[-1]
    dtype = plan.stretched_lengths.dtype
    shift = semitones.to(dtype).to(waves.device).clamp(-plan.max_semitones, plan.max_semitones)
    wanted = torch.round(length * 2.0 ** (shift / 12.0)).long()
    slot = plan.slot_of[(wanted - plan.lowest).clamp(0, plan.slot_of.shape[0] - 1)]
    stretched = time_stretch(waves, plan.stretched_lengths[slot] / length, plan.out_frames)
    return resample_rows(stretched, slot, plan)


def time_stretch(waves: torch.Tensor, ratio: torch.Tensor, out_frames: int | None = None) -> torch.Tensor:
    """Make row ``i`` ``ratio[i]`` times longer at the same pitch (rows zero-padded to
    ``(out_frames - 1) * PITCH_HOP`` samples; None: as many as the largest ratio needs, a
    read back from the device): torchaudio's ``phase_vocoder`` rule with a rate per row,
    plus phase locking in the manner of Laroche & Dolson's identity locking: each bin
    keeps its analysed phase offset from the loudest bin near it, whose phase alone is
    accumulated. Without it the bins of one partial drift out of phase and a plain tone
    loses a third of its level."""
    device, dtype = waves.device, waves.dtype
    window = torch.hann_window(PITCH_N_FFT, device=device, dtype=dtype)
    spectrum = torch.stft(waves, PITCH_N_FFT, PITCH_HOP, window=window, center=True, return_complex=True)
    # Silence after the end to read from; frames first, bins last from here on: gathers
    # along frames then copy whole rows of bins, and gathers along bins read one row.
    spectrum = torch.nn.functional.pad(spectrum, (0, 2)).transpose(1, 2).contiguous()
    n_frames, n_bins = spectrum.shape[-2:]
    if out_frames is None:
        out_frames = math.ceil((n_frames - 2) * float(ratio.max())) + 1
    # Output frame j reads input position j / ratio, between frames `lower` and `lower + 1`.
    # A position that should be whole can round to just below it and read the frame
    # before (14 of the 12,780 at +-2 semitones in float64, others in float32): the sound
    # is the same, but every later phase moves, so the waveform is not. Kept as it was,
    # so float64 devices give the waveforms the per-frame loop gave.
    position = torch.arange(out_frames, device=device, dtype=ratio.dtype)[None, :] / ratio[:, None]
    position = position.clamp(max=n_frames - 2)
    lower = position.floor().long()
    fraction = (position - lower).to(dtype)[:, :, None]
    lower = lower[:, :, None].expand(-1, -1, n_bins)
    # Magnitudes and phases of the input frames once, then read at the output frames.
    level, angle = spectrum.abs(), spectrum.angle()
    magnitude = (1.0 - fraction) * torch.gather(level, 1, lower) + fraction * torch.gather(level, 1, lower + 1)
    analysis_phase = torch.gather(angle, 1, lower)
    expected = (2.0 * math.pi * PITCH_HOP / PITCH_N_FFT) * torch.arange(n_bins, device=device, dtype=dtype)
    deviation = torch.gather(angle, 1, lower + 1) - analysis_phase - expected
    advance = expected + deviation - 2.0 * math.pi * torch.round(deviation / (2.0 * math.pi))
    phase = locked_phases(analysis_phase, advance, loudest_neighbours(magnitude))
    return torch.istft(
        torch.polar(magnitude, phase).transpose(1, 2),
        PITCH_N_FFT,
        PITCH_HOP,
        window=window,
        center=True,
        length=(out_frames - 1) * PITCH_HOP,
    )


def locked_phases(analysis_phase: torch.Tensor, advance: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The phase-locked output phases, (N, frames, bins), from the analysed phase of each
    output frame, the phase advance from each frame to the next and each bin's anchor
    (all (N, frames, bins)).

    Frame 0 keeps its analysed phase; frame j's bin b takes its anchor's phase in frame
    j - 1, advanced, plus its own analysed offset from the anchor:
    ``phase_j = (phase_{j-1} + advance_{j-1})[A_j] + here_j - here_j[A_j]``, with ``A_j``
    the anchors of frame j and ``x[A]`` a gather along bins. Each step is
    ``x -> x[A_j] + v_j``; two steps compose to ``x -> x[A_e[A_l]] + (v_e[A_l] + v_l)``,
    an associative rule, so a Hillis-Steele scan gives every frame's composite step in
    log2(frames) batched gathers, and ``phase_j = phase_0[A] + v`` of its composite.
    Offsets are wrapped to [-pi, pi) first: the sums then stay below frames x pi, where
    float32 keeps 1e-4 rad, not the thousands of radians a running phase reaches.
    """
    first = analysis_phase[:, :1]
    maps = anchors[:, 1:]
    here = analysis_phase[:, 1:]
    offsets = torch.gather(advance[:, :-1], 2, maps) + here - torch.gather(here, 2, maps)
    offsets = torch.remainder(offsets + math.pi, 2.0 * math.pi) - math.pi
    steps, span = maps.shape[1], 1
    while span < steps:
        # Each right-hand side is made whole before it is written back: frame j reads
        # frame j - span as it was before this round.
        later = maps[:, span:]
        offsets[:, span:] += torch.gather(offsets[:, :-span], 2, later)
        maps[:, span:] = torch.gather(maps[:, :-span], 2, later)
        span *= 2
    rest = torch.gather(first.expand(-1, steps, -1), 2, maps) + offsets
    return torch.cat([first, rest], dim=1)


def loudest_neighbours(magnitude: torch.Tensor, reach: int = PEAK_REACH) -> torch.Tensor:
    """For (N, frames, bins) magnitudes, the bin each bin's phase follows: the loudest
    within ``reach`` bins (a peak's main lobe with a Hann window is 2 bins either side)."""
    count, n_frames, n_bins = magnitude.shape
    rows = magnitude.reshape(count * n_frames, 1, n_bins)
    _, loudest = torch.nn.functional.max_pool1d(rows, 2 * reach + 1, stride=1, padding=reach, return_indices=True)
    return loudest.reshape(count, n_frames, n_bins)


def resample_rows(stretched: torch.Tensor, slot: torch.Tensor, plan: PitchPlan) -> torch.Tensor:
    """Row ``i``'s first ``n_i`` samples (``n_i`` its slot's stretched length),
    resampled to ``plan.length`` samples: the spectrum of length ``n_i`` cut or
    zero-padded, as ``scipy.signal.resample``; reading faster never folds back.

    The length-``n_i`` DFT's first T / 2 + 1 bins come from Bluestein's chirp-z
    transform, ``X_k = w_k sum_j (s_j w_j) conj(w_{k-j})`` with ``w_m = exp(-i pi m^2 / n)``:
    one convolution, made by FFTs of ``plan.fft_size``, the same for every row."""
    bins = plan.out_chirp.shape[-1]
    in_chirp = plan.in_chirp.index_select(0, slot)
    spectrum = torch.fft.fft(stretched[:, : in_chirp.shape[-1]] * in_chirp, plan.fft_size)
    convolved = torch.fft.ifft(spectrum * plan.chirp_filter.index_select(0, slot))
    spectrum = convolved[:, :bins] * plan.out_chirp.index_select(0, slot)
    spectrum = torch.complex(spectrum.real, spectrum.imag * plan.imag_kept)
    return torch.fft.irfft(spectrum, plan.length)
