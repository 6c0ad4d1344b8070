"""``--codec flac16``: 16-bit FLAC of the peak-normalized clip, read by every reader."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from data_fixtures import SR, config
from typer.testing import CliRunner

from doppelgen.cli import app
from doppelgen.format import decode_clip, encode_clip, iter_shard_pairs, iter_tar_members, read_manifest, round_trip_bound, shard_name
from doppelgen.publish import rerender as rerender_module
from doppelgen.publish.card import write_card
from doppelgen.publish.cross_platform import DESCRIPTION
from doppelgen.publish.export import export_pairs
from doppelgen.publish.info import describe_dataset
from doppelgen.publish.rerender import compare_pair
from doppelgen.publish.verify import verify_dataset
from doppelgen.recipe import make_recipe
from doppelgen.render.loop import render_dataset
from doppelgen.render.shard_writer import pair_sample
from doppeltrain.data import SharedEpoch, discover, make_loader

STEP = 2.0**-15  # one 16-bit step of a clip divided by its peak


def clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(16000) * 0.3).astype(np.float32)
    tone = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 3.0  # a synth is not bounded to [-1, 1]
    negative_peak = noise.copy()
    negative_peak[100] = -5.0
    return {"noise": noise, "tone": tone, "negative peak": negative_peak, "quiet": noise * 1e-6}


@pytest.mark.parametrize("name", list(clips()))
def test_flac16_round_trip_is_within_2_to_the_minus_15_of_the_peak(name):
    clip = clips()[name]
    peak = float(np.max(np.abs(clip)))
    data, gain = encode_clip(clip, SR, "flac16")
    assert sf.info(io.BytesIO(data)).subtype == "PCM_16" and gain == peak
    decoded, rate = decode_clip(data, gain)
    error = float(np.max(np.abs(decoded.astype(np.float64) - clip)))
    assert rate == SR and round_trip_bound("flac16") == STEP
    assert error <= (STEP + 2.0**-23) * peak  # the bound, plus float32 rounding of decode * gain
    assert error > STEP / 8 * peak  # 16 bits, not 24: 24-bit FLAC rounds 256 times finer
    data24, _ = encode_clip(clip, SR, "flac")
    assert len(data) < 0.8 * len(data24)


@pytest.mark.slow
def test_a_flac16_dataset_is_read_by_every_reader(tmp_path, voice_shards, monkeypatch):
    out = tmp_path / "flac16"
    # voice_shards' recipe (4 x 8 pairs of voice, flac) in 16-bit: the same pairs, coded smaller.
    recipe = make_recipe("voice", n_shards=4, pairs_per_shard=8, codec="flac16")
    render_dataset(recipe, out, batch_size=8, workers=0, progress=False)
    manifest = read_manifest(out)
    assert manifest.codec == "flac16"
    names = [name for name, _ in iter_tar_members(out / shard_name(0))]
    assert names[:3] == ["0000000000.a.flac", "0000000000.b.flac", "0000000000.json"]
    assert all(sf.info(io.BytesIO(data)).subtype == "PCM_16" for name, data in iter_tar_members(out / shard_name(0)) if name.endswith(".flac"))
    for shard in range(4):
        assert (out / shard_name(shard)).stat().st_size < 0.8 * (voice_shards / shard_name(shard)).stat().st_size
        for pair16, pair24 in zip(iter_shard_pairs(out / shard_name(shard)), iter_shard_pairs(voice_shards / shard_name(shard))):
            assert pair16.meta["params"] == pair24.meta["params"] and pair16.meta["gain"] == pair24.meta["gain"]
            for view16, view24, gain in ((pair16.a, pair24.a, pair16.meta["gain"][0]), (pair16.b, pair24.b, pair16.meta["gain"][1])):
                assert np.max(np.abs(view16 - view24)) <= (STEP + 2.0**-21) * gain

    report = verify_dataset(out, rerender=2)
    assert report.ok and report.rerender_mode == "bytes", report.problems
    monkeypatch.setattr(rerender_module, "same_platform", lambda record: False)
    report = verify_dataset(out, rerender=2)
    assert report.ok and report.rerender_mode == DESCRIPTION, report.problems

    assert describe_dataset(out)["recipe"]["codec"] == "flac16"
    assert "16-bit FLAC of the waveform divided by its gain" in write_card(out).read_text()
    assert export_pairs(out, tmp_path / "x", n=1).keys == ["0000000000"]
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "flac16" in info.stdout

    (dataset,) = discover([str(out)], SR)
    batches = list(make_loader(list(dataset.shards), config(), train=False, epoch_ref=SharedEpoch(0)))
    stored = {pair.key: pair for shard in range(4) for pair in iter_shard_pairs(out / shard_name(shard))}
    assert sum(len(batch.keys) for batch in batches) == 32
    for batch in batches:
        for row, key in enumerate(batch.keys):
            assert np.array_equal(batch.a[row].numpy(), stored[key].a) and np.array_equal(batch.b[row].numpy(), stored[key].b)


def shifted(steps: float) -> tuple[dict, dict]:
    """A fresh flac16 pair and the stored one whose audio lies ``steps`` 16-bit steps away
    (the peak itself unchanged, so the gains agree)."""
    rng = np.random.default_rng(1)
    clip = (rng.standard_normal(16000) * 0.2).clip(-0.5, 0.5).astype(np.float32)
    clip[0] = 1.0
    moved = clip.copy()
    moved[1:] += np.float32(steps * STEP)
    params = np.zeros((1, 3, 2), dtype=np.float32)
    return pair_sample(0, 0, clip, clip, params, SR, "flac16"), pair_sample(0, 0, moved, moved, params, SR, "flac16")


def test_16_bit_rounding_lies_under_the_cross_platform_comparison():
    # Two renders a few 16-bit steps apart, each rounded to its own step: the same sound.
    fresh, stored = shifted(4)
    assert compare_pair(fresh, stored, exact=False) == []
    assert [p.split(":")[0] for p in compare_pair(fresh, stored, exact=True)] == ["a.flac", "b.flac"]


def test_render_and_pack_take_codec_flac16_on_the_command_line(tmp_path):
    result = CliRunner().invoke(app, ["render", str(tmp_path / "r"), "--codec", "flac17"])
    assert result.exit_code == 2 and "unknown codec 'flac17': expected one of flac, flac16, wav" in result.stderr
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    sf.write(recordings / "a.wav", (np.sin(np.arange(20000) * 0.03) * 0.4).astype(np.float32), 16000)
    result = CliRunner().invoke(app, ["pack", str(recordings), str(tmp_path / "p"), "--codec", "flac16", "-q"])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "p").codec == "flac16" and verify_dataset(tmp_path / "p").ok
    (pair,) = iter_shard_pairs(tmp_path / "p" / shard_name(0))
    member = next(data for name, data in iter_tar_members(tmp_path / "p" / shard_name(0)) if name.endswith("a.flac"))
    assert sf.info(io.BytesIO(member)).subtype == "PCM_16"
