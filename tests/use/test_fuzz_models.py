"""Fuzzing the model loaders (issue 17 item 3): a checkpoint's config, tensors and bytes, and
a model folder's config.json and safetensors header, each mutated from a valid one.

Properties, for every input: loading (``inference.load_model``, which every command and
the HEAR API use) either gives a model that embeds a clip, or raises CheckpointError (a
ModelFolderError for a folder) with a one-line message; it ends within ``SECONDS``; and
it stays inside a memory cap: ``TRACED_MEGABYTES`` of Python and numpy allocations and
1 GiB more address space for everything, torch's allocator included (an allocation past
that fails, so a file that claims gigabytes shows as an error here instead of meeting
the OOM killer). The suite runs ``DOPPELGANGERS_FUZZ_EXAMPLES`` examples a target (10
by default); ``make fuzz`` runs many more and prints hypothesis's statistics.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from fuzzing import GIB, bounded, fuzz_settings
from hypothesis import HealthCheck, event, given
from hypothesis import strategies as st
from use_fixtures import SR, write_checkpoint

from doppeltrain.checkpoint import CheckpointError, load_checkpoint
from doppeltrain.config import FeatureConfig, ModelConfig
from doppeltrain.use import inference
from doppeltrain.use.model_folder import CONFIG_FILE, MODEL_FILE, export_model

SECONDS = 30  # generous: the machine is shared; a hang is minutes
# The largest frontend allowed builds its filterbank in float64 with a few temporaries of
# 32 MiB (model_limits.MAX_FILTERBANK_ENTRIES).
TRACED_MEGABYTES = 256
FUZZ = fuzz_settings(10, HealthCheck.function_scoped_fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- strategies ------------------------------------------------------------------------

EDGES = [2**63, 2**64, 2**31, -1, 0, 1, 1e308, -1e308, 5e-324, float("nan"), float("inf"), -float("inf")]
scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-2, 70_000) | st.floats() | st.sampled_from(EDGES)
    | st.integers(300, 4000).map(lambda digits: 10**digits)
    | st.text(max_size=12) | st.sampled_from(["", "resnet18", "small", "resnet50", "../x", "a\nb", "\u202e"])
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8
)
MODEL_FIELDS = [field for field in ModelConfig.__dataclass_fields__]
FRONTEND_FIELDS = [field for field in FeatureConfig.__dataclass_fields__]
# Frontends near the edges of the bounds: each field from a few telling values.
frontend_values = {
    "sample_rate": st.sampled_from([1, 8000, 16000, 44100, 48000, 383999, 384000, 384001]),
    "n_fft": st.sampled_from([1, 2, 400, 512, 4096, 8192, 65536, 65537]),
    "window_length": st.sampled_from([1, 400, 512, 4096, 65536]),
    "hop_length": st.sampled_from([1, 160, 480, 65536]),
    "n_mels": st.sampled_from([1, 64, 128, 257, 2049, 32769]),
    "example_frames": st.sampled_from([1, 2, 96, 1000, 10000, 10001]),
    "f_min": st.sampled_from([0.0, 125.0, -1.0, float("nan")]),
    "f_max": st.sampled_from([7500.0, 4000.0, 192000.0, float("inf")]),
}
# A field of its own section most of the time (so the checks past "unknown field" are
# reached), of another section or unknown otherwise.
edits = st.lists(
    st.one_of(
        st.tuples(st.just("model"), st.sampled_from(MODEL_FIELDS), json_values),
        st.tuples(st.just("features"), st.sampled_from(FRONTEND_FIELDS), json_values),
        st.tuples(st.just("features"), st.sampled_from(sorted(frontend_values)), st.integers(-2, 2**20) | st.floats()),
        st.tuples(st.sampled_from(["model", "features", "top"]), st.sampled_from(MODEL_FIELDS + FRONTEND_FIELDS + ["extra", "model", "features"]), json_values),
    ),
    min_size=0, max_size=3,
)
frontends = st.fixed_dictionaries({}, optional=frontend_values)
# Networks near the edges of the bounds (the weights stay the small network's).
networks = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["small", "resnet18"]),
    "width": st.sampled_from([1, 8, 9, 64, 4096, 4097]),
    "embedding_dim": st.sampled_from([1, 32, 65536, 65537]),
})


def apply_edits(config: dict, changes, frontend_key: str = "features") -> None:
    for section, field, value in changes:
        target = config if section == "top" else config.setdefault(frontend_key if section == "features" else "model", {})
        if isinstance(target, dict):
            target[field] = value


# --- the property ----------------------------------------------------------------------


def one_line_error(error: Exception, record: bool = True) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message and len(message) < 1000, repr(message)
    # hypothesis's statistics then show which checks the inputs reached.
    reason = message.split(": ", 1)[-1] if message.startswith("/") else message
    if record:
        event(f"{type(error).__name__}: {re.sub(r'[0-9]+', 'N', reason)[:70]}")


def loads_or_refuses(source: Path, what: str, record: bool = True) -> None:
    """Load `source` as every command does; a model it gives must embed a clip. With
    `record`, the outcome is a hypothesis event (inside a test only)."""
    with bounded(what, SECONDS, TRACED_MEGABYTES, GIB):
        try:
            model = inference.load_model(source, device="cpu")
        except CheckpointError as error:
            one_line_error(error, record)
            return
        try:
            vectors = inference.embed(model, torch.linspace(-0.5, 0.5, SR // 2), SR)
        except ValueError as error:  # e.g. 16 kHz cannot be resampled to the model's rate
            one_line_error(error, record)
            return
        assert vectors.shape == (1, model.embedding_dim)
        if record:
            event("loaded and embedded")


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-models")
    checkpoint = write_checkpoint(root / "latest.pt")
    folder = root / "model"
    export_model(checkpoint, folder)
    loads_or_refuses(checkpoint, "warm-up", record=False)  # lazy imports and thread pools before the caps
    loads_or_refuses(folder, "warm-up", record=False)
    return Valid({
        "checkpoint": checkpoint, "state": load_checkpoint(checkpoint), "bytes": checkpoint.read_bytes(),
        "folder": folder, "document": json.loads((folder / CONFIG_FILE).read_text()),
        "weights": (folder / MODEL_FILE).read_bytes(),
    })


class Valid(dict):
    """The valid model files strategies start from (a short repr: hypothesis prints it)."""

    def __repr__(self) -> str:
        return "valid"


@pytest.fixture
def scratch(tmp_path):
    return tmp_path


def write_folder(valid: dict, out: Path, document: dict, weights: bytes) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    (out / MODEL_FILE).write_bytes(weights)
    document["weights_sha256"] = hashlib.sha256(weights).hexdigest()  # as a publisher sets it
    (out / CONFIG_FILE).write_text(json.dumps(document))
    return out


def plain(state) -> dict:
    """A shallow copy of a checkpoint state whose config and weights may be edited."""
    copy = dict(state)
    copy["config"] = json.loads(json.dumps(state["config"]))
    copy["model"] = dict(state["model"])
    return copy


# --- targets ---------------------------------------------------------------------------


tensor_edits = st.lists(
    st.tuples(
        st.sampled_from(["drop", "reshape", "retype", "add", "nan"]),
        st.integers(0, 10_000),
        st.lists(st.integers(0, 5), min_size=0, max_size=4),
        st.sampled_from([torch.float16, torch.float64, torch.int8, torch.bool, torch.complex64]),
    ),
    max_size=3,
)


@FUZZ
@given(changes=edits, frontend=frontends, network=networks, tensors=tensor_edits)
def test_fuzz_checkpoint_config_and_tensors(valid, scratch, changes, frontend, network, tensors):
    state = plain(valid["state"])
    state["config"]["features"].update(frontend)
    state["config"]["model"].update(network)
    apply_edits(state["config"], changes)
    names = list(state["model"])
    for kind, pick, shape, dtype in tensors:
        name = names[pick % len(names)]
        if kind == "drop":
            state["model"].pop(name, None)
        elif kind == "reshape":
            state["model"][name] = torch.zeros(shape)
        elif kind == "retype" and name in state["model"]:
            state["model"][name] = state["model"][name].to(dtype)
        elif kind == "add":
            state["model"][f"extra.{pick}"] = torch.zeros(shape)
        elif kind == "nan" and name in state["model"] and state["model"][name].is_floating_point():
            state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    path = scratch / "fuzzed.pt"
    try:
        torch.save(state, path)
    except (TypeError, ValueError, OverflowError, RecursionError):
        return  # not a state torch.save can write
    loads_or_refuses(path, "checkpoint")


@FUZZ
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=6),
    cut=st.none() | st.floats(0, 1),
    member=st.none() | st.tuples(st.sampled_from(["data.pkl", "data/0", "version", "byteorder"]), st.binary(max_size=64),
                                 st.booleans()),
)
def test_fuzz_checkpoint_bytes(valid, scratch, flips, cut, member):
    data = bytearray(valid["bytes"])
    if member is not None:  # a zip member replaced (stored, or deflated as torch.save never writes)
        suffix, content, deflate = member
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(bytes(data))) as source, zipfile.ZipFile(out, "w") as target:
            for info in source.infolist():
                body = content if info.filename.endswith(suffix) else source.read(info.filename)
                target.writestr(info.filename, body, compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
        data = bytearray(out.getvalue())
    for where, mask in flips:
        data[int(where * len(data))] ^= mask
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = scratch / "fuzzed.pt"
    path.write_bytes(bytes(data))
    loads_or_refuses(path, "checkpoint bytes")


@FUZZ
@given(changes=edits, frontend=frontends, network=networks, training=st.none() | json_values, top_agrees=st.booleans())
def test_fuzz_model_folder_config(valid, scratch, changes, frontend, network, training, top_agrees):
    document = json.loads(json.dumps(valid["document"]))
    document["frontend"].update(frontend)
    document["model"].update(network)
    if top_agrees:  # as an honest publisher writes them
        document["sample_rate"] = document["frontend"].get("sample_rate")
        document["embedding_dim"] = document["model"].get("embedding_dim")
    apply_edits(document, changes, frontend_key="frontend")
    if training is not None and not top_agrees:
        document["training"] = training
    try:
        json.dumps(document)
    except (ValueError, RecursionError):
        return
    loads_or_refuses(write_folder(valid, scratch / "model", document, valid["weights"]), "model folder config")


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "C64", "F8_E4M3", "X", ""]
header_edits = st.lists(
    st.tuples(
        st.integers(0, 10_000),
        st.sampled_from(["shape", "dtype", "offsets", "name", "drop", "entry"]),
        st.lists(st.integers(-1, 2**40) | st.sampled_from([2**64, 0, 1]), max_size=4) | json_values,
        st.sampled_from(DTYPES),
    ),
    min_size=1, max_size=3,
)


@FUZZ
@given(changes=header_edits, length=st.none() | st.integers(-1, 2**64 - 1) | st.sampled_from([0, 2, 2**63]),
       tail=st.none() | st.integers(0, 2**20))
def test_fuzz_safetensors_header(valid, scratch, changes, length, tail):
    weights = valid["weights"]
    (size,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + size])
    body = weights[8 + size:]
    names = [name for name in header if name != "__metadata__"]
    for pick, kind, value, dtype in changes:
        name = names[pick % len(names)]
        entry = header.get(name)
        if not isinstance(entry, dict):
            continue
        if kind == "shape":
            entry["shape"] = value
        elif kind == "dtype":
            entry["dtype"] = dtype
        elif kind == "offsets":
            entry["data_offsets"] = value
        elif kind == "name":
            header[str(value)[:40]] = header.pop(name)
        elif kind == "drop":
            header.pop(name)
        else:
            header[name] = value
    try:
        text = json.dumps(header).encode()
    except (ValueError, RecursionError):
        return
    prefix = struct.pack("<Q", len(text) if length is None else max(0, length) % 2**64)
    data = prefix + text + (body if tail is None else body[:tail])
    loads_or_refuses(write_folder(valid, scratch / "model", json.loads(json.dumps(valid["document"])), data), "safetensors header")


def test_a_valid_model_still_loads_under_the_caps(valid):
    """The property's caps leave room for a real model: the fuzz would not pass vacuously."""
    with bounded("valid", SECONDS, TRACED_MEGABYTES, GIB):
        model = inference.load_model(valid["folder"], device="cpu")
        assert inference.embed(model, torch.zeros(SR), SR).shape == (1, model.embedding_dim)
