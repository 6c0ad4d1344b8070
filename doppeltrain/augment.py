"""Augmentations: waveform transforms, then SpecAugment-style masking of the log-mel.

REFERENCE.md's waveform augmentations, in its order: high-pass (20-800 Hz), low-pass
(1.2-8 kHz), pitch shift (+-2 semitones), circular time shift (+-25 %), convolution with
an impulse response. Each has its own probability and, unlike the reference (one draw per
chunk of 100 sounds), is drawn per example. The two views of a pair get independent
draws because the train loop calls the augmentation once on the ``a`` batch and once on
the ``b`` batch, the generator moving on in between.

Every random number comes from the ``torch.Generator`` the caller passes, and every call
draws the same amount of numbers whatever the probabilities, so the output is a function
of the generator's state (and the run's seed, epoch, step and rank when the train loop
seeds it with :func:`make_generator`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .config import AugmentConfig

IR_EXTENSIONS = (".wav", ".flac")
# Butterworth Q, torchaudio's default for its biquads.
BIQUAD_Q = 0.707
# A low-pass cutoff at Nyquist puts the biquad's poles on the unit circle.
MAX_CUTOFF_FRACTION_OF_NYQUIST = 0.99
PITCH_N_FFT = 512
PITCH_HOP = 128
# Bins either side whose loudest one anchors a bin's phase: a Hann main lobe's half-width.
PEAK_REACH = 2
# Examples pitch-shifted at once: bounds the memory the phase vocoder's spectra take.
PITCH_CHUNK = 64


class AugmentError(ValueError):
    """An augmentation option cannot be used; the message is one line."""


def make_generator(seed: int, epoch: int, step: int, rank: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, epoch, step, rank) alone: a resumed run draws what an
    uninterrupted one draws."""
    state = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


def draw(generator: torch.Generator, count: int) -> torch.Tensor:
    """``count`` uniforms in [0, 1) on the generator's device."""
    return torch.rand(count, generator=generator, device=generator.device)


def hertz_to_mel(frequency: torch.Tensor) -> torch.Tensor:
    # The O'Shaughnessy mel that torch-audiomentations draws its filter cutoffs in.
    return 2595.0 * torch.log10(1.0 + frequency / 700.0)


def mel_to_hertz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def cutoffs_uniform_in_mel(uniform: torch.Tensor, low_hz: float, high_hz: float) -> torch.Tensor:
    """Map uniforms to cutoffs spread evenly in mel between ``low_hz`` and ``high_hz``, so
    low cutoffs are not starved (as the reference's filters draw them)."""
    low = hertz_to_mel(torch.tensor(float(low_hz), dtype=torch.float64))
    high = hertz_to_mel(torch.tensor(float(high_hz), dtype=torch.float64))
    return mel_to_hertz(low + uniform.double() * (high - low))


def biquad_coefficients(cutoff_hz: torch.Tensor, sample_rate: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example RBJ-cookbook biquads (torchaudio's ``*_biquad`` formulas):
    ``(a, b)`` of shape (N, 3), normalized so that a0 = 1."""
    nyquist = sample_rate / 2.0
    cutoff = cutoff_hz.double().clamp(max=MAX_CUTOFF_FRACTION_OF_NYQUIST * nyquist)
    w0 = 2.0 * math.pi * cutoff / sample_rate
    alpha = torch.sin(w0) / (2.0 * BIQUAD_Q)
    cos_w0 = torch.cos(w0)
    if kind == "highpass":
        b = torch.stack([(1.0 + cos_w0) / 2.0, -(1.0 + cos_w0), (1.0 + cos_w0) / 2.0], dim=-1)
    elif kind == "lowpass":
        b = torch.stack([(1.0 - cos_w0) / 2.0, 1.0 - cos_w0, (1.0 - cos_w0) / 2.0], dim=-1)
    else:
        raise ValueError(f"unknown biquad kind {kind!r}")
    a = torch.stack([1.0 + alpha, -2.0 * cos_w0, 1.0 - alpha], dim=-1)
    return a / a[:, :1], b / a[:, :1]


def biquad(waves: torch.Tensor, cutoff_hz: torch.Tensor, sample_rate: int, kind: str) -> torch.Tensor:
    """Filter each row of ``waves`` (N, T) with its own cutoff, in one lfilter call."""
    a, b = biquad_coefficients(cutoff_hz, sample_rate, kind)
    dtype = waves.dtype
    # clamp=False: synth audio is not bounded to [-1, 1] and must not be clipped.
    return torchaudio.functional.lfilter(
        waves, a.to(waves.device, dtype), b.to(waves.device, dtype), clamp=False, batching=True
    )


def time_shift(waves: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each row by its own number of samples, with roll-over (``torch.roll`` per row)."""
    length = waves.shape[-1]
    positions = torch.arange(length, device=waves.device)
    source = (positions[None, :] - shifts.to(waves.device)[:, None]) % length
    return torch.gather(waves, 1, source)


def pitch_shift(waves: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """Shift each row's pitch by its own (fractional) number of semitones, keeping its
    length: a phase-vocoder time stretch by ``ratio = 2 ** (semitones / 12)``, then
    band-limited resampling that plays the stretched sound ``ratio`` times faster. This is
    what torchaudio's ``pitch_shift`` does, but that takes one integer shift per call and
    resamples between rates with no common divisor, far too slow to run per example. The
    FFT resampling treats each row as periodic, which rings for a few samples at the ends.
    """
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


def is_smooth(n: int, primes: tuple[int, ...] = (2, 3, 5, 7, 11, 13)) -> bool:
    for prime in primes:
        while n % prime == 0:
            n //= prime
    return n == 1


def nearest_smooth(n: int) -> int:
    """The 13-smooth integer nearest ``n`` (a fast FFT size)."""
    for distance in range(n):
        for candidate in (n - distance, n + distance):
            if candidate > 0 and is_smooth(candidate):
                return candidate
    return 1


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


def convolve_truncated(waves: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Full linear convolution of each row with its own impulse response, cut to the
    input's length: no delay compensation (as the reference)."""
    length = waves.shape[-1]
    # A power-of-two FFT size: T + L - 1 can have large prime factors, which FFTs hate.
    size = 1 << (length + responses.shape[-1] - 2).bit_length()
    product = torch.fft.rfft(waves, size) * torch.fft.rfft(responses, size)
    return torch.fft.irfft(product, size)[..., :length]


def load_impulse_responses(ir_dir: str, sample_rate: int) -> torch.Tensor:
    """Every .wav/.flac under ``ir_dir``: mono (channels averaged), resampled to
    ``sample_rate``, zero-padded to the longest, as an (n, L) float32 tensor."""
    folder = Path(ir_dir)
    if not folder.is_dir():
        raise AugmentError(f"--ir-dir {ir_dir}: no such folder")
    paths = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IR_EXTENSIONS and path.is_file())
    if not paths:
        raise AugmentError(f"--ir-dir {ir_dir}: no .wav or .flac impulse responses")
    responses = []
    for path in paths:
        try:
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
        except Exception as error:  # soundfile raises several types for damaged files
            raise AugmentError(f"--ir-dir: cannot read {path} ({' '.join(str(error).split())})") from None
        response = torch.from_numpy(audio.mean(axis=1))
        if rate != sample_rate:
            response = torchaudio.functional.resample(response, rate, sample_rate)
        if response.numel() == 0:
            raise AugmentError(f"--ir-dir: {path} is empty")
        responses.append(response)
    longest = max(response.numel() for response in responses)
    return torch.stack([torch.nn.functional.pad(r, (0, longest - r.numel())) for r in responses])


class WaveformAugment(torch.nn.Module):
    """Waveform augmentations drawn per example: ``augment(waves (B, T), generator)``.

    Each transform decides per example with its own probability and draws its own
    parameters; the impulse responses (from ``cfg.ir_dir``, loaded here) are a buffer, so
    ``.to(device)`` moves them. Call once per view for independent draws.
    """

    def __init__(self, cfg: AugmentConfig | None = None, sample_rate: int = 16000):
        super().__init__()
        self.cfg = cfg or AugmentConfig()
        self.sample_rate = sample_rate
        responses = load_impulse_responses(self.cfg.ir_dir, sample_rate) if self.cfg.ir_dir else torch.zeros(0, 1)
        self.register_buffer("impulse_responses", responses, persistent=False)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if waves.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waves.shape)}")
        if self.cfg.mode != "waveform":
            return waves
        cfg, count = self.cfg, waves.shape[0]
        # Every draw happens, applied or not, so each transform's numbers stay put when
        # another's probability changes.
        draws = {name: (draw(generator, count), draw(generator, count)) for name in self.transforms()}
        out = waves.clone()
        for name, probability in self.transforms().items():
            chosen_by, value = draws[name]
            chosen = (chosen_by < probability).nonzero().flatten()
            if name == "impulse_response" and self.impulse_responses.shape[0] == 0:
                continue
            if chosen.numel() == 0:
                continue
            rows = chosen.to(waves.device)
            out[rows] = self.apply(name, out[rows], value[chosen], cfg)
        return out

    def transforms(self) -> dict[str, float]:
        """Transform names in the order applied, with their probabilities."""
        cfg = self.cfg
        return {
            "highpass": cfg.p_highpass,
            "lowpass": cfg.p_lowpass,
            "pitch": cfg.p_pitch,
            "time_shift": cfg.p_time_shift,
            "impulse_response": cfg.p_impulse_response,
        }

    def apply(self, name: str, waves: torch.Tensor, uniform: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
        """One transform on the chosen rows, its parameter from one uniform per row."""
        if name == "highpass":
            return biquad(waves, cutoffs_uniform_in_mel(uniform, *cfg.highpass_hz), self.sample_rate, "highpass")
        if name == "lowpass":
            return biquad(waves, cutoffs_uniform_in_mel(uniform, *cfg.lowpass_hz), self.sample_rate, "lowpass")
        if name == "pitch":
            return pitch_shift(waves, (2.0 * uniform - 1.0) * cfg.pitch_semitones)
        if name == "time_shift":
            limit = cfg.time_shift_fraction * waves.shape[-1]
            return time_shift(waves, torch.round((2.0 * uniform - 1.0) * limit).long())
        if name == "impulse_response":
            bank = self.impulse_responses
            index = (uniform * bank.shape[0]).long().clamp(max=bank.shape[0] - 1)
            return convolve_truncated(waves, bank[index.to(bank.device)].to(waves.device, waves.dtype))
        raise ValueError(f"unknown augmentation {name!r}")


def band_masks(uniform_width: torch.Tensor, uniform_start: torch.Tensor, max_width: int, size: int) -> torch.Tensor:
    """(N, n_masks) uniforms -> an (N, size) boolean mask, the union of ``n_masks`` bands
    per row, each of width floor(u * max_width) at a uniform start (torchaudio's rule)."""
    width = torch.floor(uniform_width * max_width).clamp(max=size)
    start = torch.floor(uniform_start * (size - width))
    positions = torch.arange(size, device=uniform_width.device, dtype=uniform_width.dtype)
    inside = (positions >= start[..., None]) & (positions < (start + width)[..., None])
    return inside.any(dim=1)


class SpecAugment(torch.nn.Module):
    """SpecAugment-style masking of log-mel examples: ``spec_augment(spec, generator)``
    with ``spec`` of shape (B, 1, frames, mels) as :class:`LogMelFrontend` makes it.

    With probability ``p_specaugment`` per example: ``time_masks`` bands of up to
    ``time_mask_width`` frames and ``freq_masks`` bands of up to ``freq_mask_width`` mel
    bins, drawn per example, set to that example's mean (torchaudio's SpecAugment fill).
    """

    def __init__(self, cfg: AugmentConfig | None = None):
        super().__init__()
        self.cfg = cfg or AugmentConfig()

    @torch.no_grad()
    def forward(self, spec: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if spec.dim() != 4 or spec.shape[1] != 1:
            raise ValueError(f"expected log-mel of shape (batch, 1, frames, mels), got {tuple(spec.shape)}")
        if self.cfg.mode != "specaugment":
            return spec
        cfg, count = self.cfg, spec.shape[0]
        n_frames, n_mels = spec.shape[-2:]

        def uniforms(n_masks: int) -> torch.Tensor:
            return draw(generator, count * n_masks).reshape(count, n_masks).to(spec.device)

        chosen = (draw(generator, count) < cfg.specaugment_p).to(spec.device)
        time_mask = band_masks(uniforms(cfg.specaugment_time_masks), uniforms(cfg.specaugment_time_masks), cfg.specaugment_time_width, n_frames)
        freq_mask = band_masks(uniforms(cfg.specaugment_freq_masks), uniforms(cfg.specaugment_freq_masks), cfg.specaugment_freq_width, n_mels)
        mask = (time_mask[:, :, None] | freq_mask[:, None, :]) & chosen[:, None, None]
        fill = spec.mean(dim=(1, 2, 3), keepdim=True)
        return torch.where(mask[:, None], fill, spec)
