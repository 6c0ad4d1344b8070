"""The training input pipeline on hostile datasets (issue 10): nothing read from a dataset
reaches a shell or a path outside it, manifests cannot make epochs longer than what is on
disk, and a bad sample is skipped, counted and named, never the end of an epoch."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from data_fixtures import (
    ALL_KEYS,
    SR,
    all_shards,
    config,
    copy_dataset,
    edit_manifest,
    edit_sample_json,
    epoch_keys,
    rewrite_shard,
)

from doppelgen.format import float_wav
from doppeltrain.cli import main
from doppeltrain.data import DataError, SharedEpoch, discover, make_loader
from doppeltrain.data.datasets import member_url


def rename_shard_in_manifest(folder, index: int, name: str) -> None:
    edit_manifest(folder, lambda manifest: manifest["record"]["shards"][index].update(name=name))


def assert_one_line(error: pytest.ExceptionInfo, folder=None) -> None:
    """One line, naming the dataset when ``folder`` is given. (The wording is left free:
    doppelgen.format's manifest checks may refuse the same data first.)"""
    assert "\n" not in str(error.value) and "\r" not in str(error.value)
    assert folder is None or str(folder) in str(error.value)


# --- names: no shell, no path outside the dataset -------------------------------------


def test_a_shard_name_never_reaches_a_shell(voice_shards, tmp_path, capsys):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    marker = tmp_path / "MARKER"
    rename_shard_in_manifest(folder, 1, f"pairs-000001.tar; touch {marker}; echo /pairs-000001.tar")
    url = f"pipe:cat {folder}/{{name}}"
    with pytest.raises(DataError) as error:
        discover([url], SR)
    assert_one_line(error, folder)
    assert not marker.exists()
    # Through the command line: one line, exit 2, and still nothing ran.
    status = main(["fit", url, "--runs-dir", str(tmp_path / "runs"), "--model", "small", "--width", "8",
                   "--batch-size", "4", "--workers", "0", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: ") and str(folder) in err[0]
    assert not marker.exists()
    # The template is filled with manifest.json and shard names only, whoever asks.
    for name in ("pairs-000001.tar; touch MARKER", "$(touch MARKER)", "../pairs-000001.tar", "x"):
        with pytest.raises(DataError, match="refusing to open"):
            member_url(url, name)


@pytest.mark.parametrize(
    "name",
    [
        "../other/pairs-000000.tar",  # beside the dataset
        "OTHER/pairs-000000.tar",  # an absolute path (OTHER is replaced below)
        "sub/pairs-000000.tar",
        "pairs-000000.tar\n",
        "pairs-000000.tar/",
        "pairs-\u0660\u0660\u0660\u0660\u0660\u0660.tar",  # Arabic-Indic digits are digits to \\d
        "pairs-0000000.tar",
        7,
    ],
)
def test_shard_names_with_a_path_or_other_characters_refuse_the_dataset(voice_shards, tmp_path, name):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    other = copy_dataset(voice_shards, tmp_path / "other")  # a real tar outside, that must not be read
    if isinstance(name, str) and name.startswith("OTHER"):
        name = name.replace("OTHER", str(other))
    rename_shard_in_manifest(folder, 0, name)
    with pytest.raises(DataError) as error:
        discover([str(folder)], SR)
    assert_one_line(error, folder)


def test_a_shard_listed_twice_refuses_the_dataset(voice_shards, tmp_path):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    rename_shard_in_manifest(folder, 1, "pairs-000000.tar")
    with pytest.raises(DataError) as error:
        discover([str(folder)], SR)
    assert_one_line(error, folder)


# --- sizes: bounded by what is on disk -------------------------------------------------


def test_pairs_claimed_beyond_the_recipe_refuse_the_dataset(voice_shards, tmp_path):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    edit_manifest(folder, lambda manifest: manifest["record"]["shards"][2].update(n_pairs=10**12))
    for location in (str(folder), f"file://{folder}"):
        with pytest.raises(DataError) as error:
            discover([location], SR)
        assert_one_line(error, folder)


def test_a_shard_claiming_more_pairs_than_its_file_holds_is_left_out(voice_shards, tmp_path, caplog):
    folder = copy_dataset(voice_shards, tmp_path / "data")

    def claim(pairs):
        def edit(manifest):
            manifest["recipe"]["pairs_per_shard"] = pairs  # the recipe agrees: only the tar's size can tell
            manifest["record"]["shards"][2]["n_pairs"] = pairs
        return edit

    edit_manifest(folder, claim(10**12))
    with pytest.raises(DataError, match="pairs_per_shard must lie in") as error:  # past any recipe's bounds
        discover([str(folder)], SR)
    assert_one_line(error, folder)
    edit_manifest(folder, claim(10_000))  # a shard size a recipe may have
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        (info,) = discover([str(folder)], SR)
    assert info.n_pairs == 24 and "pairs-000002.tar" not in {shard.url[-16:] for shard in info.shards}
    assert "pairs-000002.tar holds 10000 pairs, more than its" in caplog.text
    loader = make_loader(list(info.shards), config(), train=True, epoch_ref=SharedEpoch(0))
    assert len(loader) == 6 and len(epoch_keys(loader, 0)) == 24  # one pass: what is on disk
    for index in range(4):
        (folder / f"pairs-00000{index}.tar").write_bytes(b"not a tar" * 100)  # 900 bytes: too small for 8 pairs
    with pytest.raises(DataError, match="no readable pairs \\(every shard is empty, incomplete or too small") as error:
        discover([str(folder)], SR)
    assert_one_line(error, folder)


@pytest.mark.parametrize("duration", [math.nan, math.inf, 1e9, -1.0])
def test_an_absurd_clip_duration_refuses_the_dataset(voice_shards, tmp_path, duration):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    edit_manifest(folder, lambda manifest: manifest["recipe"].update(duration=duration))
    with pytest.raises(DataError, match="duration") as error:
        discover([str(folder)], SR)
    assert_one_line(error, folder)


# --- samples: skipped, counted and named ---------------------------------------------


def read_validation(folder, workers: int = 0):
    """Every pair of ``folder`` once (validation order), and the loader."""
    loader = make_loader(all_shards(folder), config(workers=workers), train=False, epoch_ref=SharedEpoch(0))
    batches = list(loader)
    return batches, [key for batch in batches for key in batch.keys], loader


@pytest.mark.parametrize("workers", [0, 2])
def test_a_deeply_nested_sample_json_is_skipped_and_named(voice_shards, tmp_path, caplog, workers):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    edit_sample_json(folder / "pairs-000001.tar", "0000000010", lambda meta: b"[" * 100_000)
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        _, keys, val = read_validation(folder, workers)
        train = make_loader(all_shards(folder), config(workers=workers), train=True, epoch_ref=SharedEpoch(0))
        train_keys = epoch_keys(train, 0)  # the epoch still ends with its full batches
    assert sorted(keys + ["0000000010"]) == ALL_KEYS and val.skipped == 1
    # 31 readable pairs make 8 batches of 4 by reading one again: the bad one is met again too
    assert len(train_keys) == 32 and "0000000010" not in train_keys and train.skipped >= 1
    if workers == 0:  # worker processes log through their own handlers
        assert "pairs-000001.tar: sample 0000000010:" in caplog.text


def test_insane_gains_and_non_finite_audio_are_skipped_and_named(voice_shards, tmp_path, caplog):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    edit_sample_json(folder / "pairs-000000.tar", "0000000003", lambda meta: {**meta, "gain": [math.nan, 1.0]})
    edit_sample_json(folder / "pairs-000002.tar", "0000000020", lambda meta: {**meta, "gain": [1.0, 1e39]})
    edit_sample_json(folder / "pairs-000002.tar", "0000000021", lambda meta: {**meta, "gain": [-1.0, 1.0]})
    edit_sample_json(folder / "pairs-000002.tar", "0000000022", lambda meta: {**meta, "gain": [math.inf, 1.0]})
    nan_clip = np.zeros(SR, np.float32)
    nan_clip[100] = np.nan
    rewrite_shard(  # a float WAV (the exact codec) may hold NaN whatever its gain
        folder / "pairs-000003.tar",
        lambda members: [
            ("0000000025.a.wav", float_wav(nan_clip, SR)) if name == "0000000025.a.flac" else (name, data)
            for name, data in members
        ],
    )
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        batches, keys, val = read_validation(folder)
    bad = ["0000000003", "0000000020", "0000000021", "0000000022", "0000000025"]
    assert sorted(keys + bad) == ALL_KEYS and val.skipped == 5
    assert all(batch.a.isfinite().all() and batch.b.isfinite().all() for batch in batches)
    for shard, key in [("000000", "0000000003"), ("000002", "0000000020"), ("000002", "0000000021"),
                       ("000002", "0000000022"), ("000003", "0000000025")]:
        assert f"pairs-{shard}.tar: sample {key}:" in caplog.text


def test_key_index_mismatches_and_repeated_pairs_are_skipped_with_a_warning(voice_shards, tmp_path, caplog):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    shard = folder / "pairs-000001.tar"
    edit_sample_json(shard, "0000000009", lambda meta: {**meta, "index": 10})
    # Pair 12 again at the end of its shard, after other pairs.
    rewrite_shard(shard, lambda members: members + [(name, data) for name, data in members if name.startswith("0000000012.")])
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        _, keys, val = read_validation(folder)
    assert sorted(keys + ["0000000009"]) == ALL_KEYS  # 12 once, 9 not at all
    assert val.skipped == 2
    assert "pairs-000001.tar: sample 0000000009: its JSON says index 10, not the key's" in caplog.text
    assert "pairs-000001.tar: sample 0000000012 appears again; the repeat is skipped" in caplog.text


def test_a_tar_whose_name_only_resembles_the_shards_is_not_read(voice_shards, tmp_path, caplog):
    folder = copy_dataset(voice_shards, tmp_path / "data")
    (folder / "pairs-000001.tar").rename(folder / "pairs-000001.tar\n")  # its stats file still vouches for it
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        (info,) = discover([str(folder)], SR)
    assert [shard.url[-16:] for shard in info.shards] == ["pairs-000000.tar", "pairs-000002.tar", "pairs-000003.tar"]
    assert "pairs-000001.tar is in the manifest but not complete on disk; skipped" in caplog.text
