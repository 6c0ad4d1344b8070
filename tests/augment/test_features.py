"""The log-mel frontend against a direct NumPy implementation of docs/REFERENCE.md's definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from doppelgen.vggish import htk_hertz_to_mel
from doppeltrain.config import FeatureConfig
from doppeltrain.features import LogMelFrontend, log_mel, n_examples

SR = 16000


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """docs/REFERENCE.md, written out: 400-sample frames every 160, periodic Hann, |rfft| of 512,
    HTK-mel triangles (in mel) over 125-7500 Hz with the DC bin zeroed, log(mel + 0.01)."""
    x = x.astype(np.float64)
    count = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(count)])
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    magnitude = np.abs(np.fft.rfft(frames * hann, 512))
    to_mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)
    bin_mel = to_mel(np.linspace(0.0, SR / 2, 257))
    edges = np.linspace(to_mel(125.0), to_mel(7500.0), 66)
    weights = np.zeros((257, 64))
    for band in range(64):
        low, center, high = edges[band : band + 3]
        weights[:, band] = np.maximum(0.0, np.minimum((bin_mel - low) / (center - low), (high - bin_mel) / (high - center)))
    weights[0] = 0.0
    return np.log(magnitude @ weights + 0.01)


def clips(n_samples: int = SR) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n_samples) / SR
    loud_noise = 4.0 * rng.standard_normal(n_samples)  # synth audio is not bounded to [-1, 1]
    quiet_noise = 1e-3 * rng.standard_normal(n_samples)
    # A -40 dB noise floor: float32 STFT error is relative to the loudest bin, so bands
    # far below a pure tone cannot match float64 to 1e-4 after log(mel + 0.01).
    chord = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 3111 * t + 1.0) + 10 * quiet_noise
    return np.stack([loud_noise, quiet_noise, chord]).astype(np.float32)


def test_frontend_matches_numpy_reference():
    x = clips()
    out = LogMelFrontend(FeatureConfig())(torch.from_numpy(x))
    assert out.shape == (3, 1, 96, 64) and out.dtype == torch.float32
    expected = np.stack([reference_log_mel(row)[:96] for row in x])
    np.testing.assert_allclose(out[:, 0].numpy(), expected, atol=1e-4, rtol=0)


def test_log_mel_function_gives_every_frame():
    x = clips()
    spectrogram = log_mel(torch.from_numpy(x), FeatureConfig())
    assert spectrogram.shape == (3, 98, 64)  # 1 + (16000 - 400) // 160 frames, no centring
    np.testing.assert_allclose(spectrogram.numpy(), np.stack([reference_log_mel(r) for r in x]), atol=1e-4, rtol=0)


def test_frames_split_long_clips_into_examples():
    x = clips(3 * SR + 500)
    frontend = LogMelFrontend()
    examples = frontend.frames(torch.from_numpy(x))
    assert n_examples(x.shape[1], frontend.cfg) == 3
    assert examples.shape == (3, 3, 1, 96, 64)
    expected = reference_log_mel(x[2])
    for k in range(3):
        np.testing.assert_allclose(examples[2, k, 0].numpy(), expected[96 * k : 96 * (k + 1)], atol=1e-4, rtol=0)
    # forward is the first example, read from only the samples it needs
    torch.testing.assert_close(frontend(torch.from_numpy(x)), examples[:, 0], atol=1e-5, rtol=0)


def test_short_clip_is_a_one_line_error():
    with pytest.raises(ValueError, match="shorter than one example") as error:
        LogMelFrontend()(torch.zeros(2, 15000))
    assert "\n" not in str(error.value)


def test_window_and_filterbank_are_buffers_that_follow_the_module():
    frontend = LogMelFrontend()
    assert set(dict(frontend.named_buffers())) == {"window", "filterbank"}
    assert frontend.filterbank.shape == (257, 64)
    assert torch.all(frontend.filterbank[0] == 0)  # DC bin zeroed
    assert frontend.state_dict() == {}  # derived from the config, not saved with the model
    # .to moves them: "meta" is a device other than the CPU on every machine.
    moved = LogMelFrontend().to("meta")
    assert moved.window.device.type == "meta" and moved.filterbank.device.type == "meta"
    # and the features are computed from them, not from fresh copies left on the CPU.
    x = torch.from_numpy(clips())
    frontend.filterbank.zero_()
    torch.testing.assert_close(frontend(x), torch.full((3, 1, 96, 64), float(np.log(0.01))))


def test_mel_scale_is_htk():
    assert htk_hertz_to_mel(700.0) == pytest.approx(1127.0 * np.log(2.0))
    np.testing.assert_allclose(htk_hertz_to_mel(np.array([0.0, 1000.0])), 1127.0 * np.log1p(np.array([0.0, 1000.0]) / 700.0))


def test_bf16_autocast_keeps_fp32_features():
    x = torch.from_numpy(clips())
    frontend = LogMelFrontend()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = frontend(x)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, frontend(x), atol=1e-5, rtol=0)
