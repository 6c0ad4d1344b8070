"""Datasets on an S3-compatible object store: moto's server on loopback, started here.

Render -> verify -> info -> card -> export -> fit against ``s3://``, the bytes of a local
render; a render killed in the middle of an upload leaves no shard complete and its
re-run gives the bytes of a clean run; the prefix is claimed for one recipe by a
conditional PUT.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from cli_subprocess import assert_one_line, run  # noqa: E402
from data_fixtures import SR, assert_batches_equal  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from doppelgen.cli import app as doppelgen_app  # noqa: E402
from doppelgen.format import complete_shards, read_manifest, shard_name, stats_name  # noqa: E402
from doppelgen.recipe import make_recipe  # noqa: E402
from doppelgen.render.loop import DatasetError, render_dataset  # noqa: E402
from doppelgen.render.output_claim import RECIPE_MARKER  # noqa: E402
from doppelgen.storage import ObjectStore, open_store  # noqa: E402
from doppeltrain.cli import main as doppeltrain_main  # noqa: E402
from doppeltrain.data import discover  # noqa: E402

BUCKET = "doppel"
# A small recipe for the render subprocesses: batches of 4 pairs, compiled once per machine.
KILL_ARGS = ["--shards", "3", "--pairs-per-shard", "4", "--batch-size", "4", "--workers", "0", "-q"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port, with this process's environment pointing
    at it (subprocesses inherit it), and an empty bucket."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("AWS_")]:
            patch.delenv(name)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield endpoint
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def stored_bytes(url: str) -> dict[str, bytes]:
    """Every shard and stats object under ``url`` (as ``test_render.folder_bytes`` of a folder)."""
    store = open_store(url)
    return {name: store.read_bytes(name) for name in sorted(store.names()) if name.startswith("pairs-")}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("pairs-")}


@pytest.fixture(scope="module")
def s3_voice(s3_endpoint, voice_recipe) -> str:
    """``voice_recipe`` rendered into the bucket, by one encoding worker process."""
    url = f"s3://{BUCKET}/voice"
    summary = render_dataset(voice_recipe, url, batch_size=8, workers=1, progress=False)
    assert summary.complete and summary.rendered == [0, 1, 2, 3] and summary.out == url
    return url


def test_a_render_on_s3_has_the_bytes_of_a_local_render_and_nothing_else(s3_voice, voice_shards):
    assert stored_bytes(s3_voice) == folder_bytes(voice_shards)
    store = open_store(s3_voice)
    # Whole objects under final names only: no temporaries, probes or partial uploads.
    assert sorted(store.names()) == sorted([RECIPE_MARKER, "manifest.json", *(n for n in folder_bytes(voice_shards))])
    assert read_manifest(s3_voice).shards == read_manifest(voice_shards).shards
    assert complete_shards(s3_voice) == [0, 1, 2, 3]
    again = render_dataset(make_recipe("voice", n_shards=4, pairs_per_shard=8), s3_voice, workers=0, progress=False)
    assert again.rendered == [] and again.skipped == [0, 1, 2, 3] and again.complete


@pytest.mark.slow
def test_a_ray_render_into_the_bucket_has_the_bytes_of_a_local_render(s3_endpoint, voice_shards):
    """Issue 12's whole path: `doppelgen render s3://... --distributor ray --manifest RECIPE`,
    on a local Ray cluster the command starts (its workers inherit the endpoint)."""
    pytest.importorskip("ray")
    url = f"s3://{BUCKET}/ray-voice"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "doppelgen", "render", url, "--manifest", str(voice_shards / "manifest.json"),
         "--distributor", "ray", "--shards-per-task", "2", "--batch-size", "8", "-q"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert stored_bytes(url) == folder_bytes(voice_shards)
    assert read_manifest(url).shards == read_manifest(voice_shards).shards


def test_verify_info_card_and_export_read_the_bucket(s3_voice, tmp_path):
    runner = CliRunner()
    verify = runner.invoke(doppelgen_app, ["verify", s3_voice, "--rerender", "2", "--workers", "0"])
    assert verify.exit_code == 0, verify.output
    assert f"ok: {s3_voice}: 4 shards, 32 pairs, 2 pairs rendered again (compared: bytes)" in verify.stderr
    info = runner.invoke(doppelgen_app, ["info", s3_voice, "--json"])
    assert info.exit_code == 0, info.output
    totals = json.loads(info.stdout)["totals"]
    assert totals["pairs"] == 32 and totals["shards_complete_on_disk"] == 4 and json.loads(info.stdout)["folder"] == s3_voice
    card = runner.invoke(doppelgen_app, ["card", s3_voice])
    assert card.exit_code == 0 and f"wrote {s3_voice}/README.md" in card.stdout
    assert open_store(s3_voice).read_bytes("README.md").startswith(b"---\nlicense: cc-by-4.0")
    export = runner.invoke(doppelgen_app, ["export", s3_voice, "--n", "2", "--to", str(tmp_path / "x")])
    assert export.exit_code == 0, export.output
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [f"000000000{i}.{e}" for i in (0, 1) for e in ("a.wav", "b.wav", "png")]


def test_verify_finds_a_damaged_object(s3_endpoint, voice_shards):
    url = f"s3://{BUCKET}/damaged"
    store = open_store(url)
    for path in voice_shards.iterdir():
        store.put(path.name, path.read_bytes())
    data = bytearray(store.read_bytes(shard_name(2)))
    data[5000] ^= 0xFF
    store.put(shard_name(2), bytes(data))
    result = CliRunner().invoke(doppelgen_app, ["verify", url, "--workers", "0"])
    assert result.exit_code == 1
    assert "pairs-000002.tar: sha256" in result.stdout and f"FAILED: {url}" in result.stderr


def test_fit_streams_the_bucket_batch_for_batch_like_the_folder(s3_voice, voice_shards, tmp_path):
    (info,) = discover([s3_voice], SR)
    assert [shard.url for shard in info.shards] == [f"{s3_voice}/{shard_name(i)}" for i in range(4)] and info.n_pairs == 32
    assert_batches_equal(info.shards, voice_shards, 8)
    # The whole command, its data loader in a worker process.
    runs = tmp_path / "runs"
    args = ["fit", s3_voice, "--runs-dir", str(runs), "--run", "s3", "--epochs", "1", "--steps-per-epoch", "2",
            "--model", "small", "--width", "4", "--embedding-dim", "8", "--batch-size", "2", "--workers", "1",
            "--val-shards", "1", "--val-every", "0", "--no-progress"]
    assert doppeltrain_main(args) == 0
    assert (runs / "s3" / "checkpoints" / "latest.pt").is_file()


# --- an upload killed midway -----------------------------------------------------------


class StallingProxy:
    """A TCP proxy in front of the S3 server. It forwards everything until a client sends a
    request starting with ``pattern``; of that request it forwards the head and the first
    half of the body, then nothing more: the upload hangs midway, as on a dead network,
    and ``stalled`` is set."""

    def __init__(self, target_port: int, pattern: bytes):
        self.target_port, self.pattern = target_port, pattern
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _split(self, window: bytes) -> tuple[bytes, bytes, bool]:
        """``(to forward now, to hold, matched)``: held is the matched request, or the
        longest end of ``window`` that could begin the pattern."""
        at = window.find(self.pattern)
        if at >= 0:
            return window[:at], window[at:], True
        for size in range(min(len(self.pattern) - 1, len(window)), 0, -1):
            if window.endswith(self.pattern[:size]):
                return window[:-size], window[-size:], False
        return window, b"", False

    def _pump(self, source: socket.socket, sink: socket.socket, inspect: bool) -> None:
        held, matched, forwarded, cut = b"", False, 0, None
        try:
            while data := source.recv(65536):
                if not inspect:
                    sink.sendall(data)
                    continue
                if not matched:
                    now, held, matched = self._split(held + data)
                    if now:
                        sink.sendall(now)
                    if not matched:
                        continue
                else:
                    held += data
                head_end = held.find(b"\r\n\r\n")
                if head_end < 0:
                    continue  # the whole head first: a client may wait for "100 Continue"
                if cut is None:
                    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", held[:head_end])
                    cut = head_end + 4 + (int(length.group(1)) // 2 if length else 0)
                sink.sendall(held[forwarded:cut])
                forwarded = min(len(held), cut)
                if forwarded >= cut:
                    self.stalled.set()
                    while source.recv(65536):  # the rest of the upload goes nowhere
                        pass
                    return
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture(scope="module")
def clean_kill_recipe_render(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    render_dataset(make_recipe("voice", n_shards=3, pairs_per_shard=4), out, batch_size=4, workers=0, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stalled_object", [shard_name(1), stats_name(1)])
def test_a_render_killed_mid_upload_leaves_no_shard_complete_and_resumes(s3_endpoint, clean_kill_recipe_render, stalled_object):
    prefix = f"killed-{stalled_object.split('.', 1)[1].replace('.', '-')}"
    url = f"s3://{BUCKET}/{prefix}"
    proxy = StallingProxy(int(s3_endpoint.rsplit(":", 1)[1]), f"PUT /{BUCKET}/{prefix}/{stalled_object}".encode())
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "doppelgen", "render", url, *KILL_ARGS]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        stalled = proxy.stalled.wait(timeout=180)
        assert stalled, "the render never reached the upload: " + (process.stderr.read().decode()[-2000:] if process.poll() is not None else "")
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
        proxy.close()
    assert process.returncode == -signal.SIGKILL
    time.sleep(0.2)  # the server drops the half-received request

    store = open_store(url)
    names = set(store.names())
    assert complete_shards(url) == [0]
    assert stats_name(1) not in names and "manifest.json" not in names
    # A tar under its final name is a whole one (the stats PUT stalled after it).
    assert (shard_name(1) in names) == (stalled_object == stats_name(1))
    clean = folder_bytes(clean_kill_recipe_render)
    assert {name: data for name, data in stored_bytes(url).items()} == {name: clean[name] for name in names if name.startswith("pairs-")}

    resumed = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 shards rendered, 1 already complete" in resumed.stdout and "(complete)" in resumed.stdout
    assert stored_bytes(url) == clean
    assert read_manifest(url).shards == read_manifest(clean_kill_recipe_render).shards


# --- one recipe a prefix ---------------------------------------------------------------


def test_a_prefix_holds_one_recipe_unless_overwritten(s3_endpoint):
    url = f"s3://{BUCKET}/claimed"
    first = make_recipe("voice", n_shards=1, pairs_per_shard=4, delta=0.5)
    render_dataset(first, url, batch_size=4, workers=0, progress=False)
    other = make_recipe("voice", n_shards=1, pairs_per_shard=4)
    with pytest.raises(DatasetError, match=f"{url} holds a different dataset recipe"):
        render_dataset(other, url, batch_size=4, workers=0, progress=False)
    assert read_manifest(url).recipe["delta"] == 0.5
    summary = render_dataset(other, url, batch_size=4, workers=0, overwrite=True, progress=False)
    assert summary.rendered == [0] and read_manifest(url).recipe["delta"] == 0.25


def test_a_conditional_put_has_exactly_one_winner(s3_endpoint):
    store = ObjectStore(f"s3://{BUCKET}/race")
    barrier, results = threading.Barrier(6), []

    def create(index: int) -> None:
        barrier.wait()
        results.append((store.create(RECIPE_MARKER, f"recipe {index}\n".encode()), index))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [index for won, index in results if won]
    assert len(results) == 6 and len(winners) == 1
    assert store.read_bytes(RECIPE_MARKER) == f"recipe {winners[0]}\n".encode()
    assert store.create(RECIPE_MARKER, b"late\n") is False


# --- what goes wrong is one line ---------------------------------------------------------


@pytest.mark.slow
def test_no_bucket_no_credentials_and_no_endpoint_are_one_line(s3_endpoint, tmp_path):
    env = dict(os.environ, AWS_MAX_ATTEMPTS="1")  # botocore's retries only make the wait longer
    assert_one_line(run(["render", "s3://nobucket/x", *KILL_ARGS], env), "s3://nobucket/x: no bucket nobucket")
    no_keys = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    no_keys.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    assert_one_line(run(["info", f"s3://{BUCKET}/voice"], no_keys), "Unable to locate credentials", "AWS_ACCESS_KEY_ID")
    unreachable = dict(env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    result = run(["verify", f"s3://{BUCKET}/voice"], unreachable)
    assert_one_line(result, f"s3://{BUCKET}/voice", "Could not connect to the endpoint URL", "AWS_ENDPOINT_URL")
    fit = run(["fit", f"s3://{BUCKET}/voice", "--runs-dir", str(tmp_path / "runs"), "--no-progress"], unreachable, "doppeltrain")
    assert_one_line(fit, "Could not connect to the endpoint URL")
