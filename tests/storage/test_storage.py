"""doppelgen.storage without a server: file:// URLs in every command, and locations that
cannot be used (bad URLs, missing optional packages) as one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from cli_subprocess import assert_one_line, run
from typer.testing import CliRunner

from doppelgen.cli import app
from doppelgen.format import read_manifest
from doppelgen.storage import LocalStore, StorageError, local_folder, open_store
from doppeltrain.cli import main as doppeltrain_main

runner = CliRunner()


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("pairs-")}


def test_file_urls_name_local_folders(tmp_path):
    assert local_folder(f"file://{tmp_path}/a b") == tmp_path / "a b"
    assert local_folder(f"file://{tmp_path}/a%20b") == tmp_path / "a b"
    assert local_folder(f"file://localhost{tmp_path}") == tmp_path
    assert local_folder("relative/folder") == Path("relative/folder")
    assert local_folder("s3://bucket/x") is None
    with pytest.raises(StorageError, match="names a folder on this machine"):
        local_folder("file://elsewhere/data")
    store = open_store(f"file://{tmp_path}")
    assert isinstance(store, LocalStore) and store.where("x") == f"file://{tmp_path}/x" and store.as_given == f"file://{tmp_path}"


def test_a_local_create_has_one_winner(tmp_path):
    store = open_store(tmp_path)
    assert store.create("marker", b"first\n") is True
    assert store.create("marker", b"second\n") is False
    assert (tmp_path / "marker").read_bytes() == b"first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker"]  # no temporary left behind


def test_every_command_takes_a_file_url(tmp_path, voice_shards):
    out = tmp_path / "voice"
    url = f"file://{out}"
    render = runner.invoke(app, ["render", url, "--shards", "4", "--pairs-per-shard", "8", "--batch-size", "8", "--workers", "0", "-q"])
    assert render.exit_code == 0, render.output
    assert "4 shards rendered, 0 already complete, 32 pairs" in render.stdout and f": {url} (complete)" in render.stdout
    assert folder_bytes(out) == folder_bytes(voice_shards)

    verify = runner.invoke(app, ["verify", url, "--workers", "0"])
    assert verify.exit_code == 0 and f"ok: {url}: 4 shards, 32 pairs" in verify.stderr
    info = runner.invoke(app, ["info", url, "--json"])
    assert info.exit_code == 0 and json.loads(info.stdout)["folder"] == url and json.loads(info.stdout)["totals"]["shards_complete_on_disk"] == 4
    export = runner.invoke(app, ["export", url, "--n", "1", "--to", str(tmp_path / "x")])
    assert export.exit_code == 0 and sorted(p.name for p in (tmp_path / "x").iterdir()) == ["0000000000.a.wav", "0000000000.b.wav", "0000000000.png"]
    card = runner.invoke(app, ["card", url])
    assert card.exit_code == 0 and (out / "README.md").read_text().startswith("---\nlicense: cc-by-4.0")

    runs = tmp_path / "runs"
    fit = ["fit", url, "--runs-dir", str(runs), "--run", "r", "--epochs", "1", "--steps-per-epoch", "1", "--model", "small",
           "--width", "4", "--embedding-dim", "8", "--batch-size", "2", "--workers", "0", "--val-shards", "1", "--val-every", "0",
           "--no-progress"]
    assert doppeltrain_main(fit) == 0 and (runs / "r" / "checkpoints" / "latest.pt").is_file()

    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for index in range(3):
        sf.write(recordings / f"{index}.wav", np.sin(np.arange(24000) * (0.01 + 0.01 * index)).astype(np.float32) * 0.5, 16000)
    packed = tmp_path / "packed"
    pack = runner.invoke(app, ["pack", str(recordings), f"file://{packed}", "--pairs-per-shard", "2", "-q"])
    assert pack.exit_code == 0, pack.output
    assert "3 pairs in 2 shards" in pack.stdout and read_manifest(packed).n_shards == 2
    assert runner.invoke(app, ["verify", f"file://{packed}", "--workers", "0"]).exit_code == 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["info", "ftp://host/data"], "ftp://host/data: unsupported location ftp://"),
        (["verify", "s3://"], "s3://: expected s3://bucket or s3://bucket/prefix"),
        (["render", "s3://bucket/../x", "--shards", "1"], "expected s3://bucket or s3://bucket/prefix"),
        (["card", "file://elsewhere/data"], "a file:// URL names a folder on this machine"),
        (["export", "gs://bucket//x"], "expected gs://bucket or gs://bucket/prefix"),
    ],
)
def test_a_bad_url_is_one_line(args, fragment):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.output


@pytest.mark.slow
def test_a_missing_optional_package_names_the_extra_to_install(tmp_path):
    hidden = tmp_path / "hidden"
    for package in ("s3fs", "gcsfs"):  # importable names that fail as an absent package does
        (hidden / package).mkdir(parents=True)
        (hidden / package / "__init__.py").write_text(f'raise ImportError("No module named {package}")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")]))
    assert_one_line(run(["verify", "s3://bucket/data"], env), "s3:// needs s3fs: pip install doppelgangers[s3]")
    assert_one_line(run(["render", "gs://bucket/data", "--shards", "1"], env), "gs:// needs gcsfs: pip install doppelgangers[gcs]")
    assert_one_line(run(["fit", "s3://bucket/data", "--no-progress"], env, "doppeltrain"), "s3:// needs s3fs: pip install doppelgangers[s3]")
