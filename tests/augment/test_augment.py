"""Augmentation modes: the waveform transforms (filters against the reference's library),
the spectrogram masks (against torchaudio's rule), per-example draws, determinism."""

from __future__ import annotations

import julius
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from torch_audiomentations import HighPassFilter, LowPassFilter
from torch_audiomentations.utils.mel_scale import convert_frequencies_to_mels

from doppeltrain.augment.chain import (
    Augmenter,
    AugmentError,
    SpectrogramAugment,
    WaveformAugment,
    check_augment_config,
    convolve_truncated,
    load_impulse_responses,
    make_generator,
    time_shift,
)
from doppeltrain.augment.masking import axis_mask, mask_param
from doppeltrain.augment.pitch_shift import pitch_shift
from doppeltrain.augment.sinc_filters import (
    cutoffs_uniform_in_mel,
    hertz_to_mel_oshaughnessy,
    highpass,
    lowpass,
    lowpass_kernels,
)
from doppeltrain.config import AugmentConfig

SR = 16000
TRANSFORMS = ("highpass", "lowpass", "pitch", "time_shift", "impulse_response")


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    """Two impulse responses: a mono 8 kHz WAV (to be resampled) and a stereo FLAC."""
    folder = tmp_path_factory.mktemp("irs")
    rng = np.random.default_rng(1)
    decay = np.exp(-np.arange(800) / 120.0)
    sf.write(folder / "room.wav", (rng.standard_normal(800) * decay).astype(np.float32), 8000)
    stereo = np.stack([rng.standard_normal(1600) * np.exp(-np.arange(1600) / 300.0)] * 2, axis=1)
    sf.write(folder / "hall.flac", (0.5 * stereo).astype(np.float32), SR, subtype="PCM_24")
    (folder / "notes.txt").write_text("not audio")
    return str(folder)


def waves(batch: int = 6) -> torch.Tensor:
    """Broadband, louder than [-1, 1] (synth output is not bounded), different per row."""
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    rows = [
        3.0 * np.sin(2 * np.pi * (200 + 150 * k) * t) + 0.3 * rng.standard_normal(SR) * np.exp(-3 * t)
        for k in range(batch)
    ]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def only(name: str, ir_dir: str | None = None) -> AugmentConfig:
    probabilities = {f"p_{transform}": 0.0 for transform in TRANSFORMS}
    probabilities[f"p_{name}"] = 1.0
    return AugmentConfig(**probabilities, ir_dir=ir_dir)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_each_transform_changes_every_example_and_keeps_the_shape(name, ir_dir):
    x = waves()
    out = WaveformAugment(only(name, ir_dir), SR)(x, make_generator(0, 0, 0, 0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert ((out - x).abs().amax(dim=1) > 1e-2).all()
    assert torch.equal(x, waves())  # the input is left alone


@pytest.mark.parametrize("name", TRANSFORMS)
def test_draws_differ_between_examples_of_a_batch(name, ir_dir):
    same = waves(1).repeat(8, 1)
    out = WaveformAugment(only(name, ir_dir), SR)(same, make_generator(0, 0, 0, 0))
    distinct = {tuple(np.round(row[::97].numpy(), 4)) for row in out}
    assert len(distinct) == (2 if name == "impulse_response" else 8)  # the fixture has 2 responses


def test_same_generator_same_output_and_views_differ(ir_dir):
    augment = WaveformAugment(AugmentConfig(ir_dir=ir_dir), SR)
    x = waves(16)
    first = augment(x, make_generator(3, 1, 7, 0))
    torch.testing.assert_close(first, augment(x, make_generator(3, 1, 7, 0)), rtol=0, atol=0)
    generator = make_generator(3, 1, 7, 0)
    view_a, view_b = augment(x, generator), augment(x, generator)  # the train loop's two calls
    torch.testing.assert_close(view_a, first, rtol=0, atol=0)
    assert not torch.allclose(view_a, view_b)
    assert not torch.allclose(first, augment(x, make_generator(3, 1, 8, 0)))  # another step


def test_probabilities_select_per_example():
    config = AugmentConfig(p_highpass=0.5, p_lowpass=0.0, p_pitch=0.0, p_time_shift=0.0, p_impulse_response=0.0)
    x = waves(1).repeat(64, 1)
    out = WaveformAugment(config, SR)(x, make_generator(0, 0, 0, 0))
    changed = ((out - x).abs().amax(dim=1) > 1e-3).float().mean().item()
    assert 0.25 < changed < 0.75


def test_nothing_happens_when_disabled_or_improbable():
    x = waves()
    zero = AugmentConfig(**{f"p_{name}": 0.0 for name in TRANSFORMS})
    assert torch.equal(WaveformAugment(zero, SR)(x, make_generator(0, 0, 0, 0)), x)
    assert torch.equal(WaveformAugment(AugmentConfig(mode="none"), SR)(x, make_generator(0, 0, 0, 0)), x)


def test_no_ir_dir_skips_the_convolution():
    x = waves()
    out = WaveformAugment(only("impulse_response", None), SR)(x, make_generator(0, 0, 0, 0))
    assert torch.equal(out, x)


def reference_filter(kind: str, x: torch.Tensor, cutoff_hz: float) -> torch.Tensor:
    """The reference's library: torch-audiomentations' filter at one fixed cutoff."""
    transform = {"highpass": HighPassFilter, "lowpass": LowPassFilter}[kind](
        min_cutoff_freq=cutoff_hz, max_cutoff_freq=cutoff_hz, p=1.0, sample_rate=SR, output_type="dict"
    )
    return transform(x.clone()[:, None]).samples[:, 0]


def ours(kind: str, x: torch.Tensor, cutoff_hz) -> torch.Tensor:
    cutoffs = torch.as_tensor(cutoff_hz, dtype=torch.float64).expand(x.shape[0])
    return {"highpass": highpass, "lowpass": lowpass}[kind](x, cutoffs, SR)


def noise(batch: int = 3) -> torch.Tensor:
    """White noise, noise on a DC offset and a random walk: the edges, which julius pads by
    repeating the end samples, matter for the last two."""
    x = torch.randn(batch, SR, generator=torch.Generator().manual_seed(0))
    x[1] += 2.0
    x[2] = torch.cumsum(x[2], 0) / 50.0
    return x


REFERENCE_CUTOFFS = [("highpass", 20.0), ("highpass", 100.0), ("highpass", 800.0), ("lowpass", 1200.0), ("lowpass", 3000.0), ("lowpass", 8000.0 * 0.99)]


@pytest.mark.parametrize("kind,cutoff", REFERENCE_CUTOFFS)
def test_filters_match_the_reference_library_on_noise(kind, cutoff):
    x = noise()
    expected = reference_filter(kind, x, cutoff)
    # Seen: 6e-7 of the input's peak (float32 FFTs in a different order); 1e-5 catches a
    # kernel one tap longer or shorter, another window or zero-padded edges.
    error = (ours(kind, x, cutoff) - expected).abs().amax(dim=1) / x.abs().amax(dim=1)
    assert error.max() < 1e-5


@pytest.mark.parametrize("kind,cutoff", REFERENCE_CUTOFFS)
def test_filter_magnitude_response_matches_the_reference_library(kind, cutoff):
    impulse = torch.zeros(1, SR)
    impulse[0, SR // 2] = 1.0  # far from the edges: the output is the filter's impulse response
    response = lambda y: np.abs(np.fft.rfft(y[0].double().numpy(), 4 * SR))
    ours_response, reference_response = response(ours(kind, impulse, cutoff)), response(reference_filter(kind, impulse, cutoff))
    # Linear magnitude, so the tolerance is -100 dB of the passband at every frequency.
    assert np.abs(ours_response - reference_response).max() < 1e-5


@pytest.mark.parametrize("cutoff", [20.0, 100.0, 800.0, 1200.0, 3000.0, 8000.0 * 0.99])
def test_kernels_are_juliuses(cutoff):
    expected = julius.LowPassFilters([cutoff / SR]).filters[0, 0]
    kernel = lowpass_kernels(torch.tensor([cutoff / SR], dtype=torch.float64))[0]
    assert kernel.shape == expected.shape  # int(8 / c / 2) taps either side; 100 Hz is on a boundary
    torch.testing.assert_close(kernel.float(), expected, atol=1e-7, rtol=0)


def level_db(kind: str, cutoff: float, at_hz: float) -> float:
    impulse = torch.zeros(1, SR)
    impulse[0, SR // 2] = 1.0
    spectrum = np.abs(np.fft.rfft(ours(kind, impulse, cutoff)[0].double().numpy(), 4 * SR))
    return 20 * np.log10(spectrum[round(at_hz * 4)])  # bins are 0.25 Hz apart


@pytest.mark.parametrize("cutoff", [1200.0, 2000.0, 3000.0])
def test_lowpass_is_steep(cutoff):
    assert level_db("lowpass", cutoff, cutoff) == pytest.approx(-6.0, abs=0.1)  # a windowed sinc is -6 dB at its cutoff
    assert -45.0 < level_db("lowpass", cutoff, 1.25 * cutoff) < -43.0  # a second-order biquad: -5.5 dB
    assert level_db("lowpass", cutoff, 0.5 * cutoff) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize("cutoff", [100.0, 800.0])
def test_highpass_is_steep(cutoff):
    assert level_db("highpass", cutoff, 0.75 * cutoff) < -43.0
    assert level_db("highpass", cutoff, 2.0 * cutoff) == pytest.approx(0.0, abs=0.01)


def test_each_row_is_filtered_at_its_own_cutoff():
    # Cutoffs whose kernels differ 40-fold in length share one call.
    cutoffs = [20.0, 37.0, 100.0, 250.0, 800.0, 1200.0, 7920.0]
    x = noise()[2].repeat(len(cutoffs), 1) + torch.randn(len(cutoffs), SR, generator=torch.Generator().manual_seed(1))
    for kind in ("highpass", "lowpass"):
        out = ours(kind, x, cutoffs)
        for row, cutoff in enumerate(cutoffs):
            expected = reference_filter(kind, x[row : row + 1], cutoff)[0]
            assert (out[row] - expected).abs().max() < 1e-5 * x[row].abs().max(), (kind, cutoff)


def test_lowpass_at_nyquist_is_the_identity_and_bad_cutoffs_are_refused():
    x = noise()
    torch.testing.assert_close(ours("lowpass", x, 8000.0), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours("lowpass", x, 12000.0), x, atol=1e-5, rtol=0)  # above Nyquist: as Nyquist
    with pytest.raises(ValueError):
        ours("lowpass", x, 0.0)


def test_cutoffs_are_drawn_uniformly_in_the_reference_librarys_mel():
    frequencies = torch.tensor([20.0, 440.0, 1200.0, 8000.0])
    torch.testing.assert_close(hertz_to_mel_oshaughnessy(frequencies), convert_frequencies_to_mels(frequencies))
    cutoffs = cutoffs_uniform_in_mel(torch.tensor([0.0, 0.5, 1.0]), 20.0, 800.0)
    mel = convert_frequencies_to_mels(cutoffs)
    torch.testing.assert_close(cutoffs[[0, 2]], torch.tensor([20.0, 800.0], dtype=torch.float64))
    torch.testing.assert_close(mel[1] - mel[0], mel[2] - mel[1])


def test_filters_remove_what_they_should():
    t = torch.arange(SR) / SR
    low_and_high = torch.sin(2 * np.pi * 100 * t) + torch.sin(2 * np.pi * 6000 * t)
    x = low_and_high[None]
    high = ours("highpass", x, 800.0)[0, 2000:]
    low = ours("lowpass", x, 1200.0)[0, 2000:]
    spectrum = lambda y: np.abs(np.fft.rfft(y.numpy()))
    bin_of = lambda hz: int(hz * len(high) / SR)
    assert spectrum(high)[bin_of(100)] < 1e-3 * spectrum(high)[bin_of(6000)]
    assert spectrum(low)[bin_of(6000)] < 1e-3 * spectrum(low)[bin_of(100)]


@pytest.mark.parametrize("semitones", [2.0, -2.0, 0.7])
def test_pitch_shift_moves_a_tone_and_keeps_its_level(semitones):
    t = torch.arange(SR) / SR
    tone = 3.0 * torch.sin(2 * np.pi * 1000 * t)
    out = pitch_shift(tone[None], torch.tensor([semitones]))[0]
    assert out.shape == tone.shape
    middle = out[2000:-2000].numpy()
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle)), 8 * len(middle)))
    peak_hz = np.argmax(spectrum) * SR / (8 * len(middle))
    assert peak_hz == pytest.approx(1000 * 2 ** (semitones / 12), rel=0.005)  # lengths are rounded to fast FFT sizes
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(3.0 / np.sqrt(2), rel=0.05)


def test_time_shift_rolls_each_row_by_its_own_amount():
    x = waves(3)
    shifts = torch.tensor([0, 4000, -123])
    out = time_shift(x, shifts)
    for row, shift in zip(range(3), shifts.tolist()):
        assert torch.equal(out[row], torch.roll(x[row], shift))


def test_drawn_time_shifts_stay_within_a_quarter():
    impulse = torch.zeros(32, SR)
    impulse[:, SR // 2] = 1.0
    out = WaveformAugment(only("time_shift"), SR)(impulse, make_generator(0, 0, 0, 0))
    moved = out.argmax(dim=1) - SR // 2
    assert moved.abs().max() <= SR // 4 and len(set(moved.tolist())) > 20


def test_convolution_is_full_and_truncated_without_delay_compensation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1000)).astype(np.float32)
    responses = np.zeros((2, 300), np.float32)
    responses[0, 50] = 1.0  # a pure delay stays a delay
    responses[1] = rng.standard_normal(300)
    out = convolve_truncated(torch.from_numpy(x), torch.from_numpy(responses)).numpy()
    np.testing.assert_allclose(out[0, 50:], x[0, :-50], atol=1e-5)
    np.testing.assert_allclose(out[0, :50], 0.0, atol=1e-5)
    np.testing.assert_allclose(out[1], np.convolve(x[1], responses[1])[:1000], atol=1e-4)


def test_impulse_responses_are_loaded_mono_and_resampled(ir_dir):
    responses = load_impulse_responses(ir_dir, SR)
    assert responses.shape == (2, 1600)  # hall.flac 1600 at 16 kHz; room.wav 800 at 8 kHz -> 1600
    hall, room = responses  # sorted by file name
    assert hall.abs().max() > 0.1 and room.abs().max() > 0.1


def test_a_missing_or_empty_ir_dir_is_a_one_line_error(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(AugmentError) as error:
            WaveformAugment(AugmentConfig(ir_dir=str(folder)), SR)
        assert "\n" not in str(error.value) and "--ir-dir" in str(error.value)


def spectrograms(batch: int = 8) -> torch.Tensor:
    """(batch, 1, 96 frames, 64 mels), no value 0 and no two equal (so a fill shows)."""
    return torch.randn(batch, 1, 96, 64, generator=torch.Generator().manual_seed(0)) - 3.0


def torchaudio_drawing_from(generator: torch.Generator, monkeypatch) -> None:
    """Make torchaudio's masks draw their uniforms from ``generator``."""
    real_rand = torch.rand

    def rand(*size, device=None, dtype=None, **kwargs):
        return real_rand(*size, generator=generator, device=device, dtype=dtype)

    monkeypatch.setattr(torch, "rand", rand)


def as_torchaudio(spec: torch.Tensor) -> torch.Tensor:
    """torchaudio reads the last two axes as (freq, time): ours are (frames, mels)."""
    return spec.transpose(-1, -2)


def test_masking_mode_is_torchaudios_frequency_then_time_masking(monkeypatch):
    spec = spectrograms(64)
    out = SpectrogramAugment(AugmentConfig(mode="masking"))(spec, make_generator(0, 0, 0, 0))
    torchaudio_drawing_from(make_generator(0, 0, 0, 0), monkeypatch)
    # iid_masks=True: torchaudio's rule drawn per example, as ours (the reference's default
    # draws one mask for its whole batch).
    masked = torchaudio.transforms.FrequencyMasking(freq_mask_param=40, iid_masks=True)(as_torchaudio(spec))
    masked = torchaudio.transforms.TimeMasking(time_mask_param=40, iid_masks=True, p=0.2)(masked)
    assert torch.equal(out, as_torchaudio(masked))
    assert (out != spec).any()


def test_specaugment_mode_is_torchaudios_specaugment_with_each_examples_mean(monkeypatch):
    spec = spectrograms(64)
    out = SpectrogramAugment(AugmentConfig(mode="specaugment"))(spec, make_generator(0, 0, 0, 0))
    torchaudio_drawing_from(make_generator(0, 0, 0, 0), monkeypatch)
    reference = torchaudio.transforms.SpecAugment(
        n_time_masks=4, time_mask_param=40, n_freq_masks=2, freq_mask_param=20, iid_masks=True, p=0.4, zero_masking=True
    )
    masked_by_torchaudio = as_torchaudio(reference(as_torchaudio(spec))) == 0  # zero fill marks the masks
    masked = out != spec
    assert torch.equal(masked, masked_by_torchaudio)
    means = spec.mean(dim=(1, 2, 3), keepdim=True).expand_as(spec)
    assert torch.equal(out[masked], means[masked])  # torchaudio's mean fill, per example
    assert masked.any()


@pytest.mark.parametrize(
    "mode,axis,cap",
    [
        ("specaugment", "time", min(40, int(0.4 * 96))),
        ("specaugment", "frequency", min(20, int(0.4 * 64))),
        ("masking", "time", min(40, int(0.2 * 96))),
        ("masking", "frequency", 40),  # p = 1: torchaudio applies no cap from the axis
    ],
)
def test_mask_widths_stay_below_the_cap_and_reach_it(mode, axis, cap):
    augment = SpectrogramAugment(AugmentConfig(mode=mode))
    plan = [mask for mask in augment.mask_plan() if mask[0] == axis]
    size = 96 if axis == "time" else 64
    _, param, p = plan[0]
    assert mask_param(param, p, size) == cap
    generator = make_generator(0, 0, 0, 0)
    widths = axis_mask(torch.rand(20000, generator=generator), torch.rand(20000, generator=generator), cap, size).sum(dim=1)
    assert widths.max() == cap - 1 and widths.min() == 0  # int(u * cap): 0 .. cap - 1
    counts = torch.bincount(widths, minlength=cap).double()
    assert counts.max() / counts.min() < 1.3  # uniform over 0 .. cap - 1 (each ~20000 / cap)


def test_every_example_is_masked():
    spec = spectrograms(256)
    for mode in ("specaugment", "masking"):
        out = SpectrogramAugment(AugmentConfig(mode=mode))(spec, make_generator(0, 0, 0, 0))
        masked = (out != spec).flatten(1).any(dim=1).float().mean().item()
        # p caps widths, it is no probability: an example escapes only when all its widths
        # come out 0 (1 in 760 for masking, never seen for specaugment's six masks).
        assert masked > (0.99 if mode == "masking" else 0.999), mode


def test_masks_differ_between_examples_and_repeat_with_the_generator():
    spec = spectrograms(1).repeat(16, 1, 1, 1)
    for mode in ("specaugment", "masking"):
        augment = SpectrogramAugment(AugmentConfig(mode=mode))
        out = augment(spec, make_generator(0, 0, 0, 0))
        assert torch.equal(out, augment(spec, make_generator(0, 0, 0, 0)))
        assert len({tuple((row != spec[0]).flatten().tolist()) for row in out}) == 16


def test_draws_do_not_depend_on_the_data_or_the_probabilities(ir_dir):
    def state_after(cfg, data):
        generator = make_generator(0, 0, 0, 0)
        augmenter = Augmenter(cfg, SR)
        augmenter.waveform(data[0], generator)
        augmenter.spectrogram(data[1], generator)
        return generator.get_state()

    data = (waves(4), spectrograms(4))
    other = (waves(4) * 0.0, spectrograms(4) * 0.0)
    assert torch.equal(state_after(AugmentConfig(ir_dir=ir_dir), data), state_after(only("pitch"), other))
    for mode in ("specaugment", "masking"):
        tiny_caps = AugmentConfig(mode=mode, specaugment_p=0.0, masking_time_p=0.0)  # caps below 1: no mask
        assert torch.equal(state_after(AugmentConfig(mode=mode), data), state_after(tiny_caps, other))
    no_masks = AugmentConfig(mode="specaugment", specaugment_p=0.0)
    assert torch.equal(SpectrogramAugment(no_masks)(data[1], make_generator(0, 0, 0, 0)), data[1])


@pytest.mark.parametrize("mode", ["waveform", "specaugment", "masking", "none"])
def test_exactly_one_mode_acts(mode, ir_dir):
    augmenter = Augmenter(AugmentConfig(mode=mode, ir_dir=ir_dir), SR)
    x, spec = waves(8), spectrograms(8)
    augmented_waves = augmenter.waveform(x, make_generator(0, 0, 0, 0))
    augmented_spec = augmenter.spectrogram(spec, make_generator(0, 0, 0, 0))
    assert torch.equal(augmented_waves, x) == (mode != "waveform")
    assert torch.equal(augmented_spec, spec) == (mode not in ("specaugment", "masking"))
    changed = augmented_spec != spec
    if mode == "masking":  # torchaudio's default fill, 0; never the mean
        assert (augmented_spec[changed] == 0).all()
    if mode == "specaugment":  # the example's mean; never 0
        means = spec.mean(dim=(1, 2, 3), keepdim=True).expand_as(spec)
        assert torch.equal(augmented_spec[changed], means[changed])


def test_impulse_responses_load_only_in_waveform_mode(tmp_path):
    missing = str(tmp_path / "missing")
    for mode in ("specaugment", "masking", "none"):
        assert Augmenter(AugmentConfig(mode=mode, ir_dir=missing), SR).waveform_augment.impulse_responses.numel() == 0
    with pytest.raises(AugmentError):
        Augmenter(AugmentConfig(mode="waveform", ir_dir=missing), SR)


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "spec"),
        ("p_pitch", 1.5),
        ("highpass_hz", (0.0, 800.0)),
        ("lowpass_hz", (8000.0, 1200.0)),
        ("time_shift_fraction", -0.1),
        ("specaugment_time_mask_param", -1),
        ("masking_freq_mask_param", 4.5),
        ("specaugment_p", 1.2),
    ],
)
def test_unusable_options_are_one_line_errors(field, value):
    with pytest.raises(AugmentError) as error:
        check_augment_config(AugmentConfig(**{field: value}))
    assert "\n" not in str(error.value) and field in str(error.value)


def test_make_generator_is_a_function_of_its_arguments():
    draw = lambda *key: torch.rand(4, generator=make_generator(*key))
    assert torch.equal(draw(0, 1, 2, 3), draw(0, 1, 2, 3))
    keys = [(0, 1, 2, 3), (1, 1, 2, 3), (0, 2, 2, 3), (0, 1, 3, 3), (0, 1, 2, 4)]
    assert len({tuple(draw(*key).tolist()) for key in keys}) == 5


def test_waveform_mode_convolves_with_the_default_impulse_responses_out_of_the_box():
    from doppeltrain.config import TrainConfig
    from doppeltrain.views import ViewPipeline, with_impulse_responses

    cfg = TrainConfig()  # waveform mode, no --ir-dir
    bank = ViewPipeline(cfg).augmenter.waveform_augment.impulse_responses
    assert bank.shape[0] == 300 and torch.isfinite(bank).all()  # doppelgen irs' default set
    assert with_impulse_responses(AugmentConfig(mode="none"), SR).ir_dir is None
    assert with_impulse_responses(AugmentConfig(p_impulse_response=0.0), SR).ir_dir is None
    assert with_impulse_responses(AugmentConfig(ir_dir="mine"), SR).ir_dir == "mine"
