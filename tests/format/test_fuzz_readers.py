"""Fuzzing the dataset readers (issue 10 item 8): manifest.json, a sample's JSON and audio,
and the member layout of a shard tar, each mutated from a valid one or made up whole.

Properties, for every input: the only exception is the reader's one-line error type
(FormatError, RecipeError, VerifyError; the trainer's sample reader raises none: it skips
and counts) with a one-line message; the call ends within
``SECONDS`` (no hang); and it allocates at most ``MEGABYTES`` (no claim in the data sizes
the memory). The suite runs ``DOPPELGANGERS_FUZZ_EXAMPLES`` examples a target (a short
run); ``make fuzz`` runs many more and prints hypothesis's statistics.
"""

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import fuzzing
import numpy as np
import pytest
from fuzzing import fuzz_settings
from hypothesis import assume, given
from hypothesis import strategies as st

from doppelgen.format import (
    MANIFEST_NAME,
    FormatError,
    decode_clip,
    decode_pair,
    iter_shard_pairs,
    iter_tar_members,
    parse_manifest,
    read_manifest,
    shard_name,
)
from doppelgen.paper_recipes import load_recipe
from doppelgen.publish.shard_checks import ShardExpectation, check_shard
from doppelgen.publish.verify import VerifyError, verify_dataset
from doppelgen.recipe import RecipeError, make_recipe
from doppelgen.render.loop import render_dataset
from doppeltrain.data.datasets import ShardRef
from doppeltrain.data.samples import SampleReader

SECONDS = 20  # generous: the machine is shared; a hang is minutes
MEGABYTES = 100
FUZZ = fuzz_settings(100)


def bounded(what: str):
    """Fail if the block runs past SECONDS or allocates past MEGABYTES (traced)."""
    return fuzzing.bounded(what, SECONDS, MEGABYTES, extra_address_space=None)


def one_line_error(error: Exception) -> None:
    message = str(error)
    assert message and "\n" not in message and "\r" not in message, repr(message)


# --- data: a small real dataset and its parts ------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """2 shards of 2 pairs (the session's batch shape of 8, so nothing compiles)."""
    out = tmp_path_factory.mktemp("fuzz-small")
    render_dataset(make_recipe("voice", n_shards=2, pairs_per_shard=2), out, batch_size=8, workers=0, progress=False)
    return out


class Parts(dict):
    """The valid pieces strategies start from (a short repr: hypothesis prints it)."""

    def __repr__(self) -> str:
        return "parts"


@pytest.fixture(scope="module")
def parts(small) -> dict:
    members = list(iter_tar_members(small / shard_name(0)))
    return Parts({
        "manifest": json.loads((small / MANIFEST_NAME).read_text()),
        "members": members,
        "sample": {name.split(".", 1)[1]: data for name, data in members[:3]},
    })


# --- strategies ------------------------------------------------------------------------

EDGES = [2**64, 2**32, -1, 0, 1e308, -1e308, 5e-324, float("nan"), float("inf"), -float("inf")]
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(EDGES)
    | st.sampled_from([1, -1]).map(lambda sign: sign * 10**1000)
    | st.text(max_size=12) | st.sampled_from(["", "../x", "/etc/passwd", "a\nb", "pairs-000001.tar", "flac", "wav"])
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10
)
shard_names = st.sampled_from([
    "pairs-000000.tar", "pairs-000001.tar", "pairs-000002.tar", "../pairs-000001.tar", "/tmp/pairs-000001.tar",
    "pairs-000001.tar; touch MARKER", "pairs-000001.tar\n", "pairs-٠٠٠٠٠١.tar", "x/pairs-000000.tar", "",
]) | json_values


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


raw_json = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
    st.integers(1, 5_000).map(nested),
    st.integers(1, 100).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"NaN", b"Infinity", b"1e999", b"9" * 5000, b"\xef\xbb\xbf{}", b'"\\ud800"', b"{" * 3 + b"\xff"]),
)


def set_path(document, path, value):
    """Set (or with value ``...``, delete) ``document[path[0]][path[1]]...``; False if the
    path does not exist."""
    target = document
    for step in path[:-1]:
        try:
            target = target[step]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        if value is ...:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        return False
    return True


MANIFEST_PATHS = [
    ("recipe",), ("record",), ("recipe", "format"), ("recipe", "synth"), ("recipe", "synth", "name"), ("recipe", "synth", "args"),
    ("recipe", "rng"), ("record", "shards"), ("record", "param_names"), ("record", "platform"), ("record", "software"),
    *[("recipe", field) for field in ("sample_rate", "duration", "control_rate", "eps", "delta", "seed", "n_layers",
                                      "pairs_per_shard", "n_shards", "codec", "extra")],
    *[("record", "shards", shard, field) for shard in (0, 1) for field in ("name", "n_pairs", "bytes", "sha256", "peak")],
    ("record", "shards", 0), ("record", "shards", 2),
]


@st.composite
def manifests(draw, parts) -> bytes:
    """A manifest's bytes: a valid one with a few fields replaced, deleted or corrupted."""
    if draw(st.integers(0, 9)) == 0:
        return draw(raw_json)
    document = json.loads(json.dumps(parts["manifest"]))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(MANIFEST_PATHS))
        value = draw(shard_names if path[-1] == "name" else st.just(...) | json_values)
        set_path(document, path, value)
    data = json.dumps(document, allow_nan=True).encode()
    if draw(st.integers(0, 4)) == 0:  # a corrupted file: cut, or a byte changed
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=4))
    return data


SAMPLE_PATHS = [("index",), ("seed",), ("gain",), ("gain", 0), ("gain", 1), ("params",), ("params", "base"), ("params", "a"),
                ("params", "b", 0), ("layers",), ("source",)]


@st.composite
def samples(draw, parts) -> dict:
    """A sample's members by extension: the JSON and audio of a valid pair, mutated."""
    members = dict(parts["sample"])
    if draw(st.booleans()):
        meta = json.loads(members["json"])
        for _ in range(draw(st.integers(1, 3))):
            set_path(meta, draw(st.sampled_from(SAMPLE_PATHS)), draw(st.just(...) | json_values))
        members["json"] = json.dumps(meta, allow_nan=True).encode()
    else:
        members["json"] = draw(raw_json)
    for extension in ("a.flac", "b.flac"):
        choice = draw(st.integers(0, 5))
        if choice == 0:
            del members[extension]
        elif choice == 1:
            members[extension] = draw(st.binary(max_size=300))
        elif choice == 2:
            data = members[extension]
            cut = draw(st.integers(0, len(data)))
            members[extension] = data[:cut]
        elif choice == 3:
            data = bytearray(members[extension])
            position = draw(st.integers(0, min(len(data) - 1, 200)))  # the header, mostly
            data[position] = draw(st.integers(0, 255))
            members[extension] = bytes(data)
    return members


MEMBER_TYPES = [tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE]
member_names = st.sampled_from([
    "0000000000.a.flac", "0000000000.json", "0000000001.b.flac", "0000000007.json", "junk", "junk.txt", ".hidden",
    "../0000000000.a.flac", "/abs/0000000000.json", "dir/0000000001.a.flac", "0000000000", "a\nb.json", "x" * 300 + ".json",
    "٠٠٠٠٠٠٠٠٠٠.json", "0000000000..json", "0000000000.a.flac/",
]) | st.text(max_size=20)


@st.composite
def tars(draw, parts) -> bytes:
    """A shard tar: the real members reordered, dropped, duplicated, renamed, retyped or
    resized, in one of the tar formats, possibly cut or with a byte changed."""
    members = [list(m) for m in parts["members"]]
    members = draw(st.permutations(members)) if draw(st.booleans()) else members
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["drop", "duplicate", "rename", "junk", "resize"]))
        if not members and action != "junk":
            continue
        index = draw(st.integers(0, max(0, len(members) - 1)))
        if action == "drop":
            members.pop(index)
        elif action == "duplicate":
            members.insert(draw(st.integers(0, len(members))), list(members[index]))
        elif action == "rename":
            members[index][0] = draw(member_names)
        elif action == "junk":
            members.insert(index, [draw(member_names), draw(st.binary(max_size=100))])
        else:
            members[index][1] = members[index][1][: draw(st.integers(0, len(members[index][1])))]
    types = [draw(st.sampled_from(MEMBER_TYPES)) if draw(st.integers(0, 5)) == 0 else tarfile.REGTYPE for _ in members]
    tar_format = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
            for (name, data), kind in zip(members, types, strict=True):
                info = tarfile.TarInfo(name)
                info.type = kind
                info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE) else 0
                if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    info.linkname = draw(st.sampled_from(["/etc/passwd", "../x", "0000000000.json"]))
                archive.addfile(info, io.BytesIO(data) if info.size else None)
    except (ValueError, UnicodeError):
        assume(False)  # a name this tar format cannot hold
    data = bytearray(buffer.getvalue())
    mutation = draw(st.integers(0, 7))
    if mutation == 0:  # cut anywhere
        data = data[: draw(st.integers(0, len(data)))]
    elif mutation == 1:  # a byte changed anywhere
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif mutation == 2:  # a byte of the first header changed (its checksum then fails, mostly)
        data[draw(st.integers(0, 511))] = draw(st.integers(0, 255))
    elif mutation == 3:  # the first header's size field rewritten, with a valid checksum
        size = draw(st.integers(0, 2**87))
        field = f"{size:011o}".encode()[-11:] + b"\0" if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
        data[124:136] = field
        data[148:156] = b" " * 8
        data[148:155] = f"{sum(data[:512]):06o}\0".encode()
    return bytes(data)


# --- the properties --------------------------------------------------------------------


@given(data=st.data())
@FUZZ
def test_manifest_readers_raise_only_their_one_line_errors(small, parts, data):
    manifest = data.draw(manifests(parts))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        (folder / MANIFEST_NAME).write_bytes(manifest)
        for read in (lambda: parse_manifest(manifest, "here"), lambda: read_manifest(folder)):
            with bounded("read_manifest"):
                try:
                    read()
                except FormatError as error:
                    one_line_error(error)
        with bounded("load_recipe"):
            try:
                load_recipe(folder / MANIFEST_NAME)
            except RecipeError as error:
                one_line_error(error)


@given(data=st.data())
@FUZZ
def test_verify_reports_a_fuzzed_manifest_in_lines(small, parts, data):
    manifest = data.draw(manifests(parts))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "d"
        shutil.copytree(small, folder)
        (folder / MANIFEST_NAME).write_bytes(manifest)
        with bounded("verify"):
            try:
                report = verify_dataset(folder)
            except VerifyError as error:
                one_line_error(error)
            else:
                for problem in report.problems:
                    one_line_error(Exception(problem))


@given(data=st.data())
@FUZZ
def test_decode_pair_raises_only_format_errors(parts, data):
    members = data.draw(samples(parts))
    with bounded("decode_pair"):
        try:
            pair = decode_pair("0000000000", members)
        except FormatError as error:
            one_line_error(error)
        else:
            assert pair.a.shape == pair.b.shape and 0 < pair.meta["gain"][0] <= 1e6
    with bounded("decode_clip"):
        for extension in ("a.flac", "b.flac"):
            try:
                decode_clip(members.get(extension, b""))
            except FormatError as error:
                one_line_error(error)


@given(data=st.data())
@FUZZ
def test_shard_readers_survive_any_member_layout(small, parts, data):
    shard = data.draw(tars(parts))
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "d"
        shutil.copytree(small, folder)
        (folder / shard_name(0)).write_bytes(shard)
        for name, read in (("iter_tar_members", iter_tar_members), ("iter_shard_pairs", iter_shard_pairs)):
            with bounded(name):
                try:
                    list(read(folder / shard_name(0)))
                except FormatError as error:
                    one_line_error(error)
        with bounded("the trainer's SampleReader"):
            reader = SampleReader(16000)
            rows = np.zeros((2, 16000), np.float32)
            for sample in reader.samples([ShardRef(url=str(folder / shard_name(0)), n_pairs=2, n_samples=16000)]):
                members = {name: value for name, value in sample.items() if not name.startswith("__")}
                try:
                    reader.decode_pair_into(sample["__key__"], members, rows[0], rows[1])
                except FormatError as error:
                    one_line_error(error)
        expectation = ShardExpectation(index=0, codec="flac", sample_rate=16000, n_samples=16000, first_pair=0, n_pairs=2, seed=0)
        with bounded("check_shard"):
            problems, _ = check_shard(str(folder), expectation)
        for problem in problems:
            one_line_error(Exception(problem))
        with bounded("verify"):
            report = verify_dataset(folder)
        assert all("\n" not in problem for problem in report.problems)
        # Nothing outside the folder was written or followed: the tree holds what it did.
        assert sorted(p.name for p in Path(temporary).iterdir()) == ["d"]
