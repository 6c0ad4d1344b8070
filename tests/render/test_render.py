"""doppelgen render: format conformance, determinism, resume and bad input (issue 2)."""

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from doppelgen import files, storage
from doppelgen.cli import app
from doppelgen.format import (
    decode_clip,
    iter_shard_pairs,
    iter_tar_members,
    read_manifest,
    shard_name,
    stats_name,
)
from doppelgen.recipe import Recipe, RecipeError, make_recipe
from doppelgen.render import shard_writer
from doppelgen.render.kernel import RenderError, redraw_nonfinite, render_pairs
from doppelgen.render.loop import DatasetError, render_dataset
from doppelgen.render.output_claim import LOCK_NAME, RECIPE_MARKER
from doppelgen.render.synths import param_layout

runner = CliRunner()


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every shard and stats file of a dataset (the manifest holds times, so it is left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("pairs-")}


# --- format conformance --------------------------------------------------------------


def test_shards_follow_the_format(voice_shards: Path, voice_recipe: Recipe):
    manifest = read_manifest(voice_shards)
    assert manifest.recipe == voice_recipe.to_dict() and manifest.kind.name == "synthesized"
    record = manifest.data["record"]
    assert {"param_names", "software", "platform", "shards", "created", "render_seconds"} <= set(record)
    assert {"python", "jax", "jaxlib", "synthax", "numpy", "soundfile", "libsndfile", "doppelgangers"} <= set(record["software"])
    assert record["platform"]["backend"] == "cpu"
    n_params = len(record["param_names"])
    assert n_params == len(param_layout(voice_recipe))
    assert [s["name"] for s in record["shards"]] == [shard_name(i) for i in range(4)]
    expected_a, expected_b, expected_params = render_pairs(voice_recipe, range(voice_recipe.n_pairs), batch_size=8)

    for shard, entry in enumerate(record["shards"]):
        path = voice_shards / entry["name"]
        data = path.read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["n_pairs"] == 8 and {"peak", "mean_rms", "silent_fraction", "nonfinite_fraction"} <= set(entry)
        assert (voice_shards / stats_name(shard)).is_file()
        with tarfile.open(path) as archive:
            infos = archive.getmembers()
        assert all(i.mtime == 0 and i.uname == "doppelgen" and i.mode == 0o444 for i in infos)
        indices = list(range(shard * 8, shard * 8 + 8))
        expected_names = [f"{i:010d}.{m}" for i in indices for m in ("a.flac", "b.flac", "json")]
        assert [name for name, _ in iter_tar_members(path)] == expected_names

        for pair in iter_shard_pairs(path):
            i = int(pair.key)
            meta = pair.meta
            assert meta["index"] == i and meta["seed"] == voice_recipe.seed
            assert pair.sample_rate == 16000 and pair.a.shape == pair.b.shape == (16000,)
            assert "layers" not in meta
            for view, waveform, expected in (("a", pair.a, expected_a[i]), ("b", pair.b, expected_b[i])):
                peak = np.abs(expected).max()
                assert np.abs(waveform - expected).max() < 1e-5 * peak, f"pair {i} view {view}"
            params = meta["params"]
            for j, part in enumerate(("base", "a", "b")):
                assert np.array_equal(np.asarray(params[part], np.float32), expected_params[i, 0, j])
                assert len(params[part]) == n_params
            assert min(params["a"] + params["b"]) >= np.float32(voice_recipe.eps) and max(params["a"] + params["b"]) <= 1.0


@pytest.mark.slow
def test_wav_codec_is_exact(tmp_path):
    recipe = make_recipe("voice", n_shards=1, pairs_per_shard=4, codec="wav")
    render_dataset(recipe, tmp_path, batch_size=8, workers=0, progress=False)
    a, b, _ = render_pairs(recipe, range(4), batch_size=8)
    pairs = list(iter_shard_pairs(tmp_path / shard_name(0)))
    assert [p.key for p in pairs] == [f"{i:010d}" for i in range(4)]
    for i, pair in enumerate(pairs):
        assert pair.meta["gain"] == [1.0, 1.0]
        assert np.array_equal(pair.a, a[i]) and np.array_equal(pair.b, b[i])
    # Byte-reproducible too: nothing in a WAV member depends on the clock or the batch.
    time.sleep(1.1)
    render_dataset(recipe, tmp_path / "again", batch_size=3, workers=0, progress=False)
    assert folder_bytes(tmp_path / "again") == folder_bytes(tmp_path)


def test_flac_round_trip_of_loud_and_silent_clips():
    t = np.arange(16000) / 16000
    for clip in (7.5 * np.sin(2 * np.pi * 440 * t), np.zeros(16000), 1e-4 * np.sin(2 * np.pi * 3 * t)):
        data, gain = shard_writer.encode_clip(clip.astype(np.float32), 16000, "flac")
        decoded, rate = decode_clip(data, gain)
        assert rate == 16000 and decoded.shape == clip.shape
        assert np.abs(decoded - clip).max() <= 1e-5 * max(np.abs(clip).max(), 1e-12)


def test_param_layout_names_and_ranges(voice_recipe):
    layout = param_layout(voice_recipe)
    names = [p.name for p in layout]
    assert len(names) == len(set(names))
    attack = layout[names.index("adsr_1/attack")]
    assert (attack.minimum, attack.maximum, attack.curve, attack.symmetric) == (0.0, 2.0, 0.5, False)
    # Voice overrides its mixer's curve per input: noise (the third) gets 0.025.
    assert layout[names.index("mixer/level[2]")].curve == pytest.approx(0.025)
    bigger = param_layout(make_recipe("parametric", synth_args={"sine": 3}))
    smaller = param_layout(make_recipe("parametric", synth_args={"sine": 1}))
    assert len(bigger) > len(smaller)


# --- the doppelgänger draw -----------------------------------------------------------


def test_delta_zero_gives_identical_views_and_positive_delta_distinct_ones(voice_recipe):
    a, b, params = render_pairs(dataclasses.replace(voice_recipe, delta=0.0), range(4), batch_size=8)
    assert np.array_equal(a, b) and np.array_equal(params[:, :, 1], params[:, :, 2])
    a, b, params = render_pairs(voice_recipe, range(4), batch_size=8)
    assert all(not np.array_equal(a[i], b[i]) for i in range(4))
    assert all(not np.array_equal(params[i, 0, 1], params[i, 0, 2]) for i in range(4))
    # Each view differs from its base by delta-scaled noise, clipped to [eps, 1].
    spread = np.std(params[:, 0, 1] - params[:, 0, 0])
    assert 0.1 < spread < 0.3


@pytest.mark.slow
def test_a_pair_depends_only_on_its_index(voice_recipe):
    a, b, params = render_pairs(voice_recipe, range(8), batch_size=8)
    a2, b2, params2 = render_pairs(voice_recipe, [5, 2, 7], batch_size=8)
    assert np.array_equal(a2, a[[5, 2, 7]]) and np.array_equal(params2, params[[5, 2, 7]])
    other_seed = render_pairs(dataclasses.replace(voice_recipe, seed=1), [5], batch_size=8)[0]
    assert not np.array_equal(other_seed[0], a[5])


@pytest.mark.slow
def test_layers_are_independent_voices_averaged(tmp_path):
    import jax
    import jax.numpy as jnp

    from doppelgen.render.kernel import render_views
    from doppelgen.render.synths import build_synth

    recipe = make_recipe("voice", n_layers=2, n_shards=1, pairs_per_shard=2)
    a, b, params = render_pairs(recipe, range(2), batch_size=2)
    assert params.shape[:3] == (2, 2, 3)
    assert not np.array_equal(params[:, 0, 0], params[:, 1, 0])
    synth = build_synth(recipe)
    render_one_layer = jax.jit(lambda views: render_views(synth, views))
    layer_a = [np.asarray(render_one_layer(jnp.asarray(params[:, [layer]]))[0]) for layer in range(2)]
    np.testing.assert_allclose(a, (layer_a[0] + layer_a[1]) / 2, atol=1e-5)
    render_dataset(recipe, tmp_path, batch_size=2, workers=0, progress=False)
    meta = next(iter_shard_pairs(tmp_path / shard_name(0))).meta
    assert len(meta["layers"]) == 2 and meta["params"] == meta["layers"][0]


def test_non_finite_renders_are_redrawn_with_the_next_attempt():
    calls = []

    def flaky_kernel(indices, attempts):
        calls.append(attempts.copy())
        n = len(indices)
        a = np.tile((indices * 10 + attempts).astype(np.float32)[:, None], (1, 4))
        a[(indices % 3 == 0) & (attempts < 2)] = np.nan  # index 0 and 3 fail twice
        a[(indices == 4) & (attempts == 0)] = np.inf
        return np.zeros((n, 1, 3, 2), np.float32), a, a.copy()

    batch = redraw_nonfinite(flaky_kernel, np.arange(6))
    assert np.isfinite(batch.a).all()
    assert batch.redraws.tolist() == [2, 0, 0, 2, 1, 0]
    # Each pair's audio comes from its own final attempt, not from its batch-mates'.
    assert batch.a[:, 0].tolist() == [2, 10, 20, 32, 41, 50]
    assert len(calls) == 3

    def always_nan(indices, attempts):
        a = np.full((len(indices), 4), np.nan, np.float32)
        return np.zeros((len(indices), 1, 3, 2), np.float32), a, a

    with pytest.raises(RenderError, match="pair 0"):
        redraw_nonfinite(always_nan, np.arange(2), max_attempts=3)


# --- determinism of the dataset ------------------------------------------------------


def test_same_bytes_whatever_batch_size_workers_and_shard_range(tmp_path, voice_shards, voice_recipe):
    expected = folder_bytes(voice_shards)
    render_dataset(voice_recipe, tmp_path / "workers", batch_size=3, workers=2, progress=False)
    assert folder_bytes(tmp_path / "workers") == expected
    ranged = tmp_path / "ranges"
    first = render_dataset(voice_recipe, ranged, batch_size=3, workers=0, shard_range="2:4", progress=False)
    assert first.rendered == [2, 3] and not first.manifest_written
    second = render_dataset(voice_recipe, ranged, batch_size=8, workers=1, shard_range=":2", progress=False)
    assert second.rendered == [0, 1] and second.manifest_written
    assert folder_bytes(ranged) == expected
    assert read_manifest(ranged).shards == read_manifest(voice_shards).shards


def test_rerun_renders_only_missing_shards(tmp_path, voice_shards, voice_recipe):
    shutil.copytree(voice_shards, tmp_path / "d")
    out = tmp_path / "d"
    (out / stats_name(1)).unlink()  # a kill between the tar and its stats file
    (out / shard_name(2)).write_bytes(b"partial")  # a tar without stats is not complete
    (out / stats_name(2)).unlink()
    killed_writer = files.temporary_path(out / shard_name(3)).name.rsplit("-", 1)[0] + "-999999999"
    (out / killed_writer).write_bytes(b"junk")  # a killed writer's temporary on this host
    other_host = out / f".{shard_name(3)}.tmp-another-machine-12"
    other_host.write_bytes(b"in flight")  # another machine rendering into the same folder
    (out / "manifest.json").unlink()
    summary = render_dataset(voice_recipe, out, batch_size=8, workers=0, progress=False)
    assert summary.rendered == [1, 2] and summary.skipped == [0, 3] and summary.manifest_written
    assert folder_bytes(out) == folder_bytes(voice_shards)
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name not in (RECIPE_MARKER, LOCK_NAME)]
    assert hidden == [other_host.name]


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_bytes_of_a_clean_run(tmp_path):
    args = ["--shards", "12", "--pairs-per-shard", "8", "--batch-size", "1", "--workers", "0", "-q"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "doppelgen", "render"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, str(killed), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / stats_name(0)).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert not (killed / "manifest.json").exists()
    done_before = [p.name for p in killed.glob("pairs-*.stats.json")]
    assert 1 <= len(done_before) < 12

    resumed = subprocess.run([*command, str(killed), *args], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_before)} already complete" in resumed.stdout
    clean = tmp_path / "clean"
    render_dataset(make_recipe("voice", n_shards=12, pairs_per_shard=8), clean, batch_size=8, workers=0, progress=False)
    assert folder_bytes(killed) == folder_bytes(clean)


def test_full_disk_keeps_finished_shards_and_resumes(tmp_path, voice_shards, voice_recipe, monkeypatch):
    real_write = storage.write_atomic  # every local write of a shard goes through LocalStore.put

    def write_until_full(path, data):
        if path.name == shard_name(2):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(storage, "write_atomic", write_until_full)
    out = tmp_path / "full"
    args = ["render", str(out), "--shards", "4", "--pairs-per-shard", "8", "--batch-size", "8", "--workers", "0", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "No space left on device" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.glob("*.stats.json")) == [stats_name(0), stats_name(1)]
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(storage, "write_atomic", real_write)
    assert runner.invoke(app, args).exit_code == 0
    assert folder_bytes(out) == folder_bytes(voice_shards)


# --- the command line ----------------------------------------------------------------


@pytest.mark.slow
def test_cli_renders_from_a_recipe_file_with_overrides(tmp_path, voice_shards, voice_recipe):
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps(dataclasses.replace(voice_recipe, delta=0.5).to_dict()))
    out = tmp_path / "out"
    result = runner.invoke(app, ["render", str(out), "--manifest", str(recipe_file), "--delta", "0.25", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    assert "4 shards rendered" in result.stdout
    assert folder_bytes(out) == folder_bytes(voice_shards)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--synth", "piano"], "unknown synth 'piano'"),
        (["--delta", "-0.1"], "delta must lie in [0, 4], got -0.1"),
        (["--shards", "0"], "n_shards must lie in [1, 100000], got 0"),
        (["--shard-range", "3:1"], "bad shard range '3:1'"),
        (["--shard-range", "0:9", "--shards", "4"], "bad shard range '0:9'"),
        (["--codec", "mp3"], "unknown codec 'mp3'"),
        (["--synth", "voice", "--synth-arg", "sine=3"], "synth 'voice' takes no arguments"),
        (["--synth", "parametric", "--synth-arg", "sine=3", "--synth-arg", "drum=1"], "unknown parametric synth arguments: drum"),
        (["--synth", "parametric", "--synth-arg", "sine"], "--synth-arg takes NAME=VALUE"),
        (["--batch-size", "0"], "batch size must be >= 1"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["render", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[len('error: '):]}"]
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_refuses_unwritable_output_and_missing_recipe(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["render", str(blocker / "shards")])
    assert result.exit_code == 2 and "cannot write to" in result.stderr
    result = runner.invoke(app, ["render", str(tmp_path / "x"), "--manifest", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "no such recipe file" in result.stderr


def test_a_folder_of_another_recipe_is_refused_unless_overwrite(tmp_path, voice_shards, voice_recipe):
    out = tmp_path / "d"
    shutil.copytree(voice_shards, out)
    other = dataclasses.replace(voice_recipe, delta=0.0)
    with pytest.raises(DatasetError, match="different dataset recipe"):
        render_dataset(other, out, workers=0, progress=False)
    assert folder_bytes(out) == folder_bytes(voice_shards)  # nothing touched
    summary = render_dataset(other, out, batch_size=8, workers=0, overwrite=True, progress=False)
    assert summary.rendered == [0, 1, 2, 3]
    assert read_manifest(out).recipe["delta"] == 0.0


def test_compiled_kernels_go_to_the_persistent_cache(voice_recipe, caplog):
    import logging
    import re

    import jax

    from doppelgen.render import kernel
    from doppelgen.render.jax_runtime import default_cache_dir

    cache = default_cache_dir()
    kernel._kernel_for.cache_clear()  # a new jitted kernel: JAX must compile or load it
    with caplog.at_level(logging.DEBUG, logger="jax._src.compiler"):
        render_pairs(voice_recipe, range(2), batch_size=8)  # the session fixture's batch shape
    # This kernel's own entry, found (a hit) or written (a miss): not just any file an
    # earlier run left in the cache.
    pattern = re.compile(r"(?:cache hit for|Writing) '?jit__lambda'? .*with key '([^']+)'")
    keys = [m.group(1) for m in (pattern.search(r.getMessage()) for r in caplog.records) if m]
    assert keys, [r.getMessage()[:120] for r in caplog.records]
    assert all((cache / f"{key}-cache").is_file() for key in keys)
    assert jax.config.jax_compilation_cache_dir == str(cache)
    assert jax.config.jax_default_prng_impl == "threefry2x32" and jax.config.jax_threefry_partitionable


def test_the_attempt_number_changes_the_real_kernels_draw(voice_recipe):
    from doppelgen.render.kernel import pair_kernel

    render = pair_kernel(voice_recipe)
    indices = np.arange(8)
    first = render(indices, np.zeros(8, np.uint32))
    second = render(indices, np.ones(8, np.uint32))
    for row in range(8):
        assert not np.array_equal(first[0][row], second[0][row])  # another parameter draw
        assert not np.array_equal(first[1][row], second[1][row])  # and so other audio
    # Each row follows its own attempt number, not its batch-mates'.
    mixed = render(indices, np.array([0, 1] * 4, np.uint32))
    for row in range(8):
        expected = (first, second)[row % 2]
        assert all(np.array_equal(part[row], expected_part[row]) for part, expected_part in zip(mixed, expected))


def test_recipes_share_a_kernel_exactly_when_the_fields_it_uses_agree(voice_recipe):
    from doppelgen.render.kernel import kernel_key

    same = [dataclasses.replace(voice_recipe, seed=5), dataclasses.replace(voice_recipe, delta=0.5),
            dataclasses.replace(voice_recipe, n_shards=9, pairs_per_shard=3), dataclasses.replace(voice_recipe, codec="wav")]
    assert all(kernel_key(recipe) == kernel_key(voice_recipe) for recipe in same)
    other = [dataclasses.replace(voice_recipe, eps=1e-3), dataclasses.replace(voice_recipe, n_layers=2),
             dataclasses.replace(voice_recipe, duration=0.5), make_recipe("voicefm", n_shards=4, pairs_per_shard=8)]
    assert all(kernel_key(recipe) != kernel_key(voice_recipe) for recipe in other)


def test_synth_args_come_from_the_registry_and_the_command_line():
    from doppelgen.cli import parse_synth_args, recipe_from_options

    overrides = dict(synth="parametric", delta=None)
    recipe = recipe_from_options(None, overrides, parse_synth_args(["sine=3", "fm_sine=0"]))
    assert recipe.synth.args == {"sine": 3, "square_saw": 2, "fm_sine": 0, "fm_square_saw": 1}
    assert recipe_from_options(None, dict(synth="voice"), {}).synth.args == {}
    for texts, message in [(["sine=x"], "must be a whole number"), (["=3"], "NAME=VALUE")]:
        with pytest.raises(RecipeError, match=message):
            parse_synth_args(texts)


def test_recipe_values_are_canonical_and_checked(voice_recipe):
    as_dict = voice_recipe.to_dict()
    same = Recipe.from_dict({**as_dict, "duration": 1, "n_shards": 4.0, "delta": 0.25})
    assert same == voice_recipe and same.to_dict() == as_dict
    for field, value, message in [
        ("n_shards", "4", "must be a number"),
        ("n_shards", 4.5, "whole number"),
        ("duration", None, "must be float"),
        ("seed", True, "must be int"),
        ("duration", 0.33333, "not a whole number of samples"),
        ("codec", 3, "must be a string"),
        ("n_layers", float("nan"), "must be finite"),
        ("volume", 1, "unknown recipe fields: volume"),
    ]:
        with pytest.raises(RecipeError, match=message):
            Recipe.from_dict({**as_dict, field: value})
    with pytest.raises(RecipeError, match="PRNG"):
        Recipe.from_dict({**as_dict, "rng": "philox"})


def test_encoding_workers_fit_in_shared_memory(tmp_path, voice_recipe, voice_shards, monkeypatch):
    from doppelgen.render import shard_runs
    from doppelgen.render.encoding_workers import SlotLayout

    slot = SlotLayout(rows=8, samples=16000, param_shape=(1, 3, len(param_layout(voice_recipe)))).nbytes
    monkeypatch.setattr(shard_runs, "shared_memory_room", lambda: 2 * slot + 1)  # one worker's worth
    render_dataset(voice_recipe, tmp_path / "tight", batch_size=8, workers=2, progress=False)
    assert folder_bytes(tmp_path / "tight") == folder_bytes(voice_shards)
    monkeypatch.setattr(shard_runs, "shared_memory_room", lambda: slot)
    with pytest.raises(DatasetError, match="not enough shared memory"):
        render_dataset(voice_recipe, tmp_path / "none", batch_size=8, workers=2, progress=False)


@pytest.mark.parametrize("args", [["render", "x", "--shards", "many"], ["render", "x", "--bogus"], ["verify"]])
def test_usage_errors_are_one_line(args, capsys):
    from doppelgen.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("duration", None, "recipe field duration must be a number, got None"),
        ("n_shards", "4", "recipe field n_shards must be a whole number, got '4'"),
        ("sample_rate", 0, "sample_rate must lie in [1000, 192000], got 0"),
        ("pairs_per_shard", True, "recipe field pairs_per_shard must be a whole number, got True"),
    ],
)
def test_readers_refuse_a_manifest_with_a_bad_recipe_field(tmp_path, voice_shards, field, value, message):
    from doppelgen.format import FormatError

    manifest = json.loads((voice_shards / "manifest.json").read_text())
    manifest["recipe"][field] = value
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatError) as caught:
        read_manifest(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'manifest.json'}: {message}"
