"""doppelgen pack: recordings -> pair shards in docs/FORMAT.md, the paper's real-data baseline."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from publish_helpers import run_cli
from scipy.signal import resample_poly

from doppelgen.format import MANIFEST_NAME, iter_shard_pairs, read_manifest, shard_name
from doppelgen.pack.packing import PackConfig, PackError, pack_folder
from doppelgen.pack.recordings import Resampler, list_recordings, plan_crops
from doppelgen.publish.verify import verify_dataset

SR = 16000


def tone(rate: int, seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t) * np.linspace(0.2, 1.0, len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Nested recordings at several rates, mono and stereo, one short, two unreadable."""
    root = tmp_path_factory.mktemp("recordings")
    (root / "birds" / "night").mkdir(parents=True)
    sf.write(root / "plain.wav", tone(SR, 3.0, 440), SR)
    stereo = np.stack([tone(44100, 2.5, 300), 0.5 * tone(44100, 2.5, 900)], axis=1)
    sf.write(root / "birds" / "stereo.flac", stereo, 44100, subtype="PCM_24")
    sf.write(root / "birds" / "night" / "owl.ogg", tone(22050, 4.0, 1000), 22050)
    sf.write(root / "short.wav", tone(8000, 0.3, 200), 8000)
    (root / "broken.wav").write_bytes(b"RIFF....not audio")
    (root / "birds" / "empty.flac").write_bytes(b"")
    (root / "notes.txt").write_text("not a recording")
    return root


@pytest.fixture(scope="module")
def packed(recordings, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    pack_folder(recordings, out, PackConfig(pairs_per_shard=3))
    return out


def pairs_of(folder: Path) -> list:
    manifest = read_manifest(folder)
    return [p for s in range(manifest.n_shards) for p in iter_shard_pairs(folder / shard_name(s))]


def source_mono(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1, dtype=np.float64), rate


def expected_crop(path: Path, start_seconds: float) -> np.ndarray:
    """The crop as the whole recording resampled at once would give it."""
    audio, rate = source_mono(path)
    whole = audio if rate == SR else resample_poly(audio, SR // np.gcd(SR, rate), rate // np.gcd(SR, rate))
    start = int(round(start_seconds * SR))
    crop = whole[start : start + SR]
    return np.pad(crop, (0, SR - len(crop)))


def test_listing_is_sorted_relative_and_audio_only(recordings):
    assert list_recordings(recordings) == [
        "birds/empty.flac", "birds/night/owl.ogg", "birds/stereo.flac", "broken.wav", "plain.wav", "short.wav",
    ]


def test_packed_dataset_follows_the_format_and_verifies(packed):
    report = verify_dataset(packed)
    assert report.ok, report.problems
    manifest = read_manifest(packed)
    recipe, record = manifest.recipe, manifest.data["record"]
    assert "synth" not in recipe and recipe["source"]["n_files"] == 6
    assert (recipe["sample_rate"], recipe["duration"], recipe["pairs_per_shard"], recipe["n_shards"]) == (SR, 1.0, 3, 2)
    assert [s["n_pairs"] for s in record["shards"]] == [3, 1]  # the last shard may hold fewer
    assert sorted(s["path"] for s in record["skipped"]) == ["birds/empty.flac", "broken.wav"]
    assert record["n_skipped"] == 2 and all(str(packed) not in s["error"] for s in record["skipped"])


def test_default_pairs_are_one_crop_for_both_views(packed, recordings):
    pairs = pairs_of(packed)
    assert sorted(p.meta["source"] for p in pairs) == ["birds/night/owl.ogg", "birds/stereo.flac", "plain.wav", "short.wav"]
    for pair in pairs:
        assert pair.a.shape == pair.b.shape == (SR,) and pair.sample_rate == SR
        np.testing.assert_array_equal(pair.a, pair.b)
        params = pair.meta["params"]
        assert params["base"] == params["a"] == params["b"] and len(params["a"]) == 1
        assert set(pair.meta) >= {"index", "seed", "gain", "params", "source", "file_index"}


@pytest.mark.parametrize("name", ["plain.wav", "birds/stereo.flac", "birds/night/owl.ogg", "short.wav"])
def test_a_crop_is_the_resampled_mono_recording(packed, recordings, name):
    pair = next(p for p in pairs_of(packed) if p.meta["source"] == name)
    expected = expected_crop(recordings / name, pair.meta["params"]["a"][0])
    np.testing.assert_allclose(pair.a, expected, atol=1e-5)


def test_a_short_recording_is_zero_padded(packed):
    pair = next(p for p in pairs_of(packed) if p.meta["source"] == "short.wav")
    assert pair.meta["params"]["a"] == [0.0]
    assert np.abs(pair.a[: int(0.29 * SR)]).max() > 0.05
    assert not pair.a[int(0.31 * SR) :].any()


def test_temporal_jitter_takes_two_independent_crops(recordings, tmp_path):
    pack_folder(recordings, tmp_path, PackConfig(temporal_jitter=True, seed=5))
    pairs = pairs_of(tmp_path)
    assert any(p.meta["params"]["a"] != p.meta["params"]["b"] for p in pairs)
    for pair in pairs:
        assert pair.meta["params"]["base"] == pair.meta["params"]["a"]
        for view in ("a", "b"):
            expected = expected_crop(recordings / pair.meta["source"], pair.meta["params"][view][0])
            np.testing.assert_allclose(getattr(pair, view), expected, atol=1e-5)


def test_layers_sum_whole_segments_and_renormalize(recordings, tmp_path):
    pack_folder(recordings, tmp_path, PackConfig(n_layers=3))
    for pair in pairs_of(tmp_path):
        starts = pair.meta["params"]["a"]
        assert pair.meta["params"]["b"] == starts and len(starts) == 3
        assert all(float(s).is_integer() for s in starts)  # whole 1 s segments
        mix = sum(expected_crop(recordings / pair.meta["source"], s) for s in starts)
        np.testing.assert_allclose(pair.a, mix / (np.abs(mix).max() + 1e-6), atol=1e-5)
        assert abs(np.abs(pair.a).max() - 1.0) < 1e-5


def test_crop_plans_are_pure_functions_of_the_generator():
    plan = lambda: plan_crops(50_000, SR, np.random.default_rng([7, 3]), temporal_jitter=True, n_layers=1)
    np.testing.assert_array_equal(plan(), plan())
    layered = plan_crops(3 * SR + 10, SR, np.random.default_rng(0), temporal_jitter=False, n_layers=3)
    assert sorted(layered[0].tolist()) == [0, SR, 2 * SR]  # three segments, each once


def test_reading_a_crop_matches_resampling_the_whole_recording(tmp_path):
    audio = np.random.default_rng(1).standard_normal(3 * 44100).astype(np.float32) * 0.1
    sf.write(tmp_path / "noise.wav", audio, 44100, subtype="FLOAT")
    resampler = Resampler(44100, SR)
    whole = resample_poly(audio.astype(np.float64), 160, 441)
    for start in (0, 12_345, resampler.target_length(len(audio)) - SR):
        crop = resampler.read_crop(tmp_path / "noise.wav", start, SR, len(audio))
        np.testing.assert_allclose(crop, whole[start : start + SR], atol=1e-9)


def test_output_does_not_depend_on_worker_processes(recordings, packed, tmp_path):
    pack_folder(recordings, tmp_path, PackConfig(pairs_per_shard=3), workers=2)
    shas = lambda folder: [s.sha256 for s in read_manifest(folder).shards]
    assert shas(tmp_path) == shas(packed)


def test_max_n_takes_the_first_pairs_of_the_same_order(recordings, packed, tmp_path):
    pack_folder(recordings, tmp_path, PackConfig(pairs_per_shard=3, max_n=2))
    assert [p.meta for p in pairs_of(tmp_path)] == [p.meta for p in pairs_of(packed)][:2]
    other_seed = tmp_path / "seed1"
    pack_folder(recordings, other_seed, PackConfig(pairs_per_shard=3, seed=1))
    assert [p.meta for p in pairs_of(other_seed)] != [p.meta for p in pairs_of(packed)]


def test_an_existing_dataset_is_kept_unless_overwrite(recordings, tmp_path):
    pack_folder(recordings, tmp_path, PackConfig(max_n=1))
    with pytest.raises(PackError, match="already holds a dataset"):
        pack_folder(recordings, tmp_path, PackConfig(max_n=2))
    pack_folder(recordings, tmp_path, PackConfig(max_n=2), overwrite=True)
    assert sum(s.n_pairs for s in read_manifest(tmp_path).shards) == 2


def test_a_folder_without_readable_recordings_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.ogg").write_bytes(b"OggS nonsense")
    with pytest.raises(PackError, match="none of the 1 recordings could be read"):
        pack_folder(tmp_path / "in", tmp_path / "out")
    with pytest.raises(PackError, match="no .wav, .flac, .ogg files"):
        pack_folder(tmp_path / "out", tmp_path / "out2")


def test_cli_packs_and_refuses_bad_options_in_one_line(recordings, tmp_path):
    result = run_cli("pack", recordings, tmp_path / "cli", "--n-layers", "2", "--max-n", "3", "--pairs-per-shard", "2", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("3 pairs in 2 shards")
    manifest = json.loads((tmp_path / "cli" / MANIFEST_NAME).read_text())
    assert manifest["recipe"]["n_layers"] == 2 and manifest["recipe"]["max_n"] == 3
    for bad in (["--n-layers", "0"], ["--temporal-jitter", "--n-layers", "2"], ["--codec", "mp3"], ["--max-n", "0"]):
        refused = run_cli("pack", recordings, tmp_path / "bad", *bad)
        assert refused.exit_code == 2 and refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, bad
    assert not (tmp_path / "bad").exists()


def test_the_trainer_discovers_a_packed_dataset(packed):
    from doppeltrain.data import discover_dataset

    info = discover_dataset(str(packed), SR)
    assert info.n_pairs == 4 and [s.n_pairs for s in info.shards] == [3, 1] and info.n_samples == SR


def test_a_file_name_that_is_not_utf8_is_skipped_and_listed(tmp_path):
    """Issue 10 row 11: one such name aborted the whole pack with a UnicodeEncodeError."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "good.wav", tone(SR, 1.5, 440), SR)
    undecodable = os.path.join(os.fsencode(root), b"caf\xe9\xff.wav")
    shutil.copyfile(os.fsencode(root / "good.wav"), undecodable)
    shutil.copyfile(os.fsencode(root / "good.wav"), os.path.join(os.fsencode(root / "sub"), b"\xff.flac"))
    result = run_cli("pack", root, tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 pairs in 1 shards") and "2 unreadable recordings skipped" in result.stdout
    text = (tmp_path / "out" / MANIFEST_NAME).read_text(encoding="utf-8")
    record = json.loads(text)["record"]
    assert [s["path"] for s in record["skipped"]] == ["caf\\xe9\\xff.wav", "sub/\\xff.flac"]
    assert all("not valid UTF-8" in s["error"] for s in record["skipped"]) and record["n_skipped"] == 2
    assert [p.meta["source"] for p in pairs_of(tmp_path / "out")] == ["good.wav"]
    assert verify_dataset(tmp_path / "out").ok


def test_a_folder_of_only_undecodable_names_is_refused_naming_one(tmp_path):
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "x.wav", tone(SR, 1.0, 440), SR)
    shutil.copyfile(os.fsencode(tmp_path / "x.wav"), os.path.join(os.fsencode(tmp_path / "in"), b"\xe9.wav"))
    result = run_cli("pack", tmp_path / "in", tmp_path / "out", "-q")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "none of the 1 recordings could be read (first: \\xe9.wav: file name is not valid UTF-8" in result.stderr
    assert not (tmp_path / "out").exists()


# --- the command line's options do what the README says -------------------------------


def shard_shas(folder: Path) -> list[str]:
    return [s.sha256 for s in read_manifest(folder).shards]


def test_cli_temporal_jitter_draws_two_crops(recordings, tmp_path):
    assert run_cli("pack", recordings, tmp_path / "j", "--temporal-jitter", "--seed", "5", "-q").exit_code == 0
    assert read_manifest(tmp_path / "j").recipe["temporal_jitter"] is True
    pairs = pairs_of(tmp_path / "j")
    assert any(p.meta["params"]["a"] != p.meta["params"]["b"] and not np.array_equal(p.a, p.b) for p in pairs)


def test_cli_seed_is_the_seed_of_the_python_function(recordings, packed, tmp_path):
    assert run_cli("pack", recordings, tmp_path / "s", "--seed", "3", "--pairs-per-shard", "3", "-q").exit_code == 0
    pack_folder(recordings, tmp_path / "api", PackConfig(pairs_per_shard=3, seed=3))
    assert read_manifest(tmp_path / "s").seed == 3
    assert shard_shas(tmp_path / "s") == shard_shas(tmp_path / "api") != shard_shas(packed)


def test_cli_workers_start_decoding_processes_and_keep_the_output(recordings, packed, tmp_path, monkeypatch):
    import concurrent.futures

    started = []

    class CountingPool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, max_workers=None, **kwargs):
            started.append(max_workers)
            super().__init__(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", CountingPool)
    assert run_cli("pack", recordings, tmp_path / "w", "--workers", "2", "--pairs-per-shard", "3", "-q").exit_code == 0
    assert started == [2] and shard_shas(tmp_path / "w") == shard_shas(packed)
    refused = run_cli("pack", recordings, tmp_path / "w-bad", "--workers", "-1", "-q")
    assert refused.exit_code == 2 and refused.stderr == "error: workers must be a whole number from 0 to 1024, got -1\n"


def test_cli_overwrite_replaces_only_with_the_option(recordings, tmp_path):
    out = tmp_path / "o"
    assert run_cli("pack", recordings, out, "--max-n", "3", "--pairs-per-shard", "1", "-q").exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    refused = run_cli("pack", recordings, out, "--max-n", "2", "--pairs-per-shard", "2", "-q")
    assert refused.exit_code == 2 and "already holds a dataset" in refused.stderr and "--overwrite" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run_cli("pack", recordings, out, "--max-n", "2", "--pairs-per-shard", "2", "--overwrite", "-q").exit_code == 0
    manifest = read_manifest(out)
    assert manifest.recipe["max_n"] == 2 and [s.n_pairs for s in manifest.shards] == [2]
    # The old dataset's shards 1 and 2 are gone; what is not a dataset's stays (beside the
    # hidden recipe marker and lock a pack, like a render, claims its folder with).
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == [MANIFEST_NAME, "notes.txt", "pairs-000000.stats.json", "pairs-000000.tar"]
