"""Embedding audio with a checkpoint: the Python API and ``doppeltrain embed``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from use_fixtures import EMBEDDING_DIM, SR, write_checkpoint

from doppeltrain.cli import app
from doppeltrain.use import audio_files
from doppeltrain.use.audio_files import StreamResampler, path_from_text, path_text
from doppeltrain.use.inference import (
    AudioReadError,
    ExampleFramer,
    clip_examples,
    count_examples,
    embed,
    embed_command,
    embed_files,
    expand_inputs,
    frame,
    load_audio,
    load_model,
    resample,
)

HOP = 15360  # 96 frames of 10 ms at 16 kHz
WINDOW = 16000  # one training clip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("embed") / "tiny.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, device="cpu")


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default outputs land in the test's folder
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def _clip(seed: int, samples: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(samples, generator=generator)


def test_load_model_is_frozen_at_the_training_rate(model):
    assert model.sample_rate == SR and model.embedding_dim == EMBEDDING_DIM
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_rows_follow_input_order_whatever_the_batching(model):
    clips = [_clip(0, 16000), _clip(1, 40000), _clip(2, 5000)]
    together = embed(model, clips, SR, batch_size=2)
    assert together.shape == (3, EMBEDDING_DIM) and together.dtype == torch.float32
    alone = torch.cat([embed(model, clip, SR) for clip in clips])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    reversed_rows = embed(model, clips[::-1], SR, batch_size=64)
    torch.testing.assert_close(reversed_rows, together.flip(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_a_one_second_clip_has_a_unit_embedding(model):
    vector = embed(model, _clip(3, SR), SR)[0]
    assert vector.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_count_examples_tiles_whole_examples_and_keeps_a_half_full_tail():
    assert count_examples(1, HOP) == 1
    assert count_examples(16000, HOP) == 1
    assert count_examples(3 * HOP, HOP) == 3
    assert count_examples(3 * HOP + HOP // 2 - 1, HOP) == 3
    assert count_examples(3 * HOP + HOP // 2, HOP) == 4


def test_frame_pads_with_zeros_outside_the_clip():
    waveform = torch.arange(1, 11, dtype=torch.float32)
    windows = frame(waveform, -2, 3, 4, 4)
    assert windows.tolist() == [[0, 0, 1, 2], [2, 3, 4, 5], [5, 6, 7, 8], [8, 9, 10, 0]]


def test_a_long_clip_is_the_mean_of_its_examples(model):
    clip = _clip(4, 3 * HOP + 9000)  # 3 whole examples and a tail of more than half of one
    examples = clip_examples(clip, model.framing)
    assert examples.shape == (4, WINDOW)
    torch.testing.assert_close(examples[1], clip[HOP:HOP + WINDOW])
    per_window = embed(model, list(examples), SR)
    torch.testing.assert_close(embed(model, clip, SR)[0], per_window.mean(dim=0), rtol=1e-4, atol=1e-5)


def test_a_short_clip_is_zero_padded(model):
    short = _clip(5, 4000)
    padded = torch.nn.functional.pad(short, (0, WINDOW - 4000))
    torch.testing.assert_close(embed(model, short, SR), embed(model, padded, SR), rtol=1e-4, atol=1e-5)


def test_other_sample_rates_are_resampled(model):
    clip = _clip(6, 2 * SR)
    at_44k = resample(clip, SR, 44100)
    direct = embed(model, clip, SR)
    resampled = embed(model, at_44k, 44100)
    assert torch.nn.functional.cosine_similarity(direct, resampled).item() > 0.99
    # Claiming the wrong rate must change the result, or the rate is being ignored.
    wrong = embed(model, at_44k, SR)
    assert torch.nn.functional.cosine_similarity(direct, wrong).item() < 0.99


def test_files_any_rate_stereo_averaged(model, tmp_path):
    left, right = (_clip(seed, 22050).clamp(-0.99, 0.99).numpy() for seed in (7, 8))  # FLAC clips at 1
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], axis=1), 22050)
    loaded = load_audio(tmp_path / "stereo.flac", SR)
    assert loaded.shape == (SR,)
    mono = resample(torch.from_numpy((left + right) / 2), 22050, SR)
    torch.testing.assert_close(loaded, mono, rtol=1e-3, atol=1e-4)  # FLAC is 16-bit
    rows = embed_files(model, [tmp_path / "stereo.flac"])
    assert rows.shape == (1, EMBEDDING_DIM) and rows.dtype == np.float32


def test_expand_inputs_recurses_folders_and_reads_lists(tmp_path):
    for name in ["b/2.wav", "a/1.flac", "a/deeper/3.WAV", "a/.hidden.wav", "a/notes.txt", ".cache/4.wav"]:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_bytes(b"")
    (tmp_path / "single.ogg").write_bytes(b"")
    (tmp_path / "list.txt").write_text("# a comment\n\ndata/b/2.wav\n" + f"{tmp_path / 'single.ogg'}\n")
    found = expand_inputs([str(tmp_path / "data"), f"@{tmp_path / 'list.txt'}", str(tmp_path / "single.ogg")])
    relative = [p.relative_to(tmp_path).as_posix() for p in found]
    assert relative == ["data/a/1.flac", "data/a/deeper/3.WAV", "data/b/2.wav", "data/b/2.wav", "single.ogg", "single.ogg"]
    with pytest.raises(ValueError, match="no such file or folder"):
        expand_inputs([str(tmp_path / "missing.wav")])
    with pytest.raises(ValueError, match="no audio files under"):
        expand_inputs([str(_empty(tmp_path))])


def test_a_list_file_is_read_only_up_to_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_files, "MAX_LIST_BYTES", 64)
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "short.txt").write_text("a.wav\n" * 10)  # 60 bytes: within the bound
    assert expand_inputs([f"@{tmp_path / 'short.txt'}"]) == [tmp_path / "a.wav"] * 10
    (tmp_path / "long.txt").write_text("a.wav\n" * 11)
    with pytest.raises(AudioReadError, match=r"^list file .*long.txt is larger than "):
        expand_inputs([f"@{tmp_path / 'long.txt'}"])


def _empty(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.md").write_text("no audio here")
    return folder


def test_unreadable_file_is_named(model, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioReadError, match="bad.wav"):
        load_audio(bad, SR)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), SR)
    with pytest.raises(AudioReadError, match="no samples"):
        embed_files(model, [empty])


def test_embed_command_writes_rows_and_paths_in_input_order(checkpoint, model, tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "in" / "sub" / "b.wav", _clip(9, 30000).numpy(), SR)
    sf.write(tmp_path / "in" / "a.wav", _clip(10, 12000).numpy(), 8000)
    sf.write(tmp_path / "c.wav", _clip(11, 50000).numpy(), 48000)
    (tmp_path / "list.txt").write_text("c.wav\n")
    result = embed_command(checkpoint, [f"@{tmp_path / 'list.txt'}", str(tmp_path / "in")],
                           tmp_path / "out" / "emb.npy", batch_size=3, device="cpu", progress=False)
    rows = np.load(tmp_path / "out" / "emb.npy")
    names = (tmp_path / "out" / "emb.txt").read_text().splitlines()
    assert result.shape == rows.shape == (3, EMBEDDING_DIM)
    assert [n.split("/")[-1] for n in names] == ["c.wav", "a.wav", "b.wav"]
    expected = embed_files(model, names, batch_size=1)
    np.testing.assert_allclose(rows, expected, rtol=1e-4, atol=1e-5)


def test_cli_embed(cli, checkpoint, tmp_path):
    sf.write(tmp_path / "x.wav", _clip(12, 20000).numpy(), SR)
    result = cli("embed", checkpoint, tmp_path / "x.wav", "--out", tmp_path / "e.npy", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "e.npy").shape == (1, EMBEDDING_DIM)
    assert "wrote 1 x 32 embeddings" in result.output
    assert "embedding: 100%" in result.output  # the progress bar, on by default


def test_a_bug_keeps_its_traceback_only_bad_input_is_one_line(cli, checkpoint, tmp_path, monkeypatch):
    """console.InputError is "bad input"; a bare ValueError is a bug and must not become a
    one-line error with exit 2."""
    from doppeltrain.use import inference

    sf.write(tmp_path / "x.wav", _clip(12, 16000).numpy(), SR)
    monkeypatch.setattr(inference, "embed_files", lambda *args: (_ for _ in ()).throw(ValueError("a bug")))
    result = cli("embed", checkpoint, tmp_path / "x.wav", "--device", "cpu", "--no-progress")
    assert result.exit_code != 2 and isinstance(result.exception, ValueError) and "error: a bug" not in result.output
    monkeypatch.setattr(inference, "embed_files", lambda *args: (_ for _ in ()).throw(inference.EmbedError("bad input")))
    result = cli("embed", checkpoint, tmp_path / "x.wav", "--device", "cpu", "--no-progress")
    assert result.exit_code == 2 and result.output.strip().splitlines() == ["error: bad input"]


@pytest.mark.parametrize("case", ["missing", "unreadable", "not-npy", "bad-checkpoint", "bad-device"])
def test_cli_embed_bad_inputs_fail_in_one_line(cli, checkpoint, tmp_path, case):
    good = tmp_path / "good.wav"
    sf.write(good, _clip(13, 16000).numpy(), SR)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    not_a_checkpoint = tmp_path / "nope.pt"
    not_a_checkpoint.write_text("nope")
    args = {
        "missing": (checkpoint, tmp_path / "missing.wav"),
        "unreadable": (checkpoint, good, bad),
        "not-npy": (checkpoint, good, "--out", tmp_path / "e.csv"),
        "bad-checkpoint": (not_a_checkpoint, good),
        "bad-device": (checkpoint, good, "--device", "tpu"),
    }[case]
    result = cli("embed", *args, "--no-progress")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    named = {"missing": "missing.wav", "unreadable": "bad.wav", "not-npy": "e.csv", "bad-checkpoint": "nope.pt", "bad-device": "tpu"}
    assert named[case] in lines[0]
    assert not (tmp_path / "embeddings.npy").exists()


# --- long files stream in blocks --------------------------------------------------------


@pytest.mark.parametrize("orig_sr", [44100, 22050, 48000, 8000, 16000])
# Blocks of 7 samples stand for tiny pushes: one-sample blocks cost a push per sample
# (a minute of the suite) and test nothing more.
@pytest.mark.parametrize("block", [7, 441, 1000, 65536])
def test_stream_resampler_equals_resampling_the_whole_signal(orig_sr, block):
    signal = _clip(20, int(0.35 * orig_sr) + 13)
    resampler = StreamResampler(orig_sr, SR)
    parts = [resampler.push(chunk) for chunk in signal.split(block)] + [resampler.finish()]
    streamed = torch.cat(parts)
    whole = resample(signal, orig_sr, SR)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, rtol=0, atol=2e-6)


@pytest.mark.parametrize("samples", [1, 9000, WINDOW, HOP + HOP // 2, 3 * HOP + 9000, 5 * HOP + 100])
@pytest.mark.parametrize("block", [1000, 15360, 70000])
def test_example_framer_equals_clip_examples(model, samples, block):
    clip = _clip(21, samples)
    framer = ExampleFramer(model.framing)
    streamed = torch.cat([framer.push(chunk) for chunk in clip.split(block)] + [framer.finish()])
    assert torch.equal(streamed, clip_examples(clip, model.framing))


def _write_noise(path, seconds: float, sr: int = 44100, channels: int = 2, seed: int = 0) -> None:
    """A 16-bit WAV of noise, written a block at a time (the test's own memory stays small):
    10 s of noise repeated, each repetition scaled differently."""
    block = (0.2 * np.random.default_rng(seed).standard_normal((10 * sr, channels))).astype(np.float32)
    with sf.SoundFile(path, "w", sr, channels, subtype="PCM_16") as handle:
        left, index = int(seconds * sr), 0
        while left:
            frames = min(left, len(block))
            handle.write(block[:frames] * (0.5 + 0.5 * ((index * 7) % 11) / 10))
            left, index = left - frames, index + 1


def test_a_long_file_streams_to_its_in_memory_embedding(model, tmp_path):
    # 3 min of 44.1 kHz stereo: about 30 blocks, each boundary resampled and framed.
    path = tmp_path / "long.wav"
    _write_noise(path, 180.3)
    streamed = torch.from_numpy(embed_files(model, [path]))
    data, sr = sf.read(path, dtype="float32", always_2d=True)
    in_memory = embed(model, torch.from_numpy(data).mean(dim=1), sr)
    # The stated tolerance: 1e-5 per coordinate of a (nearly) unit vector.
    torch.testing.assert_close(streamed, in_memory, rtol=0, atol=1e-5)


MEASURE_PEAK = """
import json, resource, sys
from doppeltrain.use.inference import embed_files, load_model
model = load_model(sys.argv[1], device="cpu")
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
base = peak()
embed_files(model, [sys.argv[2]])  # warm-up: whole batches, the resampler, the decoder
warm = peak()
embed_files(model, [sys.argv[3]])
print(json.dumps({"warm_up": warm - base, "long": peak() - warm}))
"""


@pytest.mark.slow
def test_embedding_a_long_file_takes_memory_independent_of_its_length(checkpoint, tmp_path):
    """10 min of 44.1 kHz stereo (212 MB as float32, what reading it whole would hold):
    its peak memory beyond a 1.5 min warm-up (whole batches through the network) stays
    under 25 MB, the issue's 300 MB for 2 hours scaled to 10 minutes, and in all under
    300 MB."""
    warm, long = tmp_path / "warm.wav", tmp_path / "long.wav"
    _write_noise(warm, 90)
    _write_noise(long, 600, seed=1)
    result = subprocess.run(
        [sys.executable, "-c", MEASURE_PEAK, str(checkpoint), str(warm), str(long)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout)
    assert growth["long"] < 25e6, growth
    assert growth["warm_up"] + growth["long"] < 300e6, growth


# --- file names that are not one line of UTF-8 ------------------------------------------


def test_names_with_newlines_and_non_utf8_bytes_are_escaped_one_line_each(checkpoint, model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    names = [b"a\nnewline.wav", b"back\\slash.wav", b"latin-\xe9\xff.wav", b"plain.wav"]
    for seed, name in enumerate(names):
        sf.write(os.path.join(os.fsencode(folder), name), _clip(30 + seed, 20000).numpy(), SR, format="WAV")
    result = embed_command(checkpoint, [str(folder)], tmp_path / "e.npy", device="cpu", progress=False)
    rows = np.load(tmp_path / "e.npy")
    lines = (tmp_path / "e.txt").read_bytes().decode("utf-8").splitlines()
    assert result.shape == rows.shape and len(lines) == len(rows) == len(names)
    assert [line.rsplit("/", 1)[1] for line in lines] == ["a\\nnewline.wav", "back\\\\slash.wav", "latin-\\xe9\\xff.wav", "plain.wav"]
    paths = [path_from_text(line) for line in lines]
    assert sorted(os.fsencode(p).rsplit(b"/", 1)[1] for p in paths) == sorted(names)
    for row, path in zip(rows, paths):
        np.testing.assert_allclose(row, embed_files(model, [path])[0], rtol=1e-4, atol=1e-5)


def test_an_unreadable_file_with_a_newline_in_its_name_is_named_on_one_line(cli, checkpoint, tmp_path):
    bad = os.path.join(os.fsencode(tmp_path), b"bad\nname\xff.wav")
    with open(bad, "wb") as handle:
        handle.write(b"not audio")
    result = cli("embed", checkpoint, os.fsdecode(bad), "--no-progress")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "bad\\nname\\xff.wav" in lines[0], result.output


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.binary().map(os.fsdecode)))
def test_path_text_is_one_line_of_utf8_and_reversible(name):
    text = path_text(name)
    assert len(text.splitlines()) <= 1 and "\n" not in text
    text.encode("utf-8")  # no lone surrogates left
    assert path_from_text(text) == name
    if name.isprintable() and "\\" not in name:
        assert text == name  # ordinary names are written as they are
