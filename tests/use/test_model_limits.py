"""Model files from strangers (issue 17): a checkpoint or model folder may ask for a huge
network, a huge frontend or a frontend that fits no example; every loader refuses it in
one line before anything is allocated (``doppeltrain.model_limits``)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fuzzing import GIB, address_space_cap
from safetensors.torch import save_file
from typer.testing import CliRunner
from use_fixtures import SR, write_checkpoint

from doppeltrain import checkpoint as checkpoint_module
from doppeltrain.checkpoint import CheckpointError, load_checkpoint, load_checkpoint_network, save_checkpoint
from doppeltrain.cli import app
from doppeltrain.model_limits import MAX_PARAMETERS, network_shapes
from doppeltrain.use import hear, inference
from doppeltrain.use.model_folder import CONFIG_FILE, MODEL_FILE, export_model, load_model_folder

HUGE_FRONTEND = {"sample_rate": 384000, "n_fft": 65536, "window_length": 65536, "n_mels": 32769, "f_max": 192000.0}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("limits") / "latest.pt")


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("limits-folder") / "model"
    export_model(checkpoint, out)
    return out


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("limits-audio") / "tone.wav"
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(1.5 * SR)) / SR)).astype(np.float32), SR)
    return path


def hostile_checkpoint(checkpoint: Path, out: Path, model=None, features=None, weights=None) -> Path:
    """A copy of `checkpoint` with config fields replaced (and its weights, e.g. none)."""
    state = load_checkpoint(checkpoint)
    state["config"]["model"].update(model or {})
    state["config"]["features"].update(features or {})
    if weights is not None:
        state["model"] = weights
    torch.save(state, out)
    return out


def hostile_folder(folder: Path, out: Path, edit=None, weights=None) -> Path:
    """A copy of `folder` whose config.json `edit` changed (and whose weights are replaced),
    with weights_sha256 set to match, as a publisher of a hostile folder can."""
    shutil.copytree(folder, out)
    if weights is not None:
        save_file(weights, str(out / MODEL_FILE), metadata={"format": "pt"})
    document = json.loads((out / CONFIG_FILE).read_text())
    if edit is not None:
        edit(document)
    document["weights_sha256"] = hashlib.sha256((out / MODEL_FILE).read_bytes()).hexdigest()
    (out / CONFIG_FILE).write_text(json.dumps(document))
    return out


def every_loader(source: Path, tone: Path, tmp_path: Path):
    """(name, call) for every way a user opens a model: each must raise CheckpointError."""
    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        raise CheckpointError(lines[0])

    loaders = [
        ("inference.load_model", lambda: inference.load_model(source, device="cpu")),
        ("hear.load_model", lambda: hear.load_model(source)),
        ("embed", lambda: cli("embed", source, tone, "--out", tmp_path / "e.npy", "--device", "cpu", "--no-progress")),
    ]
    if source.is_file():
        loaders += [
            ("load_checkpoint_network", lambda: load_checkpoint_network(source)),
            ("export", lambda: cli("export", source, tmp_path / "exported")),
        ]
    else:
        loaders.append(("load_model_folder", lambda: load_model_folder(source)))
    return loaders


def assert_refused_everywhere(source: Path, tone: Path, tmp_path: Path, words: str) -> None:
    for name, call in every_loader(source, tone, tmp_path):
        # A load that allocated what the file asks for would fail here with a RuntimeError
        # or MemoryError (or, without the cap, meet the OOM killer).
        with address_space_cap(GIB), pytest.raises(CheckpointError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and words in message and len(message) < 400, (name, message)
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "exported").exists()


def test_a_19_kb_checkpoint_asking_for_a_huge_network_is_refused_by_every_loader(checkpoint, tone, tmp_path):
    wide = hostile_checkpoint(checkpoint, tmp_path / "wide.pt", model={"model": "resnet18", "width": 4096}, weights={})
    assert wide.stat().st_size < 64 * 1024
    assert_refused_everywhere(wide, tone, tmp_path, f"more than the {MAX_PARAMETERS} allowed")


def test_a_model_folder_asking_for_a_huge_network_is_refused_by_every_loader(folder, tone, tmp_path):
    def wide(document):
        document["model"].update(model="resnet18", width=4096)

    assert_refused_everywhere(hostile_folder(folder, tmp_path / "wide", wide), tone, tmp_path, "more than the")


def test_weights_that_do_not_fit_are_refused_before_the_network_is_built(checkpoint, folder, tone, tmp_path, monkeypatch):
    def never(config):
        raise AssertionError("the network was built before its weights were checked")

    monkeypatch.setattr(checkpoint_module, "build_model", never)
    # Within the parameter bound (resnet18 at width 128: 45 M parameters), but no weights.
    empty = hostile_checkpoint(checkpoint, tmp_path / "empty.pt", model={"model": "resnet18", "width": 128}, weights={})
    assert_refused_everywhere(empty, tone, tmp_path, "tensor(s) of the network are missing")
    state = load_checkpoint(checkpoint)
    name = next(iter(state["model"]))
    reshaped = dict(state["model"], **{name: torch.zeros(3, 3)})
    misfit = hostile_checkpoint(checkpoint, tmp_path / "misfit.pt", weights=reshaped)
    assert_refused_everywhere(misfit, tone, tmp_path, "has shape (3, 3)")


def test_a_safetensors_header_is_checked_before_the_tensors_are_read(folder, tmp_path, monkeypatch):
    from doppeltrain.use import model_folder

    def never(path):
        raise AssertionError("the tensors were read before the header was checked")

    monkeypatch.setattr(model_folder, "load_file", never)
    weights = {"conv1.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match="do not fit the configured model"):
        load_model_folder(hostile_folder(folder, tmp_path / "misfit", weights=weights))
    broken = hostile_folder(folder, tmp_path / "header", weights=weights)
    data = (broken / MODEL_FILE).read_bytes()
    for length in (2**63, 10**7, 0):  # past the file, past the bound, empty
        (broken / MODEL_FILE).write_bytes(struct.pack("<Q", length) + data[8:])
        hostile_folder(broken, tmp_path / f"header-{length}")
        with pytest.raises(CheckpointError, match="unreadable safetensors .its header length") as caught:
            load_model_folder(tmp_path / f"header-{length}")
        assert len(str(caught.value)) < 300


def test_a_frontend_whose_arrays_would_take_gigabytes_is_refused(checkpoint, folder, tone, tmp_path):
    bomb = hostile_checkpoint(checkpoint, tmp_path / "melbomb.pt", features=HUGE_FRONTEND)
    assert_refused_everywhere(bomb, tone, tmp_path, "mel filterbank")

    def melbomb(document):
        document["frontend"].update(HUGE_FRONTEND)
        document["sample_rate"] = HUGE_FRONTEND["sample_rate"]

    assert_refused_everywhere(hostile_folder(folder, tmp_path / "melbomb", melbomb), tone, tmp_path, "mel filterbank")


@pytest.mark.parametrize("frontend, words", [
    ({"sample_rate": 8000, "f_max": 4000.0}, "one example reads 15600 samples"),  # a window holds 8,000
    ({"example_frames": 2, "hop_length": 65536}, "one example reads 65936 samples"),
    ({"example_frames": 10000, "hop_length": 65536}, "spectrogram of one example"),  # the review's 655 M samples
])
def test_a_frontend_that_cannot_fit_one_example_is_refused_at_load(folder, tone, tmp_path, frontend, words):
    def edit(document):
        document["frontend"].update(frontend)
        document["sample_rate"] = document["frontend"]["sample_rate"]

    assert_refused_everywhere(hostile_folder(folder, tmp_path / "small", edit), tone, tmp_path, words)


def test_a_number_of_unbounded_digits_is_cut_in_the_message(folder, checkpoint, tmp_path):
    def bigint(document):
        document["model"]["embedding_dim"] = 10**400

    with pytest.raises(CheckpointError, match="model.embedding_dim must be an integer") as caught:
        load_model_folder(hostile_folder(folder, tmp_path / "bigint", bigint))
    assert len(str(caught.value)) < 300 and "an integer of 1329 bits" in str(caught.value)
    state = load_checkpoint(checkpoint)
    state["config"]["model"]["x" * 10000] = 1  # an unknown field with a long name
    torch.save(state, tmp_path / "long.pt")
    with pytest.raises(CheckpointError, match="bad config") as caught:
        load_checkpoint_network(tmp_path / "long.pt")
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("field, value", [("embedding_dim", 7), ("sample_rate", 44100), ("embedding_dim", True), ("sample_rate", None)])
def test_top_level_fields_must_agree_with_the_network_and_frontend(folder, tmp_path, field, value):
    def edit(document):
        document[field] = value

    with pytest.raises(CheckpointError, match=f"{field} .* differs from") as caught:
        load_model_folder(hostile_folder(folder, tmp_path / "mismatch", edit))
    assert "\n" not in str(caught.value)


def test_non_finite_weights_are_refused(checkpoint, tmp_path):
    state = load_checkpoint(checkpoint)
    name = next(key for key, tensor in state["model"].items() if tensor.is_floating_point())
    state["model"][name] = state["model"][name].clone()
    state["model"][name].view(-1)[0] = float("nan")
    save_checkpoint(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="non-finite") as caught:
        load_checkpoint_network(tmp_path / "nan.pt")
    assert name in str(caught.value)


def test_only_a_zip_of_stored_records_is_read(checkpoint, tmp_path):
    """A deflated record inflates a thousandfold, and the legacy format allocates what its
    pickle claims before reading: neither is what save_checkpoint writes."""
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(checkpoint) as source, zipfile.ZipFile(deflated, "w") as out:
        for member in source.infolist():
            out.writestr(member.filename, source.read(member.filename), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="is compressed or larger than the file"):
        load_checkpoint(deflated)
    legacy = tmp_path / "legacy.pt"
    torch.save(load_checkpoint(checkpoint), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="the legacy format is not read"):
        load_checkpoint(legacy)


def test_a_zip_entry_whose_name_is_flagged_utf8_but_is_not_is_one_line(checkpoint, tmp_path):
    """Found by make fuzz: one flipped bit in a name of the central directory made zipfile
    raise UnicodeDecodeError while the file was scanned for imports."""
    data = bytearray(checkpoint.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # the last central-directory entry
    data[entry + 8] |= 0x08  # general-purpose flags, bit 11: the name is UTF-8
    data[entry + 46] ^= 0x80  # the name's first byte: no longer valid UTF-8
    broken = tmp_path / "name.pt"
    broken.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as caught:
        load_checkpoint_network(broken)
    assert "\n" not in str(caught.value)


def test_the_size_check_allocates_nothing_and_draws_no_random_number():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    with address_space_cap(GIB // 4):
        shapes = network_shapes("resnet18", 4096, 65536)  # 46 G parameters
    assert shapes["fc.weight"] == (65536, 8 * 4096)
    assert torch.equal(torch.rand(1), expected)


@pytest.mark.parametrize("field", ["f_min", "f_max", "log_offset"])
def test_a_huge_integer_where_a_float_belongs_is_one_line(folder, tmp_path, field):
    """Found by the fuzzer (test_fuzz_models): math.isfinite(10**400) raised OverflowError."""
    def edit(document):
        document["frontend"][field] = 10**400

    with pytest.raises(CheckpointError, match=f"features.{field} must be a finite number") as caught:
        load_model_folder(hostile_folder(folder, tmp_path / "huge", edit))
    assert len(str(caught.value)) < 300


def test_an_opcode_the_safe_unpickler_lacks_is_not_blamed_on_torchs_own_imports(checkpoint, tmp_path):
    """Found by the fuzzer: an integer of 4,000 digits (pickle's LONG4) made loading say the
    file 'holds Python objects (torch._utils._rebuild_tensor_v2)', an import every
    checkpoint has and torch allows."""
    state = load_checkpoint(checkpoint)
    state["config"]["note"] = [10**4000]
    torch.save(state, tmp_path / "long.pt")
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as caught:
        load_checkpoint(tmp_path / "long.pt")
    assert "torch._utils" not in str(caught.value) and "unpickling" not in str(caught.value)


def test_a_file_whose_bytes_claim_a_huge_pickle_string_costs_no_memory(tmp_path):
    """Found by the fuzzer: scanning a file that is not a zip for what its pickle would
    import read a 300 MB 'string' its first opcode claimed (a file's read(n) allocates n
    bytes first)."""
    import tracemalloc

    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x8d" + struct.pack("<Q", 300_000_000) + b"x" * 1000)  # BINUNICODE8 of 300 MB
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="not a zip archive"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MB"
