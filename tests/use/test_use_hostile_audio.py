"""Hostile recordings given to ``embed``, ``probe`` and the HEAR API (issue 17): a NaN or
infinite sample, a sample rate whose resampling filter would take gigabytes, file names
that display as other names, and FIFOs."""

from __future__ import annotations

import json
import math
import os
import unicodedata

import numpy as np
import pytest
import soundfile as sf
import torch
from fuzzing import GIB, address_space_cap
from typer.testing import CliRunner
from use_fixtures import SR, write_checkpoint, write_labelled_folder

from doppeltrain.cli import app
from doppeltrain.use import hear, inference, probe
from doppeltrain.use.audio_files import AudioReadError, path_from_text, path_text, stream_audio


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("hostile-audio") / "latest.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return inference.load_model(checkpoint, device="cpu")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def invoke(*args):
        result = CliRunner().invoke(app, [str(a) for a in args])
        return result.exit_code, result.output

    return invoke


def write_with(path, value, index: int = 100, rate: int = SR):
    audio = (0.1 * np.sin(np.arange(int(1.5 * rate)) / 7.0)).astype(np.float32)
    audio[index] = value
    sf.write(path, audio, rate, subtype="FLOAT")
    return path


def one_error_line(code: int, output: str) -> str:
    lines = output.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    return lines[0]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_embed_refuses_a_file_with_non_finite_samples_naming_it(checkpoint, cli, tmp_path, value):
    sf.write(tmp_path / "good.wav", (0.1 * np.sin(np.arange(SR) / 5.0)).astype(np.float32), SR)
    write_with(tmp_path / "bad.wav", value)
    line = one_error_line(*cli("embed", checkpoint, tmp_path / "good.wav", tmp_path / "bad.wav", "--out",
                               tmp_path / "e.npy", "--device", "cpu", "--no-progress"))
    assert "bad.wav" in line and "non-finite samples" in line
    assert not (tmp_path / "e.npy").exists()  # never a NaN row


def test_the_embedding_api_and_hear_refuse_non_finite_audio(model, checkpoint):
    audio = torch.zeros(2, SR)
    audio[1, 5] = math.nan
    with pytest.raises(ValueError, match="clip 1 holds non-finite samples"):
        inference.embed(model, audio, SR)
    hear_model = hear.load_model(checkpoint)
    for call in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(ValueError, match="non-finite"):
            call(audio, hear_model)


def test_probe_refuses_a_file_with_non_finite_samples_instead_of_falling_to_chance(checkpoint, cli, tmp_path):
    data = write_labelled_folder(tmp_path / "set", per_class=4)
    write_with(data / "tone" / "zz-nan.wav", math.nan)
    line = one_error_line(*cli("probe", checkpoint, data, "--device", "cpu", "--no-progress", "--out", tmp_path / "p.json"))
    assert "zz-nan.wav" in line and "non-finite samples" in line
    assert not (tmp_path / "p.json").exists()


def test_the_probe_report_is_strict_json_even_with_a_non_finite_figure(checkpoint, tmp_path, monkeypatch):
    data = write_labelled_folder(tmp_path / "set", per_class=4)
    monkeypatch.setattr(probe, "log_loss", lambda *args: math.nan)  # e.g. a loss that overflowed
    out = tmp_path / "p.json"
    probe.run_probe(probe.ProbeConfig(checkpoint=str(checkpoint), data=str(data), device="cpu", out=str(out), max_iter=5))

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    report = json.loads(out.read_text(), parse_constant=refuse)
    assert report["results"]["checkpoint"]["test_log_loss"] is None


def test_a_sample_rate_whose_resampling_filter_would_take_gigabytes_is_refused(checkpoint, cli, tmp_path):
    # 44,101 Hz is coprime to 16 kHz: torchaudio's filter bank would be 16,000 x 44,135
    # values (2.6 GiB); building it peaked at 18 GB.
    write_with(tmp_path / "odd.wav", 0.0, rate=44101)
    with address_space_cap(GIB):
        line = one_error_line(*cli("embed", checkpoint, tmp_path / "odd.wav", "--out", tmp_path / "e.npy",
                                   "--device", "cpu", "--no-progress"))
    assert "odd.wav" in line and "44101 Hz" in line and "filter" in line
    with address_space_cap(GIB), pytest.raises(AudioReadError, match="would need a filter"):
        list(stream_audio(tmp_path / "odd.wav", SR))
    write_with(tmp_path / "ntsc.wav", 0.0, rate=44056)  # an odd rate recorders use: 11 M values, allowed
    assert sum(block.numel() for block in stream_audio(tmp_path / "ntsc.wav", SR)) == pytest.approx(1.5 * SR, abs=2)


@pytest.mark.parametrize("name", ["new\nline\u202e.wav", "zero\u200bwidth.wav", "tag\U000e0001.wav", "bom\ufeff.wav"])
def test_format_characters_in_names_are_escaped_and_round_trip(name):
    text = path_text(name)
    assert not any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in text), text
    assert path_from_text(text) == name


def test_embeddings_txt_shows_a_right_to_left_override_escaped(checkpoint, cli, tmp_path):
    spoofed = tmp_path / "invoice\u202evaw.exe.wav"
    sf.write(spoofed, (0.1 * np.sin(np.arange(SR) / 5.0)).astype(np.float32), SR)
    code, output = cli("embed", checkpoint, spoofed, "--out", tmp_path / "e.npy", "--device", "cpu", "--no-progress")
    assert code == 0, output
    (line,) = (tmp_path / "e.txt").read_text(encoding="utf-8").splitlines()
    assert line.endswith("invoice\\u202evaw.exe.wav") and path_from_text(line) == str(spoofed)


def test_a_fifo_among_the_inputs_is_refused_or_skipped_never_opened(checkpoint, cli, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(folder / "a.wav", (0.1 * np.sin(np.arange(SR) / 5.0)).astype(np.float32), SR)
    os.mkfifo(folder / "fifo.wav")
    line = one_error_line(*cli("embed", checkpoint, folder / "fifo.wav", "--out", tmp_path / "e.npy", "--device", "cpu"))
    assert "not a regular file" in line and "fifo.wav" in line
    code, output = cli("embed", checkpoint, folder, "--out", tmp_path / "e.npy", "--device", "cpu", "--no-progress")
    assert code == 0 and (tmp_path / "e.txt").read_text().splitlines() == [str(folder / "a.wav")], output
