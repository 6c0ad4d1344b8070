"""The training input pipeline on shards rendered by doppelgen (the session's `voice_shards`)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from data_fixtures import (
    ALL_KEYS,
    SR,
    all_shards,
    assert_batches_equal,
    config,
    copy_dataset,
    edit_manifest,
    epoch_keys,
    flip_member_bytes,
    rewrite_shard,
    shard_keys,
)

from doppelgen.format import FormatError, decode_clip, encode_clip, iter_shard_pairs
from doppeltrain.config import TrainConfig
from doppeltrain.data import (
    DataError,
    SharedEpoch,
    discover,
    make_loader,
    rank_shards,
    shard_order,
    split_shards,
    worker_batch_counts,
)

# --- datasets --------------------------------------------------------------------------


def test_discover_reads_shards_and_sizes_from_the_manifest(voice_shards):
    (info,) = discover([str(voice_shards)], SR)
    assert [Path(shard.url).name for shard in info.shards] == [f"pairs-00000{i}.tar" for i in range(4)]
    assert [shard.n_pairs for shard in info.shards] == [8] * 4 and info.n_pairs == 32
    assert info.n_samples == SR and info.sample_rate == SR


def test_incomplete_shards_are_ignored(voice_shards, tmp_path):
    folder = copy_dataset(voice_shards, tmp_path / "partial")
    (folder / "pairs-000003.stats.json").unlink()  # a shard whose writer did not finish
    (info,) = discover([str(folder)], SR)
    assert len(info.shards) == 3 and info.n_pairs == 24


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such dataset folder"),
        ("empty", "no complete shards"),
        ("version", "unknown format version 2"),
        ("sample_rate", "sample rate 16000 Hz, but the model is built for 22050 Hz"),
        ("no_manifest", "no manifest.json"),
    ],
)
def test_unusable_datasets_are_one_line_errors(voice_shards, tmp_path, case, message):
    folder, rate = tmp_path / "data", SR
    if case == "empty":
        folder.mkdir()
    elif case == "version":
        copy_dataset(voice_shards, folder)
        edit_manifest(folder, lambda manifest: manifest["recipe"].update(format=2))
    elif case == "sample_rate":
        copy_dataset(voice_shards, folder)
        rate = 22050
    elif case == "no_manifest":
        copy_dataset(voice_shards, folder)
        (folder / "manifest.json").unlink()
    with pytest.raises(DataError, match=message) as error:
        discover([str(voice_shards), str(folder)], rate)
    assert "\n" not in str(error.value)


def test_pipe_urls_read_the_manifest_and_the_shards(voice_shards):
    url = f"pipe:cat {voice_shards}/{{name}}"
    (info,) = discover([url], SR)
    assert info.shards[0].url == f"pipe:cat {voice_shards}/pairs-000000.tar" and info.n_pairs == 32
    loader = make_loader(list(info.shards), config(), train=True, epoch_ref=SharedEpoch(0))
    local = make_loader(all_shards(voice_shards), config(), train=True, epoch_ref=SharedEpoch(0))
    assert epoch_keys(loader, 0) == epoch_keys(local, 0)
    with pytest.raises(DataError, match="placeholder"):
        discover([f"pipe:cat {voice_shards}/manifest.json"], SR)


def test_file_urls_give_the_batches_of_the_local_folder(voice_shards):
    (info,) = discover([f"file://{voice_shards}"], SR)
    assert [shard.url for shard in info.shards] == [f"file://{voice_shards}/pairs-00000{i}.tar" for i in range(4)]
    assert info.n_pairs == 32
    assert_batches_equal(info.shards, voice_shards, 8)
    # A file:// URL is a folder (doppelgen.storage): listed like one, refused like one.
    with pytest.raises(DataError, match="nowhere: no such dataset folder") as error:
        discover([f"file://{voice_shards}/nowhere"], SR)
    assert "\n" not in str(error.value)


def test_mixed_datasets_are_read_together(voice_shards):
    infos = discover([str(voice_shards), f"pipe:cat {voice_shards}/{{name}}"], SR)
    train, val = split_shards(infos, 0, seed=0)
    loader = make_loader(train, config(batch_size=8), train=True, epoch_ref=SharedEpoch(0))
    assert len(loader) == 8
    assert sorted(epoch_keys(loader, 0)) == sorted(ALL_KEYS * 2)


@pytest.fixture(scope="module")
def other_recipe_shards(tmp_path_factory) -> Path:
    """A second voice dataset of another delta and seed: 2 shards of 4 pairs."""
    from doppelgen.recipe import make_recipe
    from doppelgen.render.loop import render_dataset

    out = tmp_path_factory.mktemp("other-recipe")
    render_dataset(make_recipe("voice", n_shards=2, pairs_per_shard=4, delta=0.05, seed=7), out, batch_size=8,
                   workers=0, progress=False)
    return out


def test_datasets_of_different_recipes_mix_in_one_run(voice_shards, other_recipe_shards, tmp_path):
    folders = (voice_shards, other_recipe_shards)
    infos = discover([str(folder) for folder in folders], SR)
    assert infos[0].manifest.seed != infos[1].manifest.seed
    train, val = split_shards(infos, 1, seed=0)
    # One validation shard held out per dataset, the rest trains.
    assert sorted(Path(s.url).parent for s in val) == sorted(folders)
    assert len(train) == 3 + 1 and sum(s.n_pairs for s in train) == 24 + 4
    # Each row is a pair of the dataset whose shard it came from: the two recipes render
    # the same keys into different audio, so the audio says which dataset a row is from.
    rendered = {
        folder: {pair.key: pair for shard in sorted(folder.glob("pairs-*.tar")) for pair in iter_shard_pairs(shard)}
        for folder in folders
    }

    def pairs_read(shards, train_loader):
        loader = make_loader(shards, config(workers=2), train=train_loader, epoch_ref=SharedEpoch(0))
        read = []
        for batch in loader:
            for row, key in enumerate(batch.keys):
                (folder,) = [f for f in folders if key in rendered[f] and np.array_equal(batch.a[row].numpy(), rendered[f][key].a)]
                assert np.array_equal(batch.b[row].numpy(), rendered[folder][key].b)
                read.append((folder, key))
        return sorted(read)

    expected = {
        split: sorted((Path(shard.url).parent, pair.key) for shard in shards for pair in iter_shard_pairs(shard.url))
        for split, shards in (("train", train), ("val", val))
    }
    assert pairs_read(train, True) == expected["train"]  # both datasets read, each pair once
    assert pairs_read(val, False) == expected["val"]
    # Clips of different lengths cannot share a batch: refused before anything is read.
    shorter = copy_dataset(other_recipe_shards, tmp_path / "shorter")
    edit_manifest(shorter, lambda manifest: manifest["recipe"].update(duration=0.5))
    with pytest.raises(DataError, match=r"^datasets differ in clip length \(8000, 16000 samples\)$"):
        discover([str(voice_shards), str(shorter)], SR)


# --- validation split ------------------------------------------------------------------


def test_split_holds_out_at_least_one_shard_per_dataset_deterministically(voice_shards, tmp_path):
    infos = discover([str(voice_shards)], SR)
    train, val = split_shards(infos, 0.1, seed=0)
    assert len(val) == 1 and len(train) == 3  # 10% of 4 rounds to 0: at least one
    assert sorted(s.url for s in train + val) == sorted(s.url for s in infos[0].shards)
    assert split_shards(infos, 0.1, seed=0) == (train, val)
    assert len(split_shards(infos, 2, seed=0)[1]) == 2  # a count
    assert len(split_shards(infos, 0.5, seed=0)[1]) == 2  # a fraction
    assert split_shards(infos, 0, seed=0)[1] == []
    assert len({split_shards(infos, 1, seed=seed)[1][0].url for seed in range(8)}) > 1
    # The split follows the recipe, not the path: a moved copy is split the same way.
    moved = discover([str(copy_dataset(voice_shards, tmp_path / "moved"))], SR)
    assert [Path(s.url).name for s in split_shards(moved, 1, seed=0)[1]] == [Path(s.url).name for s in val]


def test_a_single_shard_dataset_keeps_it_for_training(voice_shards, tmp_path, caplog):
    folder = copy_dataset(voice_shards, tmp_path / "one")
    for index in (1, 2, 3):
        (folder / f"pairs-00000{index}.stats.json").unlink()
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        train, val = split_shards(discover([str(folder)], SR), 0.1, seed=0)
    assert len(train) == 1 and val == []
    assert "none held out for validation" in caplog.text


# --- order -----------------------------------------------------------------------------


def test_shard_order_is_fixed_per_epoch_and_changes_across_epochs(voice_shards):
    shards = all_shards(voice_shards)
    assert shard_order(shards, 0, 3) == shard_order(shards, 0, 3)
    orders = {tuple(s.url for s in shard_order(shards, 0, epoch)) for epoch in range(6)}
    assert len(orders) > 1
    assert sorted(shard_order(shards, 0, 5), key=lambda s: s.url) == shards


def test_loader_order_is_a_function_of_seed_and_epoch(voice_shards):
    shards = all_shards(voice_shards)
    loader = make_loader(shards, config(), train=True, epoch_ref=SharedEpoch(0))
    epochs = [epoch_keys(loader, epoch) for epoch in range(3)]
    for keys in epochs:
        assert sorted(keys) == ALL_KEYS  # every pair once per epoch
    assert epochs[0] != epochs[1] != epochs[2]
    # A fresh loader (a resumed run) at epoch 2 reads what the first one read at epoch 2.
    resumed = make_loader(shards, config(), train=True, epoch_ref=SharedEpoch(2))
    assert epoch_keys(resumed, 2) == epochs[2]
    other_seed = make_loader(shards, config(seed=1), train=True, epoch_ref=SharedEpoch(0))
    assert epoch_keys(other_seed, 0) != epochs[0]


def test_worker_processes_give_the_same_order_every_time(voice_shards):
    shards, _ = split_shards(discover([str(voice_shards)], SR), 1, seed=0)  # 3 shards: 16 and 8 pairs per worker
    first = make_loader(shards, config(workers=2), train=True, epoch_ref=SharedEpoch(0))
    assert first.num_workers == 2 and len(first) == 6
    keys = [epoch_keys(first, epoch) for epoch in (0, 1)]
    assert sorted(keys[0]) == shard_keys(shards) == sorted(keys[1])  # every pair once
    assert keys[0] != keys[1]
    again = make_loader(shards, config(workers=2), train=True, epoch_ref=SharedEpoch(0))
    for batch in again:  # leaving an epoch early stops its workers; the next starts afresh
        break
    assert epoch_keys(again, 1) == keys[1]


def test_ranks_split_the_shards_disjointly_and_cover_them(voice_shards):
    shards = all_shards(voice_shards)
    ordered = shard_order(shards, 0, 0)
    parts = [rank_shards(ordered, rank, 2) for rank in range(2)]
    assert not set(parts[0]) & set(parts[1]) and set(parts[0]) | set(parts[1]) == set(shards)
    keys = [
        epoch_keys(make_loader(shards, config(), train=True, epoch_ref=SharedEpoch(0), rank=rank, world_size=2), 0)
        for rank in range(2)
    ]
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == ALL_KEYS


def test_every_rank_gets_the_same_number_of_full_batches(voice_shards):
    train, _ = split_shards(discover([str(voice_shards)], SR), 1, seed=0)  # 3 shards over 2 ranks
    loaders = [make_loader(train, config(), train=True, epoch_ref=SharedEpoch(0), rank=r, world_size=2) for r in range(2)]
    assert [len(loader) for loader in loaders] == [24 // (4 * 2)] * 2
    for rank, loader in enumerate(loaders):
        for epoch in range(2):
            loader.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == 3
            assert all(batch.a.shape == (4, SR) and batch.b.shape == (4, SR) for batch in batches)
            keys = [key for batch in batches for key in batch.keys]
            # the rank with one shard (8 pairs) starts a second pass to make its 12
            pairs_here = sum(s.n_pairs for s in rank_shards(shard_order(train, 0, epoch), rank, 2))
            assert len(set(keys)) == min(12, pairs_here)


def test_worker_batch_counts_follow_their_pairs():
    assert worker_batch_counts(6, [16, 8]) == [4, 2]
    assert worker_batch_counts(5, [8, 8, 8]) == [2, 2, 1]
    assert sum(worker_batch_counts(7, [3, 5, 11])) == 7


def test_fewer_shards_than_workers_uses_fewer_workers(voice_shards, caplog):
    shards = all_shards(voice_shards)
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        loader = make_loader(shards, config(workers=6), train=True, epoch_ref=SharedEpoch(0), rank=1, world_size=2)
    assert loader.num_workers == 2
    assert "2 shards per rank, so 2 loader workers instead of 6" in caplog.text
    assert len(epoch_keys(loader, 0)) == len(loader) * 4 == 16


def test_steps_per_epoch_overrides_the_manifest_count(voice_shards):
    cfg = config()
    cfg.steps_per_epoch = 11  # more than one pass: the stream repeats
    loader = make_loader(all_shards(voice_shards), cfg, train=True, epoch_ref=SharedEpoch(0))
    assert len(loader) == 11 and len(epoch_keys(loader, 0)) == 44


def test_too_few_pairs_for_a_global_batch_is_a_one_line_error(voice_shards):
    with pytest.raises(DataError, match="do not fill one global batch of 64") as error:
        make_loader(all_shards(voice_shards), config(batch_size=32), train=True, epoch_ref=SharedEpoch(0), world_size=2)
    assert "\n" not in str(error.value)


# --- epoch length ----------------------------------------------------------------------


def test_steps_per_epoch_follow_pairs_per_epoch(voice_shards):
    shards = all_shards(voice_shards)  # 32 pairs

    def steps(pairs_per_epoch, batch_size=4, world_size=1, steps_per_epoch=None):
        cfg = config(batch_size=batch_size)
        cfg.pairs_per_epoch, cfg.steps_per_epoch = pairs_per_epoch, steps_per_epoch
        return len(make_loader(shards, cfg, train=True, epoch_ref=SharedEpoch(0), world_size=world_size))

    assert steps(None) == 8  # one pass: 32 // 4
    assert steps(12) == 3
    assert steps(13) == 3  # whole batches only
    assert steps(100) == 25  # more than a pass
    assert steps(16, world_size=2) == 2  # 16 // (4 * 2)
    assert steps(None, world_size=2) == 4
    assert steps(12, steps_per_epoch=5) == 5  # steps_per_epoch wins
    assert steps(TrainConfig().pairs_per_epoch) == 117 * 768 // 4  # the reference's epoch by default
    for pairs, world_size, global_batch in ((3, 1, 4), (7, 2, 8)):
        with pytest.raises(DataError, match=f"^--pairs-per-epoch {pairs} does not fill one global batch of {global_batch}$"):
            steps(pairs, world_size=world_size)


def test_each_epoch_takes_its_pairs_from_a_fresh_shard_order(voice_shards):
    shards = all_shards(voice_shards)
    cfg = config(shuffle_buffer=1)  # no sample shuffle: the epoch reads its first shard in order
    cfg.pairs_per_epoch = 8
    loader = make_loader(shards, cfg, train=True, epoch_ref=SharedEpoch(0))
    firsts = set()
    for epoch in range(4):
        first = shard_order(shards, 0, epoch)[0]
        assert epoch_keys(loader, epoch) == shard_keys([first])
        firsts.add(first.url)
    assert len(firsts) > 1


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_of_fewer_pairs_than_the_data_ends_at_its_count(voice_shards, workers):
    cfg = config(workers=workers)
    cfg.pairs_per_epoch = 12
    loader = make_loader(all_shards(voice_shards), cfg, train=True, epoch_ref=SharedEpoch(0))
    assert len(loader) == 3 and loader.n_pairs == 12
    for epoch in range(2):
        keys = epoch_keys(loader, epoch)
        assert len(keys) == 12 and len(set(keys)) == 12  # no pair twice: each worker reads the start of its share


# --- validation loader -----------------------------------------------------------------


def test_validation_reads_every_pair_once_in_a_fixed_order(voice_shards):
    _, val = split_shards(discover([str(voice_shards)], SR), 2, seed=0)
    loader = make_loader(val, config(batch_size=5, workers=2), train=False, epoch_ref=SharedEpoch(0))
    assert loader.num_workers == 2 and len(loader) == 4  # each worker: 8 pairs -> 5 + 3
    first = epoch_keys(loader, 0)
    assert sorted(first) == shard_keys(val)
    assert epoch_keys(loader, 1) == first


# --- samples ---------------------------------------------------------------------------


def test_batches_hold_the_rendered_audio_with_its_gain(voice_shards):
    from doppelgen.recipe import Recipe
    from doppelgen.render.kernel import render_pairs

    (info,) = discover([str(voice_shards)], SR)
    loader = make_loader(list(info.shards[:1]), config(batch_size=8), train=False, epoch_ref=SharedEpoch(0))
    (batch,) = list(loader)
    assert batch.a.dtype == batch.b.dtype and batch.a.dtype.is_floating_point and batch.a.shape == (8, SR)
    indices = [int(key) for key in batch.keys]
    a, b, _ = render_pairs(Recipe.from_dict(info.manifest.recipe), indices, batch_size=8)
    for decoded, rendered in ((batch.a.numpy(), a), (batch.b.numpy(), b)):
        peak = np.abs(rendered).max(axis=1, keepdims=True)
        assert (np.abs(decoded - rendered) <= 1e-5 * peak).all()


def test_a_corrupt_member_is_skipped_and_counted(voice_shards, tmp_path, caplog):
    folder = copy_dataset(voice_shards, tmp_path / "corrupt")
    flip_member_bytes(folder / "pairs-000002.tar", "0000000019.a.flac")
    shards = all_shards(folder)
    loader = make_loader(shards, config(workers=2), train=True, epoch_ref=SharedEpoch(0))
    keys = epoch_keys(loader, 0)  # still len(loader) full batches
    assert "0000000019" not in keys and loader.skipped == 1
    assert len(keys) == 32 and len(set(keys)) == 31  # one pair read twice to fill the epoch
    with caplog.at_level(logging.WARNING, logger="doppeltrain.data"):
        val = make_loader(shards, config(), train=False, epoch_ref=SharedEpoch(0))
        val_keys = epoch_keys(val, 0)  # 31 pairs: 7 batches of 4 and one of 3
    assert val.skipped == 1 and "0000000019" in caplog.text and "skipped" in caplog.text
    assert sorted(val_keys + ["0000000019"]) == ALL_KEYS


def test_a_truncated_shard_is_skipped_from_the_break_on(voice_shards, tmp_path):
    folder = copy_dataset(voice_shards, tmp_path / "truncated")
    shard = folder / "pairs-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    loader = make_loader(all_shards(folder), config(), train=True, epoch_ref=SharedEpoch(0))
    keys = epoch_keys(loader, 0)
    assert len(keys) == 32 and loader.skipped >= 1
    assert not {f"{i:010d}" for i in range(12, 16)} & set(keys)


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_with_no_readable_pair_stop_the_epoch_with_a_one_line_error(voice_shards, tmp_path, workers):
    folder = copy_dataset(voice_shards, tmp_path / "garbage")
    for index in range(4):
        # large enough for the 8 pairs the manifest says it holds (smaller tars are left out)
        (folder / f"pairs-00000{index}.tar").write_bytes(b"not a tar" * 3000)
    loader = make_loader(all_shards(folder), config(workers=workers), train=True, epoch_ref=SharedEpoch(0))
    with pytest.raises(DataError, match="^no readable pairs in") as error:
        list(loader)
    assert "\n" not in str(error.value) and loader.skipped >= 2
    loader.set_epoch(1)
    with pytest.raises(DataError, match="^no readable pairs in"):  # new workers, same verdict
        list(loader)


def test_decode_clip_into_a_given_row_matches_a_fresh_decode():
    rng = np.random.default_rng(0)
    clip = (3.0 * rng.standard_normal(SR)).astype(np.float32)
    for codec in ("flac", "wav"):
        data, gain = encode_clip(clip, SR, codec)
        fresh, rate = decode_clip(data, gain)
        rows = np.full((2, SR), np.nan, dtype=np.float32)
        row = rows[1]
        decoded, rate_out = decode_clip(data, gain, out=row)
        assert decoded is row and rate_out == rate == SR
        assert np.array_equal(rows[1], fresh) and np.isnan(rows[0]).all()  # bit for bit, nothing else touched
    data, gain = encode_clip(clip, SR)
    with pytest.raises(FormatError, match=f"{SR} samples, expected {SR + 1}"):
        decode_clip(data, gain, out=np.empty(SR + 1, np.float32))  # never silently cut or padded
    with pytest.raises(FormatError, match=f"{SR} samples, expected {SR - 1}"):
        decode_clip(data, gain, out=np.empty(SR - 1, np.float32))
    with pytest.raises(FormatError, match="undecodable audio"):
        decode_clip(b"not audio" * 100, 1.0, out=np.empty(SR, np.float32))
    damaged = bytearray(data)
    damaged[len(damaged) // 2 :] = bytes(len(damaged) - len(damaged) // 2)
    with pytest.raises(FormatError):
        decode_clip(bytes(damaged), gain, out=np.empty(SR, np.float32))
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((SR, 2), np.float32), SR, format="WAV", subtype="FLOAT")
    with pytest.raises(FormatError, match="mono"):
        decode_clip(buffer.getvalue(), 1.0, out=np.empty(SR, np.float32))
    with pytest.raises(ValueError, match="float32"):
        decode_clip(data, gain, out=np.empty(SR, np.float64))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_decoded_into_place_exactly_as_decode_pair_decodes(voice_shards, workers):
    expected = {pair.key: pair for shard in sorted(voice_shards.glob("pairs-*.tar")) for pair in iter_shard_pairs(shard)}
    _, val = split_shards(discover([str(voice_shards)], SR), 2, seed=0)
    loader = make_loader(val, config(batch_size=5, workers=workers), train=False, epoch_ref=SharedEpoch(0))
    batches = list(loader)
    # 16 pairs: one worker 5 + 5 + 5 + 1; two workers 5 + 3 each (the last batch of each short)
    assert [len(batch.keys) for batch in batches] == ([5, 5, 5, 1] if workers == 0 else [5, 5, 3, 3])
    for batch in batches:
        assert batch.a.shape == batch.b.shape == (len(batch.keys), SR) and batch.a.dtype == torch.float32
        assert batch.a.is_contiguous() and batch.b.is_contiguous()
        for row, key in enumerate(batch.keys):
            assert np.array_equal(batch.a[row].numpy(), expected[key].a)
            assert np.array_equal(batch.b[row].numpy(), expected[key].b)
    train = make_loader(all_shards(voice_shards), config(workers=workers), train=True, epoch_ref=SharedEpoch(0))
    for batch in train:
        for row, key in enumerate(batch.keys):
            assert np.array_equal(batch.a[row].numpy(), expected[key].a)
            assert np.array_equal(batch.b[row].numpy(), expected[key].b)


def test_a_clip_of_another_length_is_skipped_and_counted(voice_shards, tmp_path):
    folder = copy_dataset(voice_shards, tmp_path / "short")
    half_clip = encode_clip(np.ones(SR // 2, np.float32), SR)[0]
    rewrite_shard(
        folder / "pairs-000001.tar",
        lambda members: [(name, half_clip if name == "0000000010.b.flac" else data) for name, data in members],
    )
    val = make_loader(all_shards(folder), config(workers=2), train=False, epoch_ref=SharedEpoch(0))
    keys = epoch_keys(val, 0)
    assert val.skipped == 1 and sorted(keys + ["0000000010"]) == ALL_KEYS


def test_worker_batch_blocks_are_reused_only_once_released(voice_shards, monkeypatch):
    import multiprocessing as mp

    import doppeltrain.data.batches as data

    expected = {pair.key: pair for shard in sorted(voice_shards.glob("pairs-*.tar")) for pair in iter_shard_pairs(shard)}
    allocated = mp.Value("i", 0)
    fresh_block = data.batch_tensor

    def counting_block(shape):
        with allocated.get_lock():
            allocated.value += 1
        return fresh_block(shape)

    monkeypatch.setattr(data, "batch_tensor", counting_block)  # the forked workers inherit it
    cfg = config(workers=2)
    cfg.steps_per_epoch = 40  # 20 batches per worker, more than its pool's slots

    def check(batch):
        for row, key in enumerate(batch.keys):
            assert np.array_equal(batch.a[row].numpy(), expected[key].a)
            assert np.array_equal(batch.b[row].numpy(), expected[key].b)

    loader = make_loader(all_shards(voice_shards), cfg, train=True, epoch_ref=SharedEpoch(0))
    held = list(loader)  # every batch kept: no block may be written twice
    assert len(held) == 40 and allocated.value == 40
    for batch in held:
        check(batch)
    order = [batch.keys for batch in held]
    del held, batch
    allocated.value = 0
    seen = []
    for batch in loader:  # each batch dropped as the next comes: blocks come back
        check(batch)
        seen.append(batch.keys)
    assert seen == order and allocated.value <= 2 * data.SLOTS_PER_WORKER


# --- the same batches as before the split into modules ---------------------------------

# Recorded from the single-module data.py (commit f0ccc77) on voice_shards: the pair
# indices of each batch of the first epoch. The order is a function of (seed, epoch,
# rank, worker, number of workers) and the shard sizes only, so these stay fixed until
# the order is changed on purpose.
PINNED_BATCHES = {
    "one_worker_epoch0": [[2, 5, 1, 16], [3, 7, 9, 22], [4, 19, 23, 25], [6, 20, 26, 14], [10, 27, 15, 12],
                          [18, 13, 0, 24], [21, 28, 29, 8], [17, 11, 30, 31]],
    "one_worker_epoch1": [[25, 16, 0, 24], [5, 28, 2, 29], [23, 18, 9, 20], [19, 30, 10, 31], [12, 1, 27, 11],
                          [14, 13, 4, 7], [8, 21, 22, 6], [3, 17, 26, 15]],
    "two_workers": [[14, 9, 18, 8], [5, 31, 25, 7], [17, 19, 12, 23], [30, 27, 29, 6], [21, 16, 20, 15],
                    [3, 24, 4, 0], [22, 11, 13, 10], [2, 26, 1, 28]],
    "rank1_of_2": [[2, 30, 5, 27], [29, 4, 6, 7], [25, 0, 3, 1], [24, 28, 26, 31]],
    "eleven_steps_two_workers": [[14, 9, 18, 8], [5, 31, 25, 7], [17, 19, 12, 23], [30, 27, 29, 6],
                                 [21, 16, 20, 15], [3, 24, 4, 0], [22, 11, 13, 10], [2, 26, 1, 28],
                                 [20, 21, 17, 10], [24, 25, 4, 27], [15, 8, 16, 23]],
    "validation": [[0, 1, 2, 3, 4], [16, 17, 18, 19, 20], [5, 6, 7], [21, 22, 23]],
}


def test_batches_are_the_ones_recorded_before_the_split(voice_shards):
    infos = discover([str(voice_shards)], SR)
    shards = split_shards(infos, 0, seed=0)[0]
    _, val = split_shards(infos, 2, seed=0)

    def batches(loader, epoch=0):
        loader.set_epoch(epoch)
        return [[int(key) for key in batch.keys] for batch in loader]

    eleven = config(workers=2)
    eleven.steps_per_epoch = 11
    got = {
        "one_worker_epoch0": batches(make_loader(shards, config(), train=True, epoch_ref=SharedEpoch(0))),
        "one_worker_epoch1": batches(make_loader(shards, config(), train=True, epoch_ref=SharedEpoch(0)), 1),
        "two_workers": batches(make_loader(shards, config(workers=2), train=True, epoch_ref=SharedEpoch(0))),
        "rank1_of_2": batches(make_loader(shards, config(), train=True, epoch_ref=SharedEpoch(0), rank=1, world_size=2)),
        "eleven_steps_two_workers": batches(make_loader(shards, eleven, train=True, epoch_ref=SharedEpoch(0))),
        "validation": batches(make_loader(val, config(batch_size=5, workers=2), train=False, epoch_ref=SharedEpoch(0))),
    }
    assert got == PINNED_BATCHES
