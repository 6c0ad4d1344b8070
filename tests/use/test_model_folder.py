"""``doppeltrain export``: a publishable model folder, and every command reading it."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner
from use_fixtures import EMBEDDING_DIM, SR, write_checkpoint, write_labelled_folder

from doppeltrain.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from doppeltrain.cli import app
from doppeltrain.use import hear
from doppeltrain.use.inference import embed, embed_files, load_model
from doppeltrain.use.model_folder import (
    CARD_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    export_model,
    hub_datasets,
    load_model_folder,
)
from doppeltrain.use.probe import ProbeConfig, run_probe

HUB = "https://huggingface.co/datasets/someone/doppelgangers-voice/resolve/main"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint as fit leaves it after 3 epochs on one Hub and one local dataset."""
    path = write_checkpoint(tmp_path_factory.mktemp("export") / "latest.pt", seed=4)
    state = load_checkpoint(path)
    state.update(epoch=3, step=42, world_size=2, manifests={HUB: "a" * 64, "/data/local": "b" * 64})
    state["config"]["data"]["datasets"] = [HUB, "/data/local"]
    state["config"]["optim"]["optimizer"] = "adam"
    state["config"]["augment"]["mode"] = "specaugment"
    return save_checkpoint(state, path)


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("published") / "model"
    export_model(checkpoint, out, license="mit")
    return out


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def _audio(seconds: float, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(int(seconds * SR), generator=torch.Generator().manual_seed(seed))


def test_the_folder_holds_weights_config_and_card(folder, checkpoint):
    assert sorted(p.name for p in folder.iterdir()) == sorted([MODEL_FILE, CONFIG_FILE, CARD_FILE])
    state = load_checkpoint(checkpoint)
    weights = load_file(folder / MODEL_FILE)
    assert weights.keys() == state["model"].keys()
    assert all(torch.equal(weights[key], state["model"][key]) for key in weights)
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["weights_sha256"] == hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    assert config["model"] == state["config"]["model"] and config["frontend"] == state["config"]["features"]
    assert config["training"]["optim"]["optimizer"] == "adam" and "model" not in config["training"]
    assert config["datasets"] == {HUB: "a" * 64, "/data/local": "b" * 64}
    assert config["trained"] == {"epochs": 3, "steps": 42, "world_size": 2}
    assert (config["embedding_dim"], config["sample_rate"]) == (EMBEDDING_DIM, SR)


def test_the_model_card_has_hub_metadata_and_says_how_to_train_and_embed(folder):
    text = (folder / CARD_FILE).read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["library_name"] == "doppelgangers" and header["license"] == "mit"
    assert {"audio", "embeddings", "contrastive-learning"} <= set(header["tags"])
    assert header["datasets"] == ["someone/doppelgangers-voice"]  # the local one has no Hub id
    body = text.split("---\n", 2)[2]
    for fact in ("| epochs | 3 of 200 |", "| optimizer steps | 42 |", "768 pairs per process × 2",
                 "adam", "| augmentation | specaugment |", "`" + HUB + "`", "a" * 64,
                 "doppeltrain embed model/", 'load_model("model/")', "doppeltrain.use.hear"):
        assert fact in body, fact


def test_hub_dataset_ids_are_read_from_urls():
    assert hub_datasets([HUB, "hf://datasets/a/b@main/x", "hf://datasets/a/b", "/local", "https://example.com/datasets/x/y"]) == [
        "someone/doppelgangers-voice", "a/b"]


def test_the_folder_gives_the_checkpoints_embeddings_exactly(folder, checkpoint):
    from_checkpoint = load_model(checkpoint, device="cpu")
    from_folder = load_model(folder, device="cpu")
    clips = [_audio(2.5, 1), _audio(0.7, 2)]
    assert torch.equal(embed(from_folder, clips, SR), embed(from_checkpoint, clips, SR))
    network, config = load_model_folder(folder)
    assert not network.training and config.model.embedding_dim == EMBEDDING_DIM
    hear_model = hear.load_model(str(folder))
    assert torch.equal(hear.get_scene_embeddings(torch.stack([clips[0][:SR]]), hear_model),
                       embed(from_checkpoint, clips[0][:SR], SR))


def test_embed_and_probe_take_the_folder(cli, folder, checkpoint, tmp_path):
    sf.write(tmp_path / "x.wav", _audio(1.3, 3).numpy(), SR)
    result = cli("embed", folder, tmp_path / "x.wav", "--out", tmp_path / "e.npy", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    expected = embed_files(load_model(checkpoint, device="cpu"), [tmp_path / "x.wav"])
    assert np.array_equal(np.load(tmp_path / "e.npy"), expected)
    labelled = write_labelled_folder(tmp_path / "labelled", per_class=4)
    from_folder = run_probe(ProbeConfig(checkpoint=str(folder), data=str(labelled), device="cpu", out=str(tmp_path / "f.json")))
    from_file = run_probe(ProbeConfig(checkpoint=str(checkpoint), data=str(labelled), device="cpu", out=str(tmp_path / "c.json")))
    assert from_folder["results"] == from_file["results"]


def test_export_refuses_a_checkpoint_whose_weights_do_not_fit_its_config(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    state["config"]["model"]["embedding_dim"] = 7
    bad = save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit the configured model"):
        export_model(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_and_overwrite(cli, checkpoint, tmp_path):
    out = tmp_path / "clone"
    (out / ".git").mkdir(parents=True)  # a cloned Hub repository: its files are left alone
    result = cli("export", checkpoint, out, "--title", "My voice embedding")
    assert result.exit_code == 0, result.output
    assert "model.safetensors, config.json, README.md" in result.output
    assert "# My voice embedding" in (out / CARD_FILE).read_text()
    assert "license: cc-by-4.0" in (out / CARD_FILE).read_text()
    again = cli("export", checkpoint, out)
    assert again.exit_code == 2 and "--overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    assert cli("export", checkpoint, out, "--overwrite", "--license", "apache-2.0").exit_code == 0
    assert "license: apache-2.0" in (out / CARD_FILE).read_text() and (out / ".git").is_dir()
    bad = cli("export", checkpoint, tmp_path / "other", "--license", "my license; rm")
    assert bad.exit_code == 2 and "--license" in bad.output


def _break(folder, case):
    if case == "no-config":
        (folder / CONFIG_FILE).unlink()
    elif case == "no-weights":
        (folder / MODEL_FILE).unlink()
    elif case == "config-not-json":
        (folder / CONFIG_FILE).write_bytes(b"\x80\x81 not json")
    elif case == "config-nested":
        (folder / CONFIG_FILE).write_text("[" * 100_000 + "]" * 100_000)
    elif case == "config-other-format":
        config = json.loads((folder / CONFIG_FILE).read_text())
        config["format"] = "something-else"
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    elif case == "weights-replaced":
        (folder / MODEL_FILE).write_bytes((folder / MODEL_FILE).read_bytes()[:-8] + b"\0" * 8)
    elif case in ("weights-truncated", "weights-pickle", "weights-misfit"):
        config = json.loads((folder / CONFIG_FILE).read_text())
        if case == "weights-truncated":
            (folder / MODEL_FILE).write_bytes((folder / MODEL_FILE).read_bytes()[:100])
        elif case == "weights-pickle":
            (folder / MODEL_FILE).write_bytes(b"\x80\x04\x95 a pickle, not safetensors")
        else:
            config["model"]["width"] = 16
        # The digest made to agree: the file itself must still be refused.
        config["weights_sha256"] = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
        (folder / CONFIG_FILE).write_text(json.dumps(config))
    elif case == "config-huge-width":
        config = json.loads((folder / CONFIG_FILE).read_text())
        config["model"]["width"] = 10**9
        (folder / CONFIG_FILE).write_text(json.dumps(config))


BROKEN = {
    "no-config": "no config.json", "no-weights": "no model.safetensors", "config-not-json": "unreadable JSON",
    "config-nested": "unreadable JSON", "config-other-format": "not a doppeltrain-embedding config",
    "weights-replaced": "differs from config.json", "weights-truncated": "unreadable safetensors",
    "weights-pickle": "unreadable safetensors", "weights-misfit": "do not fit the configured model",
    "config-huge-width": "model.width must be an integer",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_bad_folder_is_refused_in_one_line(cli, folder, tmp_path, case):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    _break(broken, case)
    with pytest.raises(CheckpointError, match=BROKEN[case]):  # ModelFolderError is one
        load_model_folder(broken)
    sf.write(tmp_path / "x.wav", _audio(1.0).numpy(), SR)
    result = cli("embed", broken, tmp_path / "x.wav", "--device", "cpu", "--no-progress")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and BROKEN[case] in lines[0], result.output
    assert "broken" in lines[0] and not (tmp_path / "embeddings.npy").exists()
