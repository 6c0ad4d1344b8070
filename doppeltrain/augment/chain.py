"""Augmentations: exactly one mode per run (``AugmentConfig.mode``, docs/REFERENCE.md
'Augmentations'), applied to each view on its own.

- ``waveform`` (the default), torch-audiomentations' transforms in the reference's order,
  each applied with its own probability (0.5): a high-pass (cutoff 20-800 Hz) and a
  low-pass (1200-8000 Hz), julius's windowed-sinc FIRs with cutoffs uniform in mel
  (:mod:`.sinc_filters`); a pitch shift of up to +-2 semitones (:mod:`.pitch_shift`); a
  circular time shift of up to +-25 % of the length; a full, truncated convolution with an
  impulse response from ``ir_dir`` (skipped when there is none).
- ``specaugment``, ``torchaudio.transforms.SpecAugment(n_time_masks=4,
  time_mask_param=40, n_freq_masks=2, freq_mask_param=20, p=0.4)``, masks filled with
  the mean (``zero_masking=False``).
- ``masking``, ``FrequencyMasking(freq_mask_param=40)`` then ``TimeMasking(
  time_mask_param=40, p=0.2)``, masks filled with 0 (their default value).
- ``none``: nothing.

The masks follow torchaudio's draw rule exactly (:mod:`.masking`): ``p`` caps a mask's
width at that fraction of the axis, it is not a probability, so every example is masked.
The train loop builds one :class:`Augmenter` and calls it once per view: ``waveform``
before the log-mel, ``spectrogram`` after; each step is the identity outside its modes.

Deliberate deviations from the reference, and why:

- Draws are per example, and the two views draw independently (the train loop calls the
  augmenter once per view, the generator moving on in between). The reference draws its
  waveform transforms once per chunk of 100 sounds, which its authors call not ideal, and
  its ``FrequencyMasking``/``TimeMasking`` (``iid_masks=False``) put one mask on a whole
  batch of synthetic sounds. Per-example draws give every pair its own augmentation.
- ``specaugment`` fills an example's masks with that example's mean. torchaudio fills
  with the mean of the tensor it is given: the reference's synthetic path gives it the
  whole batch, its real-data path one example. Per example, an example's augmentation
  does not depend on its batch mates or on how a batch is split over ranks.
- Masks lie along the axes their names say: time masks cover frames, frequency masks
  cover mel bands. The reference hands torchaudio ``(batch, 1, frames, mels)`` tensors,
  whose last two axes torchaudio reads as ``(freq, time)``, so its "frequency" masks
  cover frames and its "time" masks mel bands (the ``p`` caps then apply to the other
  axis: e.g. ``masking``'s time masks are capped at 12 mel bands there, 19 frames here).
- Low-pass cutoffs above Nyquist act as Nyquist (the identity); julius refuses them.
  Only a sample rate below 16 kHz reaches this with the default range.

A difference that is not a choice made here: the pitch shift is drawn uniformly in
+-2 semitones (to within 0.07 semitone, see :mod:`.pitch_shift`), as docs/REFERENCE.md states
the range. torch-audiomentations' ``PitchShift`` picks only among torch-pitch-shift's
"fast" ratios inside the range, and at 16 kHz those are 128/125 and 125/128: the
reference shifts by exactly +-0.41 semitone, never more.

Every random number comes from the ``torch.Generator`` the caller passes, and every call
draws the same amount of numbers whatever the probabilities, the data or the mask caps
(torchaudio skips a mask's draws when its cap is below 1), so the output is a function of
the generator's state (and of the run's seed, epoch, step and rank when the train loop
seeds it with :func:`make_generator`).
"""

from __future__ import annotations

import numpy as np
import torch

from doppelgen.console import InputError
from doppeltrain.augment.impulse_responses import ImpulseResponseError, load_impulse_responses
from doppeltrain.augment.masking import axis_mask, mask_param
from doppeltrain.augment.pitch_shift import PITCH_CHUNK, pitch_shift
from doppeltrain.augment.sinc_filters import cutoffs_uniform_in_mel, highpass, lowpass
from doppeltrain.config import AUGMENT_MODES, AugmentConfig

WAVEFORM_TRANSFORMS = ("highpass", "lowpass", "pitch", "time_shift", "impulse_response")
SPECTROGRAM_MODES = ("specaugment", "masking")


class AugmentError(InputError):
    """An augmentation option cannot be used; the message is one line."""


def check_augment_config(cfg: AugmentConfig) -> None:
    """Raise :class:`AugmentError` naming the first option that cannot be used."""
    checks = [(cfg.mode in AUGMENT_MODES, f"unknown augmentation mode {cfg.mode!r}: expected one of {', '.join(AUGMENT_MODES)}")]
    for name in WAVEFORM_TRANSFORMS:
        probability = getattr(cfg, f"p_{name}")
        checks.append((0.0 <= probability <= 1.0, f"augment.p_{name} must be within [0, 1], got {probability}"))
    for name in ("highpass_hz", "lowpass_hz"):
        band = tuple(getattr(cfg, name))
        checks.append((len(band) == 2 and 0.0 < band[0] <= band[1], f"augment.{name} must be (low, high) with 0 < low <= high, got {band}"))
    checks += [
        (cfg.pitch_semitones >= 0.0, f"augment.pitch_semitones must be 0 or more, got {cfg.pitch_semitones}"),
        (0.0 <= cfg.time_shift_fraction <= 1.0, f"augment.time_shift_fraction must be within [0, 1], got {cfg.time_shift_fraction}"),
    ]
    for name in ("specaugment_n_time_masks", "specaugment_n_freq_masks", "specaugment_time_mask_param", "specaugment_freq_mask_param", "masking_freq_mask_param", "masking_time_mask_param"):
        value = getattr(cfg, name)
        checks.append((isinstance(value, int) and value >= 0, f"augment.{name} must be a whole number, 0 or more, got {value!r}"))
    for name in ("specaugment_p", "masking_time_p"):
        value = getattr(cfg, name)
        checks.append((0.0 <= value <= 1.0, f"augment.{name} must be within [0, 1] (torchaudio's largest fraction of the axis a mask covers), got {value}"))
    for ok, message in checks:
        if not ok:
            raise AugmentError(message)


def make_generator(seed: int, epoch: int, step: int, rank: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, epoch, step, rank) alone: a resumed run draws what an
    uninterrupted one draws."""
    state = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 32 | int(state[1]))
    return generator


def draw(generator: torch.Generator, count: int) -> torch.Tensor:
    """``count`` float32 uniforms in [0, 1) on the generator's device."""
    return torch.rand(count, generator=generator, device=generator.device)


def time_shift(waves: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each row by its own number of samples, with roll-over (``torch.roll`` per row)."""
    length = waves.shape[-1]
    positions = torch.arange(length, device=waves.device)
    source = (positions[None, :] - shifts.to(waves.device)[:, None]) % length
    return torch.gather(waves, 1, source)


def convolve_truncated(waves: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """Full linear convolution of each row with its own impulse response, cut to the
    input's length: no delay compensation (as the reference)."""
    length = waves.shape[-1]
    # Taps past the clip's length never reach the kept output: dropping them halves the
    # FFT for the default set's 1.2 s responses on 1 s clips.
    responses = responses[..., :length]
    # A power-of-two FFT size: T + L - 1 can have large prime factors, which FFTs hate.
    size = 1 << (length + responses.shape[-1] - 2).bit_length()
    product = torch.fft.rfft(waves, size) * torch.fft.rfft(responses, size)
    return torch.fft.irfft(product, size)[..., :length]


class WaveformAugment(torch.nn.Module):
    """The ``waveform`` mode: ``augment(waves (B, T), generator)``; the identity in other
    modes.

    Each transform decides per example with its own probability and draws its own
    parameter; the impulse responses (from ``cfg.ir_dir``, loaded here in ``waveform``
    mode) are a buffer, so ``.to(device)`` moves them. Call once per view for
    independent draws.

    Two ways to run, with the same result (within float rounding, see the tests):

    - one pass (``one_pass=True``, the default off the CPU): every transform runs on
      every row and ``torch.where`` keeps it where the row was chosen. Shapes are fixed
      and nothing is read back from the device, so a GPU is never made to wait for the
      host; the pitch shift takes the whole batch at once.
    - chosen rows (``one_pass=False``, the default on the CPU): each transform runs on
      the rows it chose only (``nonzero``, free on the CPU), which halves the work at the
      default probabilities, and the pitch shift goes in chunks of ``PITCH_CHUNK`` rows
      to bound its memory.
    """

    def __init__(self, cfg: AugmentConfig | None = None, sample_rate: int = 16000, clip_samples: int | None = None,
                 one_pass: bool | None = None):
        super().__init__()
        self.cfg = cfg or AugmentConfig()
        check_augment_config(self.cfg)
        self.sample_rate = sample_rate
        self.one_pass = one_pass
        wanted = self.cfg.mode == "waveform" and self.cfg.ir_dir
        try:  # only a clip's length of each response is read: the convolution keeps no more
            responses = load_impulse_responses(self.cfg.ir_dir, sample_rate, clip_samples) if wanted else torch.zeros(0, 1)
        except ImpulseResponseError as error:
            raise AugmentError(str(error)) from None
        self.register_buffer("impulse_responses", responses, persistent=False)

    @torch.no_grad()
    def forward(self, waves: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if waves.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waves.shape)}")
        if self.cfg.mode != "waveform":
            return waves
        count = waves.shape[0]
        # Every draw happens, applied or not, so each transform's numbers stay put when
        # another's probability changes.
        draws = {name: (draw(generator, count), draw(generator, count)) for name in self.transforms()}
        # The train loop draws on the CPU for devices other than CUDA (MPS).
        draws = {name: (chosen_by.to(waves.device), value.to(waves.device)) for name, (chosen_by, value) in draws.items()}
        one_pass = self.one_pass if self.one_pass is not None else waves.device.type != "cpu"
        out = waves
        for name, probability in self.transforms().items():
            if probability == 0.0 or count == 0 or (name == "impulse_response" and self.impulse_responses.shape[0] == 0):
                continue
            chosen_by, value = draws[name]
            if one_pass:
                changed = self.apply(name, out, value, pitch_chunk=None)
                out = changed if probability >= 1.0 else torch.where((chosen_by < probability)[:, None], changed, out)
                continue
            chosen = (chosen_by < probability).nonzero().flatten()
            if chosen.numel() == 0:
                continue
            out = out.clone() if out is waves else out
            out[chosen] = self.apply(name, out[chosen], value[chosen], pitch_chunk=PITCH_CHUNK)
        return out.clone() if out is waves else out

    def transforms(self) -> dict[str, float]:
        """Transform names in the order applied, with their probabilities."""
        return {name: getattr(self.cfg, f"p_{name}") for name in WAVEFORM_TRANSFORMS}

    def apply(self, name: str, waves: torch.Tensor, uniform: torch.Tensor, pitch_chunk: int | None = PITCH_CHUNK) -> torch.Tensor:
        """One transform on every row of ``waves``, its parameter from one uniform per
        row. Sizes follow from the config (the lowest cutoffs, the largest pitch shift),
        not from the draws."""
        cfg = self.cfg
        if name == "highpass":
            cutoffs = cutoffs_uniform_in_mel(uniform, *cfg.highpass_hz)
            return highpass(waves, cutoffs, self.sample_rate, lowest_hz=cfg.highpass_hz[0])
        if name == "lowpass":
            cutoffs = cutoffs_uniform_in_mel(uniform, *cfg.lowpass_hz)
            return lowpass(waves, cutoffs, self.sample_rate, lowest_hz=cfg.lowpass_hz[0])
        if name == "pitch":
            return pitch_shift(waves, (2.0 * uniform - 1.0) * cfg.pitch_semitones, cfg.pitch_semitones, chunk=pitch_chunk)
        if name == "time_shift":
            limit = cfg.time_shift_fraction * waves.shape[-1]
            return time_shift(waves, torch.round((2.0 * uniform - 1.0) * limit).long())
        if name == "impulse_response":
            bank = self.impulse_responses
            index = (uniform * bank.shape[0]).long().clamp(max=bank.shape[0] - 1)
            return convolve_truncated(waves, bank[index.to(bank.device)].to(waves.device, waves.dtype))
        raise ValueError(f"unknown augmentation {name!r}")


class SpectrogramAugment(torch.nn.Module):
    """The ``specaugment`` and ``masking`` modes: ``augment(spec, generator)`` with
    ``spec`` of shape (B, 1, frames, mels) as :class:`LogMelFrontend` makes it; the
    identity in other modes.

    Every example gets its masks, drawn per example by torchaudio's rule in its order
    (each mask: a width uniform, then a start uniform, for the whole batch).
    ``specaugment`` fills them with the example's mean, ``masking`` with 0.
    """

    def __init__(self, cfg: AugmentConfig | None = None):
        super().__init__()
        self.cfg = cfg or AugmentConfig()
        check_augment_config(self.cfg)

    def mask_plan(self) -> list[tuple[str, int, float]]:
        """The masks in the order torchaudio draws them: ``(axis, mask_param, p)`` with
        axis ``"time"`` (frames) or ``"frequency"`` (mel bands)."""
        cfg = self.cfg
        if cfg.mode == "specaugment":
            return [("time", cfg.specaugment_time_mask_param, cfg.specaugment_p)] * cfg.specaugment_n_time_masks + [
                ("frequency", cfg.specaugment_freq_mask_param, cfg.specaugment_p)
            ] * cfg.specaugment_n_freq_masks
        if cfg.mode == "masking":
            return [("frequency", cfg.masking_freq_mask_param, 1.0), ("time", cfg.masking_time_mask_param, cfg.masking_time_p)]
        return []

    def masks(self, count: int, n_frames: int, n_mels: int, generator: torch.Generator) -> torch.Tensor:
        """The (count, n_frames, n_mels) union of each example's masks."""
        union = torch.zeros(count, n_frames, n_mels, dtype=torch.bool, device=generator.device)
        for axis, param, p in self.mask_plan():
            size = n_frames if axis == "time" else n_mels
            band = axis_mask(draw(generator, count), draw(generator, count), mask_param(param, p, size), size)
            union |= band[:, :, None] if axis == "time" else band[:, None, :]
        return union

    @torch.no_grad()
    def forward(self, spec: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if spec.dim() != 4 or spec.shape[1] != 1:
            raise ValueError(f"expected log-mel of shape (batch, 1, frames, mels), got {tuple(spec.shape)}")
        if self.cfg.mode not in SPECTROGRAM_MODES:
            return spec
        masks = self.masks(spec.shape[0], spec.shape[2], spec.shape[3], generator).to(spec.device)
        if self.cfg.mode == "specaugment":
            fill = spec.mean(dim=(1, 2, 3), keepdim=True)
        else:
            fill = spec.new_zeros(())
        return torch.where(masks[:, None], fill, spec)



class Augmenter(torch.nn.Module):
    """The train loop's one entry point: ``Augmenter(cfg.augment, sample_rate)``, then per
    view ``waves = augmenter.waveform(waves, generator)`` before the log-mel and
    ``spec = augmenter.spectrogram(spec, generator)`` after, with the same generator.
    Exactly one mode acts; each step is the identity outside its modes. Checks the config
    (:class:`AugmentError`) and, in ``waveform`` mode, loads ``ir_dir``. ``one_pass``: see
    :class:`WaveformAugment`.
    """

    def __init__(self, cfg: AugmentConfig | None = None, sample_rate: int = 16000, clip_samples: int | None = None,
                 one_pass: bool | None = None):
        super().__init__()
        self.cfg = cfg or AugmentConfig()
        self.waveform_augment = WaveformAugment(self.cfg, sample_rate, clip_samples, one_pass)
        self.spectrogram_augment = SpectrogramAugment(self.cfg)

    def waveform(self, waves: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, T) waveforms, augmented in ``waveform`` mode."""
        return self.waveform_augment(waves, generator)

    def spectrogram(self, spec: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 1, frames, mels) log-mel, masked in ``specaugment`` and ``masking`` modes."""
        return self.spectrogram_augment(spec, generator)
