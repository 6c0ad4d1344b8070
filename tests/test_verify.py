"""doppelgen verify: a clean dataset passes; each kind of damage is named by shard and member."""

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from doppelgen.publish import rerender as rerender_module
from doppelgen.publish.cli import register
from doppelgen.format import MANIFEST_NAME, encode_clip, iter_tar_members, shard_name
from doppelgen.render.shard_writer import pair_sample
from doppelgen.publish.cross_platform import CLIP_TOLERANCE, DESCRIPTION
from doppelgen.publish.rerender import compare_pair
from doppelgen.publish.verify import VerifyError, verify_dataset


@pytest.fixture()
def dataset(voice_shards, tmp_path):
    """A private copy of the session's voice dataset, free to damage."""
    return shutil.copytree(voice_shards, tmp_path / "data")


def publish_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app holding the publishing commands."""

    register(app)
    return app


def run_cli(*args: str):
    return CliRunner().invoke(publish_app(), [str(a) for a in args])


def rewrite_shard(folder, shard: int, edit) -> None:
    """Re-tar shard ``shard`` after ``edit(list of [name, bytes])`` changed its members."""
    members = [[name, data] for name, data in iter_tar_members(folder / shard_name(shard))]
    edit(members)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (folder / shard_name(shard)).write_bytes(buffer.getvalue())


def test_a_clean_dataset_verifies(voice_shards, voice_recipe):
    report = verify_dataset(voice_shards)
    assert report.ok, report.problems
    assert (report.shards_checked, report.pairs_checked) == (voice_recipe.n_shards, voice_recipe.n_pairs)


def test_rerendered_pairs_match_byte_for_byte(voice_shards):
    # 8 pairs: the batch shape the fixture compiled, so nothing recompiles.
    report = verify_dataset(voice_shards, rerender=8, seed=3)
    assert report.ok, report.problems
    assert report.rerendered == 8 and report.rerender_mode == "bytes"


def change_views(folder, change, views: tuple[int, ...] = (0,)) -> None:
    """Replace each pair's ``views`` (0: a, 1: b) by ``change(audio)``, re-encoded with its
    new gain, and reseal the checksums so only the re-render can notice."""
    from doppelgen.files import file_sha256
    from doppelgen.format import decode_clip, stats_name

    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    for entry in manifest["record"]["shards"]:
        shard = int(entry["name"][6:12])

        def edit(members):
            for row in range(0, len(members), 3):
                meta = json.loads(members[row + 2][1])
                for view in views:
                    audio, _ = decode_clip(members[row + view][1], meta["gain"][view])
                    members[row + view][1], meta["gain"][view] = encode_clip(change(audio), 16000)
                members[row + 2][1] = json.dumps(meta).encode()

        rewrite_shard(folder, shard, edit)
        digest, size = file_sha256(folder / entry["name"])
        stats = json.loads((folder / stats_name(shard)).read_text())
        stats["sha256"] = entry["sha256"] = digest
        stats["bytes"] = entry["bytes"] = size
        (folder / stats_name(shard)).write_text(json.dumps(stats))
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def sample_noise(audio: np.ndarray) -> np.ndarray:
    """1e-3 x peak of white noise on every sample: 10x the old sample tolerance, as much as
    a platform's phase rounding moves most clips, and nothing to the ear."""
    noise = np.random.default_rng(0).standard_normal(audio.shape)
    return (audio + 1e-3 * np.abs(audio).max() * noise).astype(np.float32)


@pytest.mark.parametrize("change, agrees", [(sample_noise, True), (lambda audio: audio * np.float32(1.5), False)], ids=["rounding", "louder"])
def test_rerender_on_another_platform_compares_what_survives_a_platform_change(dataset, monkeypatch, change, agrees):
    change_views(dataset, change)
    monkeypatch.setattr(rerender_module, "same_platform", lambda record: False)
    report = verify_dataset(dataset, rerender=8, seed=3)
    assert report.rerendered == 8 and report.rerender_mode == DESCRIPTION
    assert "params within 1e-05" in report.rerender_mode and "log-mel" in report.rerender_mode
    if agrees:  # the audio differs (the bytes do), but as a render on another platform may
        assert report.ok, report.problems
        assert report.rerender_measured["params_difference"] == 0.0 and 0 < report.rerender_measured["worst_clip"] < CLIP_TOLERANCE
    else:  # 1.5x louder: log(1.5) = 0.405 nats on every bin of view a, and so the median clip
        clips = [p for p in report.problems if ".a.flac" in p]
        assert len(clips) == 8 and all(
            re.fullmatch(r"pairs-00000\d\.tar: \d{10}\.a\.flac: log-mel distance 0\.[34]\d* from the new render \(> 0\.15\)", p) for p in clips
        ), report.problems
        assert len(report.problems) == 9 and re.match(r"re-rendered audio: the median clip's log-mel distance is 0\.[12]", report.problems[-1])
    # On the same platform the bytes must match, and the report says how far apart they are.
    monkeypatch.setattr(rerender_module, "same_platform", lambda record: True)
    exact = verify_dataset(dataset, rerender=8, seed=3)
    assert exact.rerender_mode == "bytes" and len(exact.problems) == 16 and exact.rerender_measured is None
    note = " (but agree as a render from another platform would)"
    assert sum(p.endswith(".a.flac: re-rendered bytes differ" + (note if agrees else "")) for p in exact.problems) == 8


def test_a_small_change_to_every_clip_fails_the_median_clip(dataset, monkeypatch):
    # 5% louder, both views: 0.049 nats a clip, within the clip tolerance, but every clip moved.
    change_views(dataset, lambda audio: audio * np.float32(1.05), views=(0, 1))
    monkeypatch.setattr(rerender_module, "same_platform", lambda record: False)
    report = verify_dataset(dataset, rerender=8, seed=3)
    assert len(report.problems) == 1 and report.problems[0].startswith("re-rendered audio: the median clip's log-mel distance is 0.04")
    assert 0.04 < report.rerender_measured["median_clip"] < CLIP_TOLERANCE


def test_the_cross_platform_comparison_flags_what_a_platform_cannot_change():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    a = (np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t)).astype(np.float32)
    b = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    params = rng.uniform(size=(1, 3, 5)).astype(np.float32)
    fresh = pair_sample(7, 0, a, b, params, 16000, "flac")

    def stored_with(view_a, params=params):
        sample = pair_sample(7, 0, view_a, b, params, 16000, "flac")
        return {k: v for k, v in sample.items() if k != "__key__"}

    assert compare_pair(fresh, stored_with(sample_noise(a)), exact=False) == []
    assert compare_pair(fresh, stored_with(a, params + np.float32(5e-7)), exact=False) == []  # float32 rounding of the draw
    assert compare_pair(fresh, stored_with(a, params + np.float32(1e-4)), exact=False) == [
        "json: params differs from the new render by up to 0.0001 (> 1e-05)"
    ]
    problems = compare_pair(fresh, stored_with(a * np.float32(0.5)), exact=False)  # log 2 = 0.69 where above the floor
    assert len(problems) == 1 and re.fullmatch(r"a\.flac: log-mel distance 0\.[5-6]\d* from the new render \(> 0\.15\)", problems[0])
    problems = compare_pair(fresh, stored_with(np.roll(a, 800)), exact=False)  # 50 ms late
    assert [p.split(":")[0] for p in problems] == ["a.flac"]
    assert compare_pair(fresh, stored_with(sample_noise(a)), exact=True) == [
        "a.flac: re-rendered bytes differ (but agree as a render from another platform would)",
        "json: re-rendered bytes differ (but agree as a render from another platform would)",  # the gain follows the audio
    ]
    # Half as loud: the same peak-normalised FLAC, another gain in the JSON.
    assert compare_pair(fresh, stored_with(a * np.float32(0.5)), exact=True) == ["json: re-rendered bytes differ"]
    assert compare_pair(fresh, stored_with(np.roll(a, 800)), exact=True) == ["a.flac: re-rendered bytes differ"]
    assert compare_pair(fresh, stored_with(a), exact=True) == []


def test_a_missing_manifest_is_reported_and_shards_still_checked(dataset):
    (dataset / MANIFEST_NAME).unlink()
    report = verify_dataset(dataset)
    assert not report.ok
    assert report.problems[0].startswith("manifest.json: missing")
    assert len(report.problems) == 1 and report.shards_checked == 4


def test_a_truncated_tar_is_caught(dataset):
    path = dataset / shard_name(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    problems = verify_dataset(dataset).problems
    assert problems and all(p.startswith(("pairs-000001.tar: ", "pairs-000001.stats.json: ")) for p in problems)
    assert any(p.startswith("pairs-000001.tar: sha256") for p in problems)
    assert any(p.startswith("pairs-000001.tar: unreadable tar") or " is truncated" in p for p in problems)


def test_a_flipped_byte_is_caught(dataset):
    path = dataset / shard_name(2)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_dataset(dataset).problems
    assert any(p.startswith("pairs-000002.tar: sha256") for p in problems)
    assert all(p.startswith(("pairs-000002.tar", "pairs-000002.stats.json")) for p in problems)


def test_a_missing_shard_is_caught(dataset):
    (dataset / shard_name(3)).unlink()
    assert verify_dataset(dataset).problems == ["pairs-000003.tar: missing"]


def test_a_missing_stats_file_means_an_incomplete_shard(dataset):
    (dataset / "pairs-000000.stats.json").unlink()
    assert verify_dataset(dataset).problems == ["pairs-000000.stats.json: missing, so pairs-000000.tar is not complete"]


def test_a_wrong_json_index_names_the_member(dataset):
    def edit(members):
        meta = json.loads(members[5][1])
        meta["index"] = 99
        members[5][1] = json.dumps(meta).encode()

    rewrite_shard(dataset, 1, edit)
    problems = verify_dataset(dataset).problems
    assert "pairs-000001.tar: 0000000009.json: index 99, expected 9" in problems


def test_members_out_of_order_are_caught(dataset):
    rewrite_shard(dataset, 0, lambda members: members.insert(0, members.pop(1)))
    problems = verify_dataset(dataset).problems
    assert any(p.startswith("pairs-000000.tar: 0000000000: members 0000000000.b.flac, 0000000000.a.flac") for p in problems)


def test_a_clip_of_the_wrong_length_is_caught(dataset):
    def edit(members):
        members[3][1] = encode_clip(np.zeros(15999, np.float32), 16000)[0]  # pair 1, view a

    rewrite_shard(dataset, 0, edit)
    assert "pairs-000000.tar: 0000000001.a.flac: 15999 samples, expected 16000" in verify_dataset(dataset).problems


def test_a_shard_outside_the_recipe_is_caught(dataset):
    shutil.copy(dataset / shard_name(0), dataset / shard_name(4))
    assert "pairs-000004.tar: not part of this dataset (the recipe has 4 shards)" in verify_dataset(dataset).problems


def test_checking_in_worker_processes_gives_the_same_report(dataset, monkeypatch):
    from doppelgen.publish import verify as verify_module

    (dataset / shard_name(3)).unlink()
    inline = verify_dataset(dataset, workers=0)
    monkeypatch.setattr(verify_module, "MIN_SHARDS_PER_WORKER", 1)  # 4 shards: worth a pool of 2 here
    pooled = verify_dataset(dataset, workers=2)
    assert pooled.problems == inline.problems and pooled.pairs_checked == inline.pairs_checked == 24


def test_cli_exit_codes_and_one_line_per_problem(dataset):
    ok = run_cli("verify", dataset, "--workers", "0")
    assert ok.exit_code == 0 and ok.stdout == "" and ok.stderr.startswith("ok:")

    (dataset / shard_name(3)).unlink()
    (dataset / MANIFEST_NAME).unlink()
    failed = run_cli("verify", dataset, "--workers", "0")
    assert failed.exit_code == 1
    lines = failed.stdout.splitlines()
    assert lines[0].startswith("manifest.json: missing") and len(lines) == 1  # without a manifest shard 3 is not expected
    assert failed.stderr.startswith("FAILED:")

    missing = run_cli("verify", dataset / "nope")
    assert missing.exit_code == 2 and missing.stderr.strip().count("\n") == 0 and missing.stderr.startswith("error: ")
    assert run_cli("verify", dataset, "--rerender", "-1").exit_code == 2


def test_verify_refuses_a_folder_that_does_not_exist(tmp_path):
    with pytest.raises(VerifyError, match="no such dataset folder"):
        verify_dataset(tmp_path / "missing")


def test_cli_rerender_says_how_it_compared(voice_shards):
    result = run_cli("verify", voice_shards, "--rerender", "8", "--workers", "0")
    assert result.exit_code == 0
    assert result.stderr.strip().endswith("4 shards, 32 pairs, 8 pairs rendered again (compared: bytes)")


def test_a_wav_coded_dataset_verifies(voice_recipe, tmp_path):
    import dataclasses

    from doppelgen.render.loop import render_dataset

    recipe = dataclasses.replace(voice_recipe, codec="wav", n_shards=1)
    render_dataset(recipe, tmp_path, batch_size=8, workers=0, progress=False)
    report = verify_dataset(tmp_path, rerender=8)
    assert report.ok, report.problems
    assert report.pairs_checked == 8 and report.rerender_mode == "bytes"


def test_the_installed_command_verifies_and_fails(dataset):
    """Through ``python -m doppelgen``: the lead's app with these commands registered."""
    command = [sys.executable, "-m", "doppelgen", "verify", str(dataset)]
    assert subprocess.run(command, capture_output=True, text=True, timeout=120).returncode == 0
    (dataset / shard_name(2)).unlink()
    failed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and failed.stdout == "pairs-000002.tar: missing\n"


def test_a_manifest_record_without_checksums_is_a_problem(voice_shards, tmp_path):
    from doppelgen.publish.verify import verify_dataset

    folder = tmp_path / "d"
    shutil.copytree(voice_shards, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["record"]["shards"][1]["sha256"]
    del manifest["record"]["param_names"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = verify_dataset(folder)
    assert not report.ok
    assert any("pairs-000001.tar lacks sha256" in p for p in report.problems)
    assert any("no param_names" in p for p in report.problems)
