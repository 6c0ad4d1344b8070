"""doppelgen render --distributor ray (issue 12): on a local Ray cluster the bytes are a local
render's, a task killed mid-shard is retried and resumes cleanly, Ctrl-C keeps the complete
shards, and bad input is one line.

The module shares one two-CPU cluster, started in this process with the instrumentation
of ``ray_worker_hooks`` in its workers (a logged manifest write, an armed mid-shard kill).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_subprocess import default_ctrl_c
from ray_worker_hooks import ARM_NAME, FIRED_NAME, HOOK_DIR_ENV, MANIFEST_LOG_NAME

from benchmarks.process_table import processes_mentioning
from doppelgen.cli import main
from doppelgen.files import TEMP_MARK, file_sha256, process_alive
from doppelgen.format import complete_shards, read_manifest, shard_name, stats_name
from doppelgen.render.distributors import RayOptions, cluster_started_here, task_resources, task_workers
from doppelgen.render.loop import DatasetError, render_dataset

RENDER = [sys.executable, "-m", "doppelgen", "render"]
# conftest's voice_recipe: voice at its defaults, 4 shards of 8 pairs.
VOICE_4X8 = ["--synth", "voice", "--shards", "4", "--pairs-per-shard", "8", "--batch-size", "8"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    hooks = tmp_path_factory.mktemp("ray-hooks")
    # Ray's socket paths must fit in 107 bytes: a short folder of its own.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    tests = str(Path(__file__).resolve().parents[1])
    env = {HOOK_DIR_ENV: str(hooks), "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    ray.init(
        num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False, logging_level=logging.ERROR,
        runtime_env={"worker_process_setup_hook": "ray_worker_hooks.install", "env_vars": env},
    )
    try:
        yield SimpleNamespace(address=ray.get_runtime_context().gcs_address, hooks=hooks)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def render_on_ray(recipe, out, options: RayOptions, workers: int | None = None, overwrite: bool = False):
    return render_dataset(recipe, out, batch_size=8, workers=workers, overwrite=overwrite, progress=False, distributor="ray", ray_options=options)


def shard_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("pairs-")}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TEMP_MARK in p.name)


def manifest_writes(hooks: Path) -> list[str]:
    log = hooks / MANIFEST_LOG_NAME
    return log.read_text().split() if log.exists() else []


@pytest.mark.slow
def test_ray_render_gives_the_bytes_of_a_local_render_and_one_manifest(ray_cluster, voice_shards, voice_recipe, tmp_path):
    out = tmp_path / "ray"
    writes_before = manifest_writes(ray_cluster.hooks)
    # Two tasks at once share OUT (its claim and lock), each with an encoding worker.
    summary = render_on_ray(voice_recipe, out, RayOptions(shards_per_task=2), workers=1)
    assert summary.rendered == [0, 1, 2, 3] and summary.skipped == [] and summary.pairs == 32
    assert summary.complete and summary.manifest_written
    assert shard_files(out) == shard_files(voice_shards)
    ours, local = read_manifest(out), read_manifest(voice_shards)
    assert ours.recipe == local.recipe and ours.shards == local.shards
    assert ours.platform["backend"] == "cpu" and ours.render_seconds > 0
    # Written once, by the driver's manifest task; render tasks never write it.
    assert manifest_writes(ray_cluster.hooks)[len(writes_before):] == ["doppelgen-manifest"]
    assert temporaries(out) == []


@pytest.mark.slow
def test_a_task_killed_mid_shard_is_retried_and_resumes_cleanly(ray_cluster, voice_shards, voice_recipe, tmp_path):
    out = tmp_path / "killed"
    # The task of shards 0-1 dies half-way through writing shard 1's tar, shard 0 complete.
    arm = ray_cluster.hooks / ARM_NAME
    arm.write_text(shard_name(1))
    (ray_cluster.hooks / FIRED_NAME).unlink(missing_ok=True)
    summary = render_on_ray(voice_recipe, out, RayOptions(shards_per_task=2, max_retries=1))
    assert not arm.exists(), "no task took the kill"
    killed = json.loads((ray_cluster.hooks / FIRED_NAME).read_text())
    assert not process_alive(killed["pid"])
    assert Path(killed["temporary"]).parent == out and not Path(killed["temporary"]).exists()
    assert summary.complete and sorted(summary.rendered + summary.skipped) == [0, 1, 2, 3]
    assert shard_files(out) == shard_files(voice_shards)
    assert read_manifest(out).shards == read_manifest(voice_shards).shards
    assert temporaries(out) == []


@pytest.mark.slow
def test_overwrite_replaces_another_recipe_once_before_the_tasks(ray_cluster, voice_shards, voice_recipe, tmp_path):
    out = tmp_path / "replaced"
    shutil.copytree(voice_shards, out)
    other = dataclasses.replace(voice_recipe, delta=0.0)
    with pytest.raises(DatasetError, match="holds a different dataset recipe"):
        render_on_ray(other, out, RayOptions())
    assert shard_files(out) == shard_files(voice_shards)
    summary = render_on_ray(other, out, RayOptions(), overwrite=True)
    assert summary.complete and summary.rendered == [0, 1, 2, 3]
    assert read_manifest(out).recipe == other.to_dict()


@pytest.mark.slow
def test_cli_on_the_cluster_resumes_a_partial_local_render(ray_cluster, voice_shards, voice_recipe, tmp_path):
    out = tmp_path / "cli"
    render_dataset(voice_recipe, out, shard_range="0:2", batch_size=8, workers=0, progress=False)
    # --ray-address left at auto: RAY_ADDRESS names the cluster, as `ray job submit` sets it.
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address)
    result = subprocess.run(
        [*RENDER, str(out), *VOICE_4X8, "--distributor", "ray", "--shards-per-task", "1", "-q"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert "2 shards rendered, 2 already complete, 16 pairs" in result.stdout and "(complete)" in result.stdout
    assert shard_files(out) == shard_files(voice_shards)
    assert read_manifest(out).shards == read_manifest(voice_shards).shards


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")
def test_ctrl_c_on_a_cluster_the_driver_started_keeps_complete_shards(ray_cluster, tmp_path):
    out = tmp_path / "interrupted"
    n_shards = 24
    # No RAY_ADDRESS and a Ray temp folder of its own: auto finds no cluster and starts one.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    args = ["--synth", "voice", "--shards", str(n_shards), "--pairs-per-shard", "32", "--batch-size", "8", "--distributor", "ray", "--shards-per-task", "1", "-q"]
    try:
        process = subprocess.Popen([*RENDER, str(out), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=default_ctrl_c)
        deadline = time.time() + 300
        while not complete_shards(out):  # Ray runs the tasks in no set order
            assert process.poll() is None and time.time() < deadline, process.stderr.read()[-3000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        done = complete_shards(out)
        assert 1 <= len(done) < n_shards and not (out / "manifest.json").exists(), (done, stdout, stderr)
        for shard in done:  # complete means whole: the tar is the one its stats describe
            stats = json.loads((out / stats_name(shard)).read_text())
            assert file_sha256(out / shard_name(shard)) == (stats["sha256"], stats["bytes"])
        # The cluster it started stops with it: no process of it is left.
        deadline = time.time() + 30
        while leftover := processes_mentioning(ray_tmp):
            assert time.time() < deadline, f"processes of the driver's cluster are still running: {leftover}"
            time.sleep(0.5)
        assert process.returncode == 130, stderr[-3000:]
        # The cluster goes with ray.shutdown(), never a forced cancel: a cancel racing a
        # task's reply made Ray's core worker abort with a trace instead of this line.
        assert stderr.strip().splitlines() == [f"error: interrupted; completed shards in {out} are kept, run the same command again to resume"]
    finally:
        for pid in processes_mentioning(ray_tmp):  # what a failed run left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_only_the_process_that_started_a_cluster_stops_it_by_shutting_down(ray_cluster):
    import ray

    # This process started the fixture's cluster; a driver that joins it did not, so on
    # Ctrl-C it cancels its tasks and leaves the cluster running.
    assert cluster_started_here(ray)
    joiner = f"import ray; from doppelgen.render.distributors import cluster_started_here; ray.init(address={ray_cluster.address!r}, log_to_driver=False); print(cluster_started_here(ray))"
    result = subprocess.run([sys.executable, "-c", joiner], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False"]


def test_tasks_ask_for_a_gpu_where_the_cluster_has_them():
    on_gpus = task_resources(RayOptions(), {"CPU": 64.0, "GPU": 8.0})
    assert on_gpus == {"num_cpus": 1.0, "num_gpus": 1.0, "max_retries": 3, "max_calls": 1}  # one process a GPU task
    assert task_workers(RayOptions(cpus_per_task=8), on_gpus["num_gpus"]) == 8  # the cores encode
    on_cpus = task_resources(RayOptions(), {"CPU": 64.0})
    assert on_cpus["num_gpus"] == 0 and on_cpus["max_calls"] == 0  # CPU task processes are reused
    assert task_workers(RayOptions(cpus_per_task=8), 0) == 0
    assert task_resources(RayOptions(gpus_per_task=0), {"CPU": 64.0, "GPU": 8.0})["num_gpus"] == 0
    assert task_resources(RayOptions(gpus_per_task=0.5), {"CPU": 64.0})["num_gpus"] == 0.5
    assert task_workers(RayOptions(), 1.0, workers=3) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distributor", "spark"], "unknown distributor 'spark': choose local or ray"),
        (["--shards-per-task", "2"], "apply only to --distributor ray"),
        (["--distributor", "ray", "--shards-per-task", "0"], "--shards-per-task must be >= 1, got 0"),
        (["--distributor", "ray", "--cpus-per-task", "0"], "--cpus-per-task must be a fraction of 1 or a whole number > 0, got 0"),
        (["--distributor", "ray", "--gpus-per-task", "1.5"], "--gpus-per-task must be a fraction of 1 or a whole number, got 1.5"),
        (["--distributor", "ray", "--gpus-per-task", "-1"], "--gpus-per-task must be a fraction of 1 or a whole number, got -1"),
        (["--distributor", "ray", "--max-retries", "-1"], "--max-retries must be >= 0, got -1"),
        (["--distributor", "ray", "--workers", "-2"], "--workers must be a whole number from 0 to 1024, got -2"),
        (["--distributor", "ray", "--ray-address", " "], "--ray-address must not be empty"),
        (["--distributor", "ray", "--cpus-per-task", "many"], "Invalid value for '--cpus-per-task'"),
    ],
)
def test_bad_ray_options_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    status = main(["render", str(tmp_path / "out"), *VOICE_4X8, *args])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message in err
    assert not (tmp_path / "out").exists()


def test_without_ray_the_error_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    status = main(["render", str(tmp_path / "out"), *VOICE_4X8, "--distributor", "ray"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == ["error: --distributor ray needs Ray, which is not installed: pip install 'doppelgangers[ray]'"]
    assert not (tmp_path / "out").exists()


def test_an_address_where_no_cluster_listens_is_one_line(tmp_path):
    pytest.importorskip("ray")
    # A driver of its own: this process is connected to the module's cluster already.
    result = subprocess.run(
        [*RENDER, str(tmp_path / "out"), *VOICE_4X8, "--distributor", "ray", "--ray-address", "127.0.0.1:1", "-q"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: no Ray cluster answers at 127.0.0.1:1: {os.strerror(111)}"]
