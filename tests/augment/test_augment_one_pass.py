"""The waveform augmentation's one-pass path, the one a GPU runs: the result of the
chosen-rows path the CPU runs and of the per-frame pitch shift it replaced, nothing read
back from the device, an op count that does not grow with the batch, no float64 where a
device has none. Op and sync counts follow benchmarks/augment_ops.py's rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from pitch_shift_reference import pitch_shift_per_frame
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import augment_ops
from doppeltrain import precision
from doppeltrain.augment.chain import WaveformAugment, make_generator
from doppeltrain.augment.fft_sizes import nearest_smooth
from doppeltrain.augment.pitch_shift import pitch_plan, pitch_shift
from doppeltrain.augment.sinc_filters import lowpass
from doppeltrain.config import AugmentConfig, TrainConfig
from doppeltrain.features import LogMelFrontend

REPO = Path(__file__).resolve().parents[2]

SR = 16000


@pytest.fixture(scope="module")
def ir_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("irs")
    rng = np.random.default_rng(1)
    for name, length in (("a.wav", 900), ("b.wav", 2400)):
        sf.write(folder / name, (rng.standard_normal(length) * np.exp(-np.arange(length) / 200.0)).astype(np.float32), SR)
    return str(folder)


def harmonic_waves(batch: int) -> torch.Tensor:
    """Harmonic tones from 100 Hz up, 0.1 to 3 loud, with a little noise: partials for
    the phase locking to follow."""
    t = torch.arange(SR, dtype=torch.float64) / SR
    f0 = 100.0 + 40.0 * torch.arange(batch, dtype=torch.float64)[:, None]
    tones = sum(torch.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    noise = torch.randn(batch, SR, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (tones * torch.linspace(0.1, 3.0, batch, dtype=torch.float64)[:, None] + 0.05 * noise).float()


def peak_error(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per row: the largest difference as a fraction of the reference's peak."""
    return (ours - reference).abs().amax(dim=1) / reference.abs().amax(dim=1)


def test_one_pass_gives_what_the_chosen_rows_path_gives(ir_dir):
    x = harmonic_waves(8)
    cfg = AugmentConfig(ir_dir=ir_dir)
    for step in range(2):
        one_pass = WaveformAugment(cfg, SR, one_pass=True)(x, make_generator(0, 0, step, 0))
        chosen_rows = WaveformAugment(cfg, SR, one_pass=False)(x, make_generator(0, 0, step, 0))
        # Seen: 0 to 2e-7 (the FFTs of batches of other sizes round alike or nearly).
        assert peak_error(one_pass, chosen_rows).max() < 1e-5
        assert not torch.allclose(one_pass, x)


def test_one_pass_reads_nothing_back_and_its_op_count_does_not_grow_with_the_batch(ir_dir):
    cfg = TrainConfig()
    cfg.augment.ir_dir = ir_dir
    small, large = (augment_ops.count_view(batch, one_pass=True, cfg=cfg) for batch in (2, 6))
    assert small["syncs"] == 0 and large["syncs"] == 0, (small, large)
    assert small["ops"] == large["ops"] <= augment_ops.TARGET_OPS
    # The rule catches the syncs the CPU's path makes (nonzero), so the zero above means something.
    chosen_rows = augment_ops.count_view(2, one_pass=False, cfg=cfg)
    assert chosen_rows["sync_ops"].get("nonzero", 0) >= 1


def test_the_one_pass_pitch_shift_is_the_per_frame_algorithm():
    # In float64 the rounding of either is far below the gap a different algorithm (or an
    # off-by-one frame, bin or length) would leave: seen 1e-11.
    x = harmonic_waves(6).double()
    semitones = torch.linspace(-2.0, 2.0, 6)
    assert peak_error(pitch_shift(x, semitones, 2.0), pitch_shift_per_frame(x, semitones)).max() < 1e-8


def test_in_float32_the_one_pass_pitch_shift_is_closer_to_exact_than_the_per_frame_one():
    # The per-frame loop summed thousands of radians of phase in float32 (0.004 rad steps
    # at the top bins); the scan sums offsets wrapped to [-pi, pi). Seen against float64:
    # per-frame up to 5.9e-3 of the peak, one pass up to 1.3e-3; between them up to 5.6e-3.
    x = harmonic_waves(8)
    semitones = torch.rand(8, generator=torch.Generator().manual_seed(1)) * 4.0 - 2.0
    exact = pitch_shift_per_frame(x.double(), semitones)
    one_pass, per_frame = pitch_shift(x, semitones, 2.0), pitch_shift_per_frame(x, semitones)
    assert peak_error(one_pass.double(), exact).max() < 3e-3
    assert peak_error(one_pass.double(), exact).median() < peak_error(per_frame.double(), exact).median()
    assert peak_error(one_pass, per_frame).max() < 1e-2
    relative_l2 = (one_pass - per_frame).norm(dim=1) / per_frame.norm(dim=1)
    assert relative_l2.max() < 5e-3


def test_a_pitch_shift_beyond_the_bound_is_cut_to_it():
    x = harmonic_waves(2)
    torch.testing.assert_close(pitch_shift(x, torch.tensor([5.0, -7.0]), 2.0), pitch_shift(x, torch.tensor([2.0, -2.0]), 2.0))


def test_the_pitch_plan_gives_every_shift_its_fast_length():
    plan = pitch_plan(SR, 2.0, "cpu")
    wanted = range(round(SR * 2 ** (-2 / 12)), round(SR * 2 ** (2 / 12)) + 1)
    looked_up = plan.stretched_lengths[plan.slot_of[torch.tensor(wanted) - plan.lowest]].long().tolist()
    assert looked_up == [nearest_smooth(n) for n in wanted]  # what the per-frame version computed per row
    assert (plan.out_frames - 1) * 128 >= max(looked_up)  # the vocoder's output holds the longest
    assert plan.fft_size >= max(looked_up) + SR // 2 + 1  # no wrap-around in the chirp-z convolution
    assert pitch_plan(SR, 2.0, "cpu") is plan  # made once


def test_a_lowest_cutoff_fixes_the_kernel_length_and_leaves_the_filter_alone():
    x = harmonic_waves(4)
    cutoffs = torch.tensor([25.0, 60.0, 300.0, 790.0], dtype=torch.float64)
    fixed, fitted = lowpass(x, cutoffs, SR, lowest_hz=20.0), lowpass(x, cutoffs, SR)
    assert peak_error(fixed, fitted).max() < 1e-6  # only the FFT size differs
    with pytest.raises(ValueError):
        lowpass(x, cutoffs, SR, lowest_hz=0.0)


class _Float64Watch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor) and value.dtype in (torch.float64, torch.complex128):
                self.seen.add(str(func))
        return out


def test_no_float64_on_a_device_that_has_none(ir_dir, monkeypatch):
    # MPS has no float64: treat the CPU as such a device and watch every op's output.
    monkeypatch.setattr(precision, "DEVICES_WITHOUT_FLOAT64", frozenset({"mps", "cpu"}))
    augment = WaveformAugment(AugmentConfig(ir_dir=ir_dir), SR, one_pass=True)
    x = harmonic_waves(4)
    augment(x, make_generator(0, 0, 0, 0))  # the pitch plan is made on the host, in float64, once
    plan = pitch_plan(SR, 2.0, "cpu")
    assert all(t.dtype not in (torch.float64, torch.complex128) for t in vars(plan).values() if isinstance(t, torch.Tensor))
    watch = _Float64Watch()
    with watch:
        out = augment(x, make_generator(0, 0, 1, 0))
    assert not watch.seen
    reference = WaveformAugment(AugmentConfig(ir_dir=ir_dir), SR, one_pass=True)
    monkeypatch.undo()
    # The same sound: where float32 puts a vocoder frame position that should be whole
    # just below it, the frame before is read and every later phase moves (the waveform
    # moves, not its spectrum), so compare what the network sees.
    frontend = LogMelFrontend()
    difference = (frontend(out) - frontend(reference(x, make_generator(0, 0, 1, 0)))).abs()
    assert difference.mean() < 0.05
