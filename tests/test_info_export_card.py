"""doppelgen info, export and card: what a dataset is, what it sounds like, how to publish it."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import yaml

from doppelgen.publish.card import CardError, size_category, write_card
from doppelgen.publish.export import ExportError, export_pairs, param_differences
from doppelgen.vggish import vggish_log_mel as log_mel
from doppelgen.format import iter_shard_pairs, iter_tar_members, read_manifest, shard_name
from doppelgen.publish.info import describe_dataset, format_description
from doppelgen.pack.packing import PackConfig, pack_folder

from test_verify import run_cli


@pytest.fixture()
def dataset(voice_shards, tmp_path):
    return shutil.copytree(voice_shards, tmp_path / "data")


# --- info ----------------------------------------------------------------------------


def test_info_totals_come_from_the_manifest_and_match_the_disk(voice_shards, voice_recipe):
    desc = describe_dataset(voice_shards)
    totals = desc["totals"]
    assert totals["pairs"] == voice_recipe.n_pairs and totals["shards"] == voice_recipe.n_shards
    assert totals["bytes"] == sum((voice_shards / shard_name(s)).stat().st_size for s in range(voice_recipe.n_shards))
    assert totals["hours"] == pytest.approx(2 * voice_recipe.n_pairs * voice_recipe.duration / 3600)
    assert desc["recipe"] == voice_recipe.to_dict() and desc["software"]["synthax"]
    assert desc["shard_stats"]["n_pairs"] == {"min": 8.0, "mean": 8.0, "max": 8.0}
    assert 0 < desc["shard_stats"]["mean_rms"]["min"] <= desc["shard_stats"]["mean_rms"]["max"]


def test_info_text_and_json_on_the_command_line(voice_shards):
    text = run_cli("info", voice_shards)
    assert text.exit_code == 0
    for expected in ("delta            0.25", "pairs            32 in 4 shards", "jax ", "mean_rms", "per view"):
        assert expected in text.stdout
    as_json = run_cli("info", voice_shards, "--json")
    assert json.loads(as_json.stdout)["totals"]["pairs"] == 32
    assert format_description(describe_dataset(voice_shards)) == text.stdout.rstrip("\n")


def test_info_without_a_manifest_is_one_line_error(dataset):
    (dataset / "manifest.json").unlink()
    result = run_cli("info", dataset)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


# --- export --------------------------------------------------------------------------


def test_log_mel_has_the_vggish_shape_and_finds_a_tone():
    t = np.arange(16000) / 16000
    mel = log_mel(np.sin(2 * np.pi * 1000 * t), 16000)
    assert mel.shape == (98, 64)  # 25 ms windows every 10 ms over 1 s, 64 bands
    low = log_mel(np.sin(2 * np.pi * 300 * t), 16000)
    assert mel.mean(axis=0).argmax() > low.mean(axis=0).argmax()
    assert np.isclose(log_mel(np.zeros(16000), 16000), np.log(0.01)).all()


def test_log_mel_of_the_pictures_is_the_trainers_features():
    """export draws what the network sees: doppelgen.vggish (NumPy, float64) against
    doppeltrain.features (torch, float32)."""
    import torch

    from doppeltrain.config import FeatureConfig
    from doppeltrain.features import log_mel as trainer_log_mel, mel_filterbank
    from doppelgen.vggish import vggish_mel_filterbank

    cfg = FeatureConfig()
    np.testing.assert_allclose(vggish_mel_filterbank(cfg.sample_rate, cfg.n_fft), mel_filterbank(cfg).numpy(), atol=1e-6)
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.3
    ours = log_mel(audio, 16000)
    theirs = trainer_log_mel(torch.from_numpy(audio)).numpy()
    assert ours.shape == theirs.shape == (98, 64)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_param_differences_rank_by_how_far_the_views_are_apart():
    meta = {"params": {"base": [0.5, 0.5, 0.5], "a": [0.6, 0.1, 0.5], "b": [0.4, 0.5, 0.5]}}
    ranked = param_differences(meta, ["x", "y", "z"])
    assert [name for name, *_ in ranked] == ["y", "x", "z"]
    assert ranked[0][1:] == pytest.approx((-0.4, 0.0, -0.4))


def test_export_writes_wavs_of_the_stored_audio_and_one_picture_per_pair(voice_shards, tmp_path):
    result = export_pairs(voice_shards, tmp_path / "look", n=3)
    assert result.keys == ["0000000000", "0000000001", "0000000002"]
    pairs = list(iter_shard_pairs(voice_shards / shard_name(0)))[:3]
    from matplotlib import image

    for pair in pairs:
        scale = 1.0 / max(1.0, np.abs(pair.a).max(), np.abs(pair.b).max())
        for view in ("a", "b"):
            audio, rate = sf.read(tmp_path / "look" / f"{pair.key}.{view}.wav", dtype="float32")
            assert rate == 16000
            np.testing.assert_allclose(audio, getattr(pair, view) * scale, atol=1e-7)
        picture = image.imread(tmp_path / "look" / f"{pair.key}.png")
        assert picture.ndim == 3 and picture.shape[1] > picture.shape[0] > 300  # two spectrograms side by side
    assert sorted(p.name for p in (tmp_path / "look").iterdir()) == sorted(p.name for p in result.files)


def test_export_on_the_command_line(voice_shards, tmp_path):
    result = run_cli("export", voice_shards, "--n", "2", "--to", tmp_path / "x")
    assert result.exit_code == 0 and result.stdout.startswith("2 pairs exported")
    assert len(list((tmp_path / "x").glob("*.png"))) == 2
    assert run_cli("export", voice_shards, "--n", "0", "--to", tmp_path / "y").exit_code == 2
    with pytest.raises(ExportError, match="no manifest.json"):
        export_pairs(tmp_path, tmp_path / "z")


# --- card ----------------------------------------------------------------------------


def card_header(folder) -> dict:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_header_is_what_the_hub_reads(dataset, voice_recipe):
    assert run_cli("card", dataset).exit_code == 0
    header = card_header(dataset)
    assert header["license"] == "cc-by-4.0" and header["size_categories"] == ["n<1K"]
    assert header["task_categories"] and header["configs"][0]["data_files"] == [{"split": "train", "path": "pairs-*.tar"}]
    features = {f["name"]: f for f in header["dataset_info"]["features"]}
    assert features["a.flac"]["dtype"] == features["b.flac"]["dtype"] == "binary"
    assert [f["name"] for f in features["json"]["struct"]] == ["index", "seed", "gain", "params"]
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_bytes": describe_dataset(dataset)["totals"]["bytes"], "num_examples": 32}]
    body = (dataset / "README.md").read_text(encoding="utf-8")
    for entry in read_manifest(dataset).shards:
        assert f"`{entry.sha256}`" in body
    for how in ("doppeltrain fit", "wds.WebDataset", "load_dataset(", "pairs-{000000..000003}.tar", '"delta": 0.25'):
        assert how in body


def test_card_license_and_title_options(dataset):
    result = run_cli("card", dataset, "--license", "mit", "--title", "Voice pairs: a test")
    assert result.exit_code == 0 and result.stdout == f"wrote {dataset / 'README.md'}\n"
    header = card_header(dataset)
    assert header["license"] == "mit" and header["pretty_name"] == "Voice pairs: a test"
    body = (dataset / "README.md").read_text(encoding="utf-8").split("---\n", 2)[2]
    assert body.startswith("\n# Voice pairs: a test\n")
    assert run_cli("card", dataset).exit_code == 0  # without them: the defaults again
    assert card_header(dataset)["license"] == "cc-by-4.0" and card_header(dataset)["pretty_name"].startswith("Synthetic audio doppelg")


def test_size_categories_follow_the_hub_buckets():
    assert [size_category(n) for n in (999, 1000, 512_000, 5_120_000)] == ["n<1K", "1K<n<10K", "100K<n<1M", "1M<n<10M"]


def test_card_needs_a_finished_dataset(tmp_path):
    with pytest.raises(CardError, match="no manifest.json"):
        write_card(tmp_path)


HF_LOAD = textwrap.dedent(
    """
    import json, sys
    from datasets import load_dataset

    out = {}
    for folder in sys.argv[1:]:
        rows = load_dataset(folder, split="train")
        out[folder] = [
            {"key": r["__key__"], "a": r["a.flac"].hex(), "b": r["b.flac"].hex(), "json": r["json"]} for r in rows
        ]
    print(json.dumps(out))
    """
)


def test_hugging_face_datasets_loads_every_pair_without_an_audio_decoder(dataset, tmp_path):
    """Both a synthetic and a packed dataset, offline, in a fresh interpreter (HF reads its
    environment at import)."""
    recordings = tmp_path / "rec"
    recordings.mkdir()
    sf.write(recordings / "one.wav", np.sin(np.arange(24000) / 5).astype(np.float32) * 0.3, 16000)
    packed = tmp_path / "packed"
    pack_folder(recordings, packed, PackConfig(n_layers=1))
    for folder in (dataset, packed):
        write_card(folder)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run([sys.executable, "-c", HF_LOAD, str(dataset), str(packed)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for folder in (dataset, packed):
        manifest = read_manifest(folder)
        stored = {}
        for s in range(manifest.n_shards):
            for name, data in iter_tar_members(folder / shard_name(s)):
                stored[name] = data
        rows = loaded[str(folder)]
        assert len(rows) == sum(e.n_pairs for e in manifest.shards)
        for row in rows:
            key = row["key"]
            assert bytes.fromhex(row["a"]) == stored[f"{key}.a.flac"] and bytes.fromhex(row["b"]) == stored[f"{key}.b.flac"]
            assert row["json"] == json.loads(stored[f"{key}.json"])
    assert loaded[str(packed)][0]["json"]["source"] == "one.wav"


# --- packed real audio ---------------------------------------------------------------


@pytest.fixture()
def packed(tmp_path):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    t = np.arange(40000) / 16000
    sf.write(recordings / "chirp.wav", (0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t)).astype(np.float32), 16000)
    sf.write(recordings / "hum.flac", (0.2 * np.sin(2 * np.pi * 120 * t)).astype(np.float32), 16000)
    out = tmp_path / "packed"
    pack_folder(recordings, out, PackConfig(temporal_jitter=True))
    return out


def test_info_export_and_card_describe_packed_audio(packed, tmp_path):
    desc = describe_dataset(packed)
    assert desc["kind"] == "packed real audio" and desc["totals"]["pairs"] == 2 and desc["n_params"] == 1
    assert "1 crop start times per view" in format_description(desc)
    result = export_pairs(packed, tmp_path / "look", n=5)
    assert len(result.keys) == 2 and len(list((tmp_path / "look").glob("*.png"))) == 2
    write_card(packed)
    header = card_header(packed)
    assert header["license"] == "other"
    json_fields = [f["name"] for f in {f["name"]: f for f in header["dataset_info"]["features"]}["json"]["struct"]]
    assert json_fields == ["index", "seed", "gain", "params", "source", "file_index"]
    assert "two independent random crops" in (packed / "README.md").read_text(encoding="utf-8")


def test_rerendering_packed_audio_is_refused_in_one_line(packed):
    result = run_cli("verify", packed, "--rerender", "2")
    assert result.exit_code == 2 and result.stderr == "error: --rerender needs a synth recipe; this dataset was packed from recordings\n"
    assert run_cli("verify", packed).exit_code == 0


def test_the_cards_webdataset_recipe_runs_and_applies_the_gains(dataset):
    write_card(dataset)
    body = (dataset / "README.md").read_text(encoding="utf-8")
    snippet = next(block for block in body.split("```python\n")[1:] if "wds.WebDataset" in block).split("```")[0]
    namespace = {}
    exec(snippet.replace("path/to/this/folder", str(dataset)), namespace)  # the loop leaves the last pair behind
    last = list(iter_shard_pairs(dataset / shard_name(3)))[-1]
    np.testing.assert_allclose(namespace["a"], last.a, atol=1e-7)
    np.testing.assert_allclose(namespace["b"], last.b, atol=1e-7)
