"""info, card and export on damaged or hostile datasets: one line per problem, never a
traceback, never NaN in a card, and export goes on past a bad pair (issue 10)."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from doppelgen.format import MANIFEST_NAME, pair_key
from doppelgen.pack.packing import PackConfig, pack_folder

from test_verify import rewrite_shard, run_cli


@pytest.fixture()
def dataset(voice_shards, tmp_path):
    return shutil.copytree(voice_shards, tmp_path / "data")


@pytest.fixture()
def quick_pictures(monkeypatch):
    """Pictures reduced to what depends on the pair's data (title, parameter ranking):
    matplotlib's drawing costs seconds a picture and is tested in test_info_export_card."""
    from doppelgen.publish import export

    def picture(pair, manifest, names) -> bytes:
        return f"{export.pair_title(pair.meta, manifest)} {export.param_differences(pair.meta, names)}".encode()

    monkeypatch.setattr(export, "pair_picture", picture, raising=False)


def assert_no_traceback(result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def refused_in_one_line(result) -> str:
    assert_no_traceback(result)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.output
    return result.stderr


def edit_manifest(folder, edit) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    edit(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))  # NaN and Infinity as Python writes them


def edit_pair_json(members, index: int, edit) -> None:
    """Change the JSON of pair ``index`` in a shard's member list."""
    for member in members:
        if member[0] == f"{pair_key(index)}.json":
            meta = json.loads(member[1])
            edit(meta)
            member[1] = json.dumps(meta).encode()


def exported(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def stems(indices) -> list[str]:
    return sorted(f"{pair_key(i)}.{suffix}" for i in indices for suffix in ("a.wav", "b.wav", "png"))


# --- export: every good pair, one line per bad one (rows 16 and 19) -------------------


def test_a_bad_pair_mid_shard_is_reported_and_the_rest_exported(dataset, tmp_path, quick_pictures):
    def break_pair_2(members):
        for member in members:
            if member[0] == f"{pair_key(2)}.a.flac":
                member[1] = b"fLaC" + bytes(200)

    rewrite_shard(dataset, 0, break_pair_2)
    result = run_cli("export", dataset, "--n", "8", "--to", tmp_path / "x")
    assert_no_traceback(result)
    assert result.exit_code == 1 and result.stdout.startswith("8 pairs exported")
    problems = result.stderr.splitlines()
    assert problems[0].startswith("pairs-000000.tar: 0000000002.a: undecodable audio") and problems[-1].startswith("FAILED: 1 ")
    assert len(problems) == 2
    assert exported(tmp_path / "x") == stems([0, 1, 3, 4, 5, 6, 7, 8])


def test_files_are_named_by_the_json_index_whatever_the_member_key(dataset, tmp_path, quick_pictures):
    long_key = "k" * 250  # with ".a.wav" past the 255 bytes a file name may have

    def rename(members):
        for member in members:
            if member[0].startswith(pair_key(1) + "."):
                member[0] = long_key + member[0][len(pair_key(1)):]

    rewrite_shard(dataset, 0, rename)
    result = run_cli("export", dataset, "--n", "3", "--to", tmp_path / "x")
    assert_no_traceback(result)
    assert result.exit_code == 0, result.output
    assert exported(tmp_path / "x") == stems([0, 1, 2])


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda meta: meta.update(params="no"), "params must be an object with lists base, a and b"),
        (lambda meta: meta["params"].update(a=["x"] * len(meta["params"]["a"])), "params.a must be a list of finite numbers"),
        (lambda meta: meta["params"].update(b=meta["params"]["b"][:3]), "params.base, a and b differ in length"),
        (lambda meta: meta["params"]["base"].__setitem__(0, 10**400), "params.base must be a list of finite numbers"),
        (lambda meta: meta.update(index=-1), "sample JSON index must be a whole number >= 0, got -1"),
        (lambda meta: meta.update(index="3"), "sample JSON index must be a whole number >= 0, got '3'"),
        (lambda meta: meta.update(index=True), "sample JSON index must be a whole number >= 0, got True"),
        (lambda meta: meta.update(index=10**10), "index 10000000000 is not a pair index in [0, 10**10)"),
        (lambda meta: meta.update(index=0), "index 0 repeats an exported pair"),
        (lambda meta: meta.update(gain=[float("nan"), 1.0]), ""),
    ],
)
def test_a_pair_with_a_malformed_json_is_one_line(dataset, tmp_path, edit, fragment, quick_pictures):
    rewrite_shard(dataset, 0, lambda members: edit_pair_json(members, 3, edit))
    result = run_cli("export", dataset, "--n", "5", "--to", tmp_path / "x")
    assert_no_traceback(result)
    assert result.exit_code == 1, result.output
    problem, failed = result.stderr.splitlines()
    assert problem.startswith("pairs-000000.tar: 0000000003") and fragment in problem and failed.startswith("FAILED: 1 ")
    assert exported(tmp_path / "x") == stems([0, 1, 2, 4, 5])


def test_junk_members_and_missing_shards_are_reported_once_each(dataset, tmp_path, quick_pictures):
    rewrite_shard(dataset, 1, lambda members: members.insert(3, ["junk.txt", b"hello"]))
    (dataset / "pairs-000002.tar").unlink()
    edit_manifest(dataset, lambda m: m["recipe"].update(n_shards=6))
    result = run_cli("export", dataset, "--n", "100", "--to", tmp_path / "x")
    assert_no_traceback(result)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "pairs-000001.tar: junk: missing junk.json",
        "pairs-000002.tar: missing",
        "pairs-000004.tar to pairs-000005.tar: missing (2 shards)",
        "FAILED: 3 bad pairs or shards skipped; `doppelgen verify` checks the whole dataset",
    ]
    assert exported(tmp_path / "x") == stems(list(range(16)) + list(range(24, 32)))


def test_a_dataset_without_one_good_pair_is_one_line(dataset, tmp_path):
    for shard in range(4):
        rewrite_shard(dataset, shard, lambda members: [m.__setitem__(1, b"{") for m in members if m[0].endswith(".json")])
    error = refused_in_one_line(run_cli("export", dataset, "--to", tmp_path / "x"))
    assert "no readable pairs to export (32 problems; first: pairs-000000.tar: 0000000000.json: invalid JSON" in error


def test_dataset_text_cannot_start_mathtext_or_break_a_line(tmp_path):
    """Recording names and parameter names are dataset text: "$" and newlines are drawn
    and printed as they are, not parsed (matplotlib's mathtext) or split across lines."""
    recordings = tmp_path / "rec"
    recordings.mkdir()
    sf.write(recordings / "odd $x_{1$ name.wav", np.sin(np.arange(20000) / 7).astype(np.float32) * 0.3, 16000)
    pack_folder(recordings, tmp_path / "packed", PackConfig())
    result = run_cli("export", tmp_path / "packed", "--to", tmp_path / "x")
    assert result.exit_code == 0, result.output
    assert exported(tmp_path / "x") == stems([0])


def test_parameter_names_with_dollars_are_drawn(dataset, tmp_path):
    edit_manifest(dataset, lambda m: [p.update(name="$\\frac{" + p["name"] + "$") for p in m["record"]["param_names"]])
    result = run_cli("export", dataset, "--n", "1", "--to", tmp_path / "x")
    assert result.exit_code == 0, result.output


# --- info and card: hostile manifests (row 21 and the last stop's note) ---------------


MANIFEST_EDITS = {
    # format.check_manifest and its JSON reader refuse most; info's own check the rest.
    "nan duration": (lambda m: m["recipe"].update(duration=float("nan")), "NaN is not allowed"),
    "infinite duration": (lambda m: m["recipe"].update(duration=float("inf")), "Infinity is not allowed"),
    "nan peak": (lambda m: m["record"]["shards"][1].update(peak=float("nan")), "NaN is not allowed"),
    "huge n_pairs": (lambda m: m["record"]["shards"][0].update(n_pairs=10**400), "n_pairs"),
    "text n_pairs": (lambda m: m["record"]["shards"][0].update(n_pairs="8"), "n_pairs"),
    "huge peak": (lambda m: m["record"]["shards"][0].update(peak=10**30), "record.shards[0].peak is NaN, infinite or out of range"),
    "text peak": (lambda m: m["record"]["shards"][0].update(peak="loud"), "record.shards[0].peak must be a number"),
    "software list": (lambda m: m["record"].update(software=["jax"]), "record.software must be an object"),
    "platform text": (lambda m: m["record"].update(platform="cpu"), "record.platform must be an object"),
    "synth number": (lambda m: m["recipe"].update(synth=3), "recipe.synth must be a name or an object"),
    "render_seconds text": (lambda m: m["record"].update(render_seconds="fast"), "record.render_seconds must be a number"),
    "shards object": (lambda m: m["record"].update(shards={"a": 1}), "record.shards is not a list"),
    "shard name": (lambda m: m["record"]["shards"][0].update(name="x|y"), "record.shards[0].name"),
    "skipped number": (lambda m: m["record"].update(skipped=3), "record.skipped must be a list"),
    "codec": (lambda m: m["recipe"].update(codec=7), "unknown codec 7"),
    "record list": (lambda m: m.update(record=[]), "record is not an object"),
}


@pytest.mark.parametrize("command", ["info", "info --json", "card", "export"])
@pytest.mark.parametrize("name", list(MANIFEST_EDITS))
def test_a_hostile_manifest_is_refused_in_one_line(dataset, tmp_path, name, command):
    edit, fragment = MANIFEST_EDITS[name]
    edit_manifest(dataset, edit)
    extra = ["--to", str(tmp_path / "x")] if command == "export" else []
    error = refused_in_one_line(run_cli(*command.split()[:1], dataset, *command.split()[1:], *extra))
    assert fragment in error
    assert not (dataset / "README.md").exists() and not (tmp_path / "x").exists()


def test_statistics_that_overflow_are_refused(dataset):
    edit_manifest(dataset, lambda m: [s.update(peak=1.5e308) for s in m["record"]["shards"]])
    assert "info.shard_stats.peak.mean is not finite" in refused_in_one_line(run_cli("info", dataset))


def test_info_json_and_the_card_never_write_nan(dataset):
    """The refusal above keeps NaN out; should a NaN reach them anyway, writing fails
    instead of producing invalid JSON."""
    from doppelgen.publish.card import card_body
    from doppelgen.format import read_manifest
    from doppelgen.publish.info import describe_dataset, description_json

    desc = describe_dataset(dataset)
    json.loads(description_json(desc), parse_constant=lambda name: pytest.fail(f"{name} in info --json"))
    desc["recipe"]["duration"] = float("nan")
    with pytest.raises(ValueError, match="not JSON compliant"):
        description_json(desc)
    with pytest.raises(ValueError, match="not JSON compliant"):
        card_body(desc, read_manifest(dataset), "title")
