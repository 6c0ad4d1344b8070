"""Reading ``--ir-dir`` (issue 17): only a clip's length of each response, and a bad
response refused at load in one line naming it, not hours later as a NaN loss."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from doppeltrain.augment.chain import AugmentError, WaveformAugment
from doppeltrain.augment.impulse_responses import load_impulse_responses
from doppeltrain.cli import main
from doppeltrain.config import AugmentConfig

SR = 16000


def decaying_noise(samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(samples) * np.exp(-np.arange(samples) / (samples / 6))).astype(np.float32)


@pytest.fixture
def ir_folder(tmp_path):
    folder = tmp_path / "irs"
    folder.mkdir()
    for index in range(3):
        sf.write(folder / f"short-{index}.wav", decaying_noise(4000, index), SR)
    return folder


def test_only_a_clip_of_each_response_is_read(ir_folder):
    # Ten minutes of a response: 9.6 M samples, 38 MB as float32 (mostly silence, so a
    # small FLAC); the review measured 1.8 GiB for 50 such banks padded to the longest.
    long = np.zeros(10 * 60 * SR, np.float32)
    long[:SR] = decaying_noise(SR, 9)
    sf.write(ir_folder / "long.flac", long, SR, subtype="PCM_24")
    tracemalloc.start()
    try:
        bank = load_impulse_responses(str(ir_folder), SR, max_samples=SR)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bank.shape == (4, SR)  # one clip of each; the shorter ones zero-padded
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MB"
    np.testing.assert_allclose(bank[0].numpy(), sf.read(ir_folder / "long.flac", frames=SR, dtype="float32")[0], atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_a_cut_response_equals_the_start_of_the_whole_one_resampled(tmp_path, rate):
    folder = tmp_path / "irs"
    folder.mkdir()
    response = decaying_noise(3 * rate, 1)
    sf.write(folder / "room.wav", response, rate, subtype="FLOAT")
    whole = torchaudio.functional.resample(torch.from_numpy(response), rate, SR)
    cut = load_impulse_responses(str(folder), SR, max_samples=4000)[0]
    assert cut.shape == (4000,)
    torch.testing.assert_close(cut, whole[:4000], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case, words", [
    ("nan", "holds non-finite samples"),
    ("inf", "holds non-finite samples"),
    ("zeros", "is silent (all zero)"),
    ("coprime-rate", "would need a filter of"),
])
def test_an_unusable_response_is_refused_at_load_naming_the_file(ir_folder, case, words):
    response = decaying_noise(4000)
    rate = SR
    if case == "nan":
        response[1234] = np.nan
    elif case == "inf":
        response[10] = np.inf
    elif case == "zeros":
        response[:] = 0.0
    else:
        rate = 44101  # coprime to 16 kHz: torchaudio's filter would take 2.6 GiB
    sf.write(ir_folder / f"bad-{case}.wav", response, rate, subtype="FLOAT")
    with pytest.raises(AugmentError) as caught:
        WaveformAugment(AugmentConfig(ir_dir=str(ir_folder)), SR, clip_samples=SR)
    message = str(caught.value)
    assert f"bad-{case}.wav" in message and words in message and "\n" not in message


def test_fit_names_the_bad_response_instead_of_blaming_training(voice_shards, ir_folder, tmp_path, capsys):
    response = decaying_noise(4000)
    response[100] = np.nan
    sf.write(ir_folder / "a.wav", response, SR, subtype="FLOAT")
    args = ["fit", str(voice_shards), "--runs-dir", str(tmp_path / "runs"), "--model", "small", "--width", "8",
            "--batch-size", "4", "--workers", "0", "--epochs", "1", "--steps-per-epoch", "2", "--val-shards", "1",
            "--no-progress", "--ir-dir", str(ir_folder)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a.wav" in err and "non-finite" in err and "loss" not in err, err


def test_entries_that_are_not_regular_files_are_skipped(ir_folder):
    os.mkfifo(ir_folder / "fifo.wav")  # opening it would block forever
    (ir_folder / "folder.flac").mkdir()
    bank = load_impulse_responses(str(ir_folder), SR, max_samples=SR)
    assert bank.shape[0] == 3


def test_a_bank_larger_than_its_bound_is_refused_before_reading(ir_folder, monkeypatch):
    from doppeltrain.augment import impulse_responses

    monkeypatch.setattr(impulse_responses, "MAX_BANK_VALUES", 3 * SR - 1)
    with pytest.raises(impulse_responses.ImpulseResponseError, match="exceed the .* values a bank may hold"):
        load_impulse_responses(str(ir_folder), SR, max_samples=SR)
