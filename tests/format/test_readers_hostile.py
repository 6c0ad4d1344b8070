"""Readers of a dataset given hostile input (issue 10 rows 1, 3, 8, 9, 10, 13, 18, 21):
every problem is one line naming what is wrong, nothing is read outside the dataset, and
memory is bounded by what is on disk."""

import io
import json
import shutil
import struct
import tarfile
import tracemalloc

import pytest
from typer.testing import CliRunner

from doppelgen.cli import app
from doppelgen.files import file_sha256
from doppelgen.format import (
    MANIFEST_NAME,
    FormatError,
    check_manifest,
    decode_clip,
    decode_pair,
    iter_tar_members,
    parse_manifest,
    read_manifest,
    shard_index,
    shard_name,
    stats_name,
)
from doppelgen.publish.verify import verify_dataset


@pytest.fixture()
def dataset(voice_shards, tmp_path):
    """A private copy of the session's voice dataset, free to damage."""
    return shutil.copytree(voice_shards, tmp_path / "data")


def edit_manifest(folder, edit) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    edit(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def write_tar(path, members) -> None:
    """A tar of ``(name, bytes)`` regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


def rewrite_shard(folder, shard: int, edit) -> None:
    """Re-tar a shard after ``edit(list of [name, bytes])``, then reseal its checksums in
    the stats file and the manifest, so that only the members can be wrong."""
    members = [[name, data] for name, data in iter_tar_members(folder / shard_name(shard))]
    edit(members)
    write_tar(folder / shard_name(shard), members)
    digest, size = file_sha256(folder / shard_name(shard))
    stats = json.loads((folder / stats_name(shard)).read_text())
    stats.update(sha256=digest, bytes=size)
    (folder / stats_name(shard)).write_text(json.dumps(stats))

    def reseal(manifest):
        manifest["record"]["shards"][shard].update(sha256=digest, bytes=size)

    edit_manifest(folder, reseal)


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


# --- rows 1 and 3: a shard name is exactly pairs-NNNNNN.tar ----------------------------


HOSTILE_NAMES = [
    "pairs-000001.tar; touch MARKER; echo /pairs-000001.tar",
    "../other/pairs-000001.tar",
    "/etc/pairs-000001.tar",
    "sub/pairs-000001.tar",
    "pairs-000001.tar\n",
    "pairs-٠٠٠٠٠١.tar",  # Arabic-Indic digits are \d, not [0-9]
    "pairs-1.tar",
    7,
    None,
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_manifest_naming_a_shard_otherwise_is_refused_by_every_reader(dataset, name):
    assert shard_index(name) is None
    edit_manifest(dataset, lambda m: m["record"]["shards"][1].update(name=name))
    with pytest.raises(FormatError, match=r"record\.shards\[1\]\.name must be pairs-NNNNNN\.tar with no folder, got "):
        read_manifest(dataset)
    report = verify_dataset(dataset)
    assert len(report.problems) == 1 and "record.shards[1].name must be pairs-NNNNNN.tar" in report.problems[0]
    assert "\n" not in report.problems[0] and report.shards_checked == 4  # checked from the disk instead
    info = invoke("info", dataset)
    assert info.exit_code == 2 and info.stderr.count("\n") == 1 and "record.shards[1].name" in info.stderr


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["record"]["shards"][1].update(n_pairs=10**12), r"n_pairs of pairs-000001\.tar must be a whole number in \[0, 8\], got 1000000000000"),
        (lambda m: m["record"]["shards"][1].update(n_pairs=True), r"n_pairs of pairs-000001\.tar must be a whole number in \[0, 8\], got True"),
        (lambda m: m["record"]["shards"][1].update(n_pairs=-1), r"n_pairs of pairs-000001\.tar must be a whole number"),
        (lambda m: m["record"]["shards"][1].update(name="pairs-000000.tar"), r"record\.shards\[1\]: pairs-000000\.tar is listed twice"),
        (lambda m: m["record"]["shards"][1].update(name="pairs-000009.tar"), r"pairs-000009\.tar is outside the recipe's 4 shards"),
        (lambda m: m["record"]["shards"][1].update(sha256="../x"), r"sha256 of pairs-000001\.tar must be 64 hex digits"),
        (lambda m: m["record"]["shards"][1].update(bytes=-5), r"bytes of pairs-000001\.tar must be a whole number >= 0"),
        (lambda m: m["record"].update(shards={"a": 1}), r"record\.shards is not a list"),
        (lambda m: m.update(record=[1]), r"the manifest's record is not an object"),
        (lambda m: m["recipe"].update(n_shards=10**9), r"n_shards must lie in \[1, 100000\], got 1000000000"),
        (lambda m: m["recipe"].update(format=True), r"unknown format version True"),
        (lambda m: m["recipe"].update(codec="mp3"), r"unknown codec 'mp3'"),
    ],
)
def test_check_manifest_refuses_bad_records_and_numbers(voice_shards, edit, message):
    manifest = json.loads((voice_shards / MANIFEST_NAME).read_text())
    edit(manifest)
    with pytest.raises(FormatError, match=rf"^here: .*{message}"):
        check_manifest(manifest, "here")


# --- rows 7 and 21: NaN and Infinity -----------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_manifest_numbers_are_one_line_in_info_card_export_and_verify(dataset, literal):
    text = (dataset / MANIFEST_NAME).read_text().replace('"duration": 1.0', f'"duration": {literal}')
    assert literal in text
    (dataset / MANIFEST_NAME).write_text(text)
    for command in (["info", dataset], ["card", dataset], ["export", dataset, "--to", dataset.parent / "x"]):
        result = invoke(*command)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, (command, result.output)
        assert "unreadable manifest (invalid JSON" in result.stderr and "nan h" not in result.output
    assert not (dataset / "README.md").exists()
    report = verify_dataset(dataset)
    assert report.problems[0].startswith("manifest.json: ") and "invalid JSON" in report.problems[0]


# --- row 8: JSON nesting ---------------------------------------------------------------


def test_a_deeply_nested_manifest_is_one_line_in_every_command(dataset):
    (dataset / MANIFEST_NAME).write_bytes(b"[" * 100_000)
    for command in (["info", dataset], ["card", dataset], ["export", dataset, "--to", dataset.parent / "x"],
                    ["render", dataset.parent / "r", "--manifest", dataset / MANIFEST_NAME, "-q"]):
        result = invoke(*command)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, (command, result.output)
        assert "JSON nested deeper than 32 levels" in result.stderr
    verify = invoke("verify", dataset, "--workers", "0")
    assert verify.exit_code == 1 and verify.stdout.splitlines()[0].endswith("unreadable manifest (JSON nested deeper than 32 levels)")
    # Nested just past the limit, with no recursion error to catch: still refused.
    with pytest.raises(FormatError, match="nested deeper than 32 levels"):
        parse_manifest(b'{"recipe": ' + b"[" * 40 + b"]" * 40 + b"}", "here")


def test_a_deeply_nested_sample_json_is_a_format_error_naming_the_key(dataset, voice_shards):
    members = {name.split(".", 1)[1]: data for name, data in list(iter_tar_members(voice_shards / shard_name(0)))[:3]}
    for hostile in (b"[" * 100_000, b'{"a":' * 50 + b"1" + b"}" * 50, b" " * (2 << 20)):
        with pytest.raises(FormatError) as caught:
            decode_pair("0000000000", {**members, "json": hostile})
        assert str(caught.value).startswith("0000000000.json: ") and "\n" not in str(caught.value)

    def nest(shard_members):
        shard_members[5][1] = b"[" * 100_000  # pair 1's JSON

    rewrite_shard(dataset, 0, nest)
    assert verify_dataset(dataset).problems == ["pairs-000000.tar: 0000000001.json: JSON nested deeper than 32 levels"]


# --- row 13: a sample's gain ------------------------------------------------------------


@pytest.mark.parametrize("gain", ["[NaN, 1]", "[1e39, 1]", "[1e999, 1]", "[-1, 1]", "[0, 1]", "[true, 1]", '["1", 1]', "[1]", "3"])
def test_a_sample_with_an_absurd_gain_is_refused_naming_key_and_gain(voice_shards, gain):
    members = {name.split(".", 1)[1]: data for name, data in list(iter_tar_members(voice_shards / shard_name(0)))[:3]}
    meta = json.loads(members["json"])
    text = json.dumps({**meta, "gain": "@"}).replace('"@"', gain).encode()
    with pytest.raises(FormatError) as caught:
        decode_pair("0000000000", {**members, "json": text})
    message = str(caught.value)
    assert message.startswith("0000000000.json: ") and "\n" not in message
    assert "gain must be [gain_a, gain_b], two numbers in (0, 1e+06]" in message or "is not allowed" in message or "out of range" in message


# --- row 9: a manifest's claims do not size memory ---------------------------------------


def test_verify_of_a_manifest_claiming_a_billion_shards_stays_small(dataset):
    edit_manifest(dataset, lambda m: m["recipe"].update(n_shards=10**9))
    tracemalloc.start()
    try:
        report = verify_dataset(dataset)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.problems[0].endswith("n_shards must lie in [1, 100000], got 1000000000")
    assert report.shards_checked == 4 and peak < 50 * 2**20


def test_a_header_claiming_a_huge_clip_or_a_member_past_the_end_is_refused_before_reading(tmp_path):
    # A float WAV header whose data chunk claims 2**31 samples, holding 4 bytes.
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    wav = b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    wav += b"data" + struct.pack("<I", 0xFFFFFFF0) + b"\0\0\0\0"
    try:
        audio, _ = decode_clip(wav)
        assert len(audio) <= 1  # libsndfile believes the file's length, not the header
    except FormatError as error:
        assert "undecodable audio" in str(error) or "audio claims" in str(error)
    # A tar member whose header claims 1 TB.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("0000000000.json")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"{}\n"))
    data = bytearray(buffer.getvalue())
    data[124:136] = b"\x80" + (10**12).to_bytes(11, "big")  # GNU base-256 size field
    data[148:156] = b"        "
    data[148:154] = f"{sum(data[:512]):06o}".encode()
    (tmp_path / "big.tar").write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"0000000000\.json claims 1000000000000 bytes"):
        list(iter_tar_members(tmp_path / "big.tar"))


# --- row 18: verify resynchronises on keys ----------------------------------------------


def test_one_junk_member_is_one_problem_not_a_shifted_shard(dataset):
    rewrite_shard(dataset, 1, lambda members: members.insert(6, ["junk.txt", b"hello"]))  # after pair 9
    assert verify_dataset(dataset).problems == [
        "pairs-000001.tar: junk.txt: not a member of any pair (its key is not a 10-digit pair index)"
    ]


def test_a_missing_or_repeated_pair_is_named_once(dataset):
    rewrite_shard(dataset, 1, lambda members: members.__delitem__(slice(6, 9)))  # pair 10
    assert verify_dataset(dataset).problems == [
        "pairs-000001.tar: 0000000010 missing before 0000000011",
        "pairs-000001.tar: holds 7 pairs, the manifest says 8",
    ]
    rewrite_shard(dataset, 2, lambda members: members.__setitem__(slice(9, 9), members[3:6]))  # pair 17 after 18
    assert verify_dataset(dataset).problems[2:] == [
        "pairs-000002.tar: 0000000017: pair 17 again, or out of order",
        "pairs-000002.tar: holds 9 pairs, the manifest says 8",
    ]


def test_member_names_from_the_data_are_printed_on_one_line(dataset):
    rewrite_shard(dataset, 3, lambda members: members.insert(0, ["evil\nname\x1b[2J.txt", b"x"]))
    problems = verify_dataset(dataset).problems
    assert problems == ["pairs-000003.tar: evil\\nname\\x1b[2J.txt: not a member of any pair (its key is not a 10-digit pair index)"]


def with_size_field(tar: bytes, size: int) -> bytes:
    """``tar`` with its first header's size field rewritten (base-256) and checksummed."""
    data = bytearray(tar)
    data[124:136] = b"\x80" + size.to_bytes(11, "big")
    data[148:156] = b" " * 8
    data[148:155] = f"{sum(data[:512]):06o}\0".encode()
    return bytes(data)


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_a_hostile_header_size_costs_no_memory(tmp_path, tar_format):
    """Found by fuzzing: tarfile reads a long-name header's claimed size in one read(n),
    and Python allocated n (24 GB for 2**87), or seek overflowed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        info = tarfile.TarInfo("x" * 300 + ".json")  # a long name: a PAX 'x' or GNU 'L' header first
        info.size = 2
        archive.addfile(info, io.BytesIO(b"{}"))
    for size in (2**40, 2**87):
        (tmp_path / "hostile.tar").write_bytes(with_size_field(buffer.getvalue(), size))
        tracemalloc.start()
        try:
            with pytest.raises(FormatError, match=r"^hostile\.tar: "):
                list(iter_tar_members(tmp_path / "hostile.tar"))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * 2**20
