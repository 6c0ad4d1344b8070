"""``doppelgen pack`` on hostile folders and options (issue 17): a FIFO named like a
recording, recordings whose gain the format cannot store, options past the format's
bounds, and two packs racing for one output folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from publish_helpers import run_cli

from doppelgen.format import read_manifest
from doppelgen.pack.packing import PackConfig, PackError, pack_folder, pack_recipe
from doppelgen.pack.recordings import list_recordings
from doppelgen.publish.verify import verify_dataset
from doppelgen.render.manifest import recipe_sha256
from doppelgen.render.output_claim import claim_folder
from doppelgen.storage import open_store

SR = 16000


@pytest.fixture
def recordings(tmp_path) -> Path:
    root = tmp_path / "rec"
    root.mkdir()
    t = np.arange(2 * SR) / SR
    for index, hz in enumerate((300.0, 700.0)):
        sf.write(root / f"good{index}.wav", (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32), SR)
    return root


def within(seconds: int):
    """Fail instead of hanging forever."""

    def hang(signum, frame):
        raise AssertionError(f"still running after {seconds} s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)


def test_a_fifo_named_like_a_recording_is_skipped_and_listed(recordings, tmp_path):
    os.mkfifo(recordings / "fifo.wav")  # opening it for reading would block forever
    within(120)
    try:
        summary = pack_folder(recordings, tmp_path / "out", PackConfig())
    finally:
        signal.alarm(0)
    assert summary.pairs == 2
    skipped = read_manifest(tmp_path / "out").skipped
    assert [entry["path"] for entry in skipped] == ["fifo.wav"] and "not a regular file" in skipped[0]["error"]


def test_a_recording_whose_gain_exceeds_the_formats_bound_is_skipped(recordings, tmp_path):
    sf.write(recordings / "huge.wav", np.full(SR, 1e30, np.float32), SR, subtype="FLOAT")
    summary = pack_folder(recordings, tmp_path / "out", PackConfig())
    assert summary.pairs == 2
    (entry,) = read_manifest(tmp_path / "out").skipped
    assert entry["path"] == "huge.wav" and "exceeds the format's bound" in entry["error"]
    assert verify_dataset(tmp_path / "out").ok


@pytest.mark.parametrize("option, value, words", [
    ("--n-layers", "100000", "n_layers must lie in [1, 16], got 100000"),
    ("--pairs-per-shard", "1000000000", "pairs_per_shard must lie in [1, 100000]"),
    ("--seed", str(2**64), "seed must lie in [0, 4294967295]"),
])
def test_options_past_the_formats_bounds_are_refused_before_any_work(recordings, tmp_path, option, value, words):
    result = run_cli("pack", recordings, tmp_path / "out", option, value, "-q")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_claimed_by_another_recipe_is_refused(recordings, tmp_path):
    """Two packs with different options started together: the one that claims the folder
    first packs, the other is refused (the claim of renders, output_claim)."""
    out = tmp_path / "out"
    out.mkdir()
    assert claim_folder(open_store(out), "0" * 64)  # the other pack's claim
    with pytest.raises(PackError, match="holds a different dataset recipe"):
        pack_folder(recordings, out, PackConfig())
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []


def test_a_pack_of_the_same_recipe_may_share_the_folder(recordings, tmp_path):
    """Packs of one recipe write the same bytes, so a claim of that recipe lets it in."""
    out = tmp_path / "out"
    out.mkdir()
    config = PackConfig()
    claim = recipe_sha256(pack_recipe(config, recordings, list_recordings(recordings), None))
    assert claim_folder(open_store(out), claim)  # a pack of these options, started first
    assert pack_folder(recordings, out, config).pairs == 2
    assert verify_dataset(out).ok
