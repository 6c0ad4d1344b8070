"""Waveform augmentations and SpecAugment: per-example draws, determinism, each transform."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from doppeltrain.augment import (
    AugmentError,
    SpecAugment,
    WaveformAugment,
    biquad,
    convolve_truncated,
    cutoffs_uniform_in_mel,
    load_impulse_responses,
    make_generator,
    pitch_shift,
    time_shift,
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


def test_biquads_match_torchaudio_for_one_cutoff():
    x = 0.2 * waves()  # inside [-1, 1]: torchaudio's biquads clamp their output
    references = {"highpass": torchaudio.functional.highpass_biquad, "lowpass": torchaudio.functional.lowpass_biquad}
    for kind, reference in references.items():
        ours = biquad(x, torch.full((x.shape[0],), 500.0), SR, kind)
        torch.testing.assert_close(ours, reference(x, SR, 500.0), atol=1e-4, rtol=0)


def test_filter_cutoffs_span_their_ranges_evenly_in_mel():
    cutoffs = cutoffs_uniform_in_mel(torch.tensor([0.0, 0.5, 1.0]), 20.0, 800.0)
    mel = 2595.0 * torch.log10(1.0 + cutoffs / 700.0)
    torch.testing.assert_close(cutoffs[[0, 2]], torch.tensor([20.0, 800.0], dtype=torch.float64))
    torch.testing.assert_close(mel[1] - mel[0], mel[2] - mel[1])


def test_filters_remove_what_they_should():
    t = torch.arange(SR) / SR
    low_and_high = torch.sin(2 * np.pi * 100 * t) + torch.sin(2 * np.pi * 6000 * t)
    x = low_and_high[None]
    high = biquad(x, torch.tensor([800.0]), SR, "highpass")[0, 2000:]
    low = biquad(x, torch.tensor([1200.0]), SR, "lowpass")[0, 2000:]
    spectrum = lambda y: np.abs(np.fft.rfft(y.numpy()))  # noqa: E731
    bin_of = lambda hz: int(hz * len(high) / SR)  # noqa: E731
    assert spectrum(high)[bin_of(100)] < 0.05 * spectrum(high)[bin_of(6000)]
    assert spectrum(low)[bin_of(6000)] < 0.05 * spectrum(low)[bin_of(100)]


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
    return torch.randn(batch, 1, 96, 64, generator=torch.Generator().manual_seed(0)) - 3.0


def test_specaugment_masks_bands_with_the_example_mean():
    spec = spectrograms()
    config = AugmentConfig(mode="specaugment", specaugment_p=1.0, specaugment_time_masks=1, specaugment_time_width=40, specaugment_freq_masks=0)
    out = SpecAugment(config)(spec, make_generator(0, 0, 0, 0))
    assert out.shape == spec.shape
    for row in range(spec.shape[0]):
        masked_frames = (out[row, 0] != spec[row, 0]).all(dim=1).nonzero().flatten()
        if len(masked_frames):
            assert len(masked_frames) < 40
            assert torch.equal(masked_frames, torch.arange(masked_frames[0], masked_frames[0] + len(masked_frames)))
            torch.testing.assert_close(out[row, 0, masked_frames[0]], spec[row].mean().expand(64))
    assert (out != spec).any()


def test_specaugment_draws_per_example_and_is_deterministic():
    spec = spectrograms(1).repeat(16, 1, 1, 1)
    augment = SpecAugment(AugmentConfig(mode="specaugment", specaugment_p=1.0))
    out = augment(spec, make_generator(0, 0, 0, 0))
    torch.testing.assert_close(out, augment(spec, make_generator(0, 0, 0, 0)), rtol=0, atol=0)
    masks = {tuple((row != spec[0]).flatten().tolist()) for row in out}
    assert len(masks) == 16
    frequency_masked = (out != spec).all(dim=2).any(dim=-1)  # a whole mel band replaced
    assert frequency_masked.float().mean() > 0.5


def test_specaugment_probability_and_switch():
    spec = spectrograms(64)
    out = SpecAugment(AugmentConfig(mode="specaugment", specaugment_p=0.4))(spec, make_generator(0, 0, 0, 0))
    touched = (out != spec).flatten(1).any(dim=1).float().mean().item()
    assert 0.2 < touched < 0.6
    assert torch.equal(SpecAugment(AugmentConfig(mode="specaugment", specaugment_p=0.0))(spec, make_generator(0, 0, 0, 0)), spec)
    assert torch.equal(SpecAugment(AugmentConfig(mode="none"))(spec, make_generator(0, 0, 0, 0)), spec)


def test_make_generator_is_a_function_of_its_arguments():
    draw = lambda *key: torch.rand(4, generator=make_generator(*key))  # noqa: E731
    assert torch.equal(draw(0, 1, 2, 3), draw(0, 1, 2, 3))
    keys = [(0, 1, 2, 3), (1, 1, 2, 3), (0, 2, 2, 3), (0, 1, 3, 3), (0, 1, 2, 4)]
    assert len({tuple(draw(*key).tolist()) for key in keys}) == 5
