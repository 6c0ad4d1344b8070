"""doppelgen render under hostile conditions (issue 10 rows 4-7) and its README promises
(issue 11): racing renders never mix, a killed render leaves nothing running, absurd
recipes are refused before any work, Ctrl-C resumes, and batch size 256 changes nothing."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_subprocess import default_ctrl_c
from typer.testing import CliRunner

from benchmarks.process_table import alive, command_line, descendants
from doppelgen.cli import app
from doppelgen.format import stats_name
from doppelgen.recipe import make_recipe
from doppelgen.render.encoding_workers import SEGMENT_PREFIX
from doppelgen.render.loop import render_dataset

RENDER = [sys.executable, "-m", "doppelgen", "render"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("pairs-")}


# --- row 4: one folder, one recipe, even under races ------------------------------------


def race_renders(seed: int, barrier, root: str, trials: int, results) -> None:
    """One racer: for each trial, wait for the other at the barrier, then render its
    recipe (seed ``seed``) into the trial's folder and report how it ended."""
    recipe = make_recipe("voice", seed=seed, n_shards=2, pairs_per_shard=8)
    render_dataset(recipe, Path(root) / f"warm-{seed}", batch_size=8, workers=0, progress=False)  # compile first
    for trial in range(trials):
        barrier.wait(timeout=300)
        if seed == 1:  # vary who is ahead, from the same instant to a few milliseconds
            time.sleep((trial % 4) * 0.003)
        try:
            summary = render_dataset(recipe, Path(root) / f"trial-{trial}", batch_size=8, workers=0, progress=False)
            results.put((trial, seed, "complete" if summary.complete else "incomplete"))
        except Exception as error:
            results.put((trial, seed, f"{type(error).__name__}: {error}"))


@pytest.mark.slow
def test_two_recipes_started_at_the_same_moment_never_mix(tmp_path):
    trials = 20
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    racers = [context.Process(target=race_renders, args=(seed, barrier, str(tmp_path), trials, results)) for seed in (0, 1)]
    for racer in racers:
        racer.start()
    outcomes: dict[int, dict[int, str]] = {}
    for _ in range(2 * trials):
        trial, seed, outcome = results.get(timeout=600)
        outcomes.setdefault(trial, {})[seed] = outcome
    for racer in racers:
        racer.join(timeout=60)
    for trial in range(trials):
        ends = outcomes[trial]
        winners = [seed for seed, outcome in ends.items() if outcome == "complete"]
        assert len(winners) == 1, (trial, ends)
        loser = ends[1 - winners[0]]
        assert loser.startswith("DatasetError: ") and "different dataset recipe" in loser, (trial, ends)
        folder = tmp_path / f"trial-{trial}"
        hashes = {json.loads(p.read_text())["recipe_sha256"] for p in folder.glob("pairs-*.stats.json")}
        manifest = json.loads((folder / "manifest.json").read_text())
        assert len(hashes) == 1 and manifest["recipe"]["seed"] == winners[0], (trial, ends, hashes)


# --- row 5: nothing outlives a killed render -------------------------------------------


def segments_of(pid: int) -> list[str]:
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(f"{SEGMENT_PREFIX}{pid}-"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists() or not Path("/dev/shm").is_dir(), reason="needs Linux /proc and /dev/shm")
def test_kill_9_of_a_render_leaves_no_process_and_no_shared_memory(tmp_path):
    out = tmp_path / "killed"
    args = ["--shards", "40", "--pairs-per-shard", "8", "--batch-size", "8", "--workers", "2", "-q"]
    process = subprocess.Popen([*RENDER, str(out), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    # The first shard on disk: the encoding workers are running.
    while not any(p.name.startswith((".pairs-", "pairs-")) for p in (out.iterdir() if out.is_dir() else [])):
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    children = descendants(process.pid)
    assert len(children) >= 2, "expected the encoding workers (and the resource tracker) to be running"
    assert segments_of(process.pid) == []  # workers map the slots, then their names are unlinked
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(5)
    assert alive(children) == set(), "processes of the killed render are still running"
    assert segments_of(process.pid) == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_killed_encoding_worker_ends_the_render_in_one_line(tmp_path):
    out = tmp_path / "out"
    # Far more shards than the render can write before the kill lands: a fast machine
    # finished 40 of them first, and a worker dying after the last shard is no error.
    args = ["--shards", "5000", "--pairs-per-shard", "8", "--batch-size", "8", "--workers", "2", "-q"]
    process = subprocess.Popen([*RENDER, str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / stats_name(0)).exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    workers = sorted(pid for pid in descendants(process.pid) if b"spawn_main" in command_line(pid))
    assert len(workers) == 2  # the encoding workers (the resource tracker is a child too)
    os.kill(workers[0], signal.SIGKILL)  # the out-of-memory killer, say
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr.decode()
    assert stderr.decode() == (
        "error: an encoding worker died (exit code -9); completed shards are kept, re-run to resume\n"
    )
    assert alive(set(workers)) == set()


# --- rows 6 and 7: absurd and non-finite recipe values, refused before any work ---------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sample_rate", 10**12, "sample_rate must lie in [1000, 192000], got 1000000000000"),
        ("duration", 1e9, "duration must lie in [0.001, 60], got 1000000000.0"),
        ("n_layers", 10**6, "n_layers must lie in [1, 16], got 1000000"),
        ("pairs_per_shard", 10**9, "pairs_per_shard must lie in [1, 100000], got 1000000000"),
        ("n_shards", 10**9, "n_shards must lie in [1, 100000], got 1000000000"),
        ("seed", 2**32, "seed must lie in [0, 4294967295], got 4294967296"),
        ("control_rate", 0, "control_rate must lie in [1, 192000], got 0"),
        ("eps", 1.0, "eps must lie in [1e-12, 0.1], got 1.0"),
        ("delta", 1e300, "delta must lie in [0, 4], got 1e+300"),
        ("duration", "NaN", "unreadable recipe (invalid JSON (NaN is not allowed))"),
        ("delta", "Infinity", "unreadable recipe (invalid JSON (Infinity is not allowed))"),
        ("duration", "1e999", "unreadable recipe (invalid JSON (1e999 is out of range))"),
        ("n_shards", "9" * 5000, "unreadable recipe (invalid JSON (Exceeds the limit (4300 digits)"),
        ("duration", 10**400, "recipe field duration must be finite, got an integer of 1329 bits"),
    ],
)
def test_render_refuses_an_absurd_recipe_in_one_line_before_any_work(tmp_path, field, value, message):
    recipe = make_recipe("voice").to_dict()
    text = json.dumps({**recipe, field: "@"}).replace('"@"', value if isinstance(value, str) else json.dumps(value))
    (tmp_path / "recipe.json").write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["render", str(out), "--manifest", str(tmp_path / "recipe.json"), "-q"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {tmp_path / 'recipe.json'}: ")
    assert message in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_sizes_that_fit_each_bound_but_not_together_are_refused():
    from doppelgen.recipe import RecipeError

    with pytest.raises(RecipeError, match="100000 pairs of 960000 samples exceed a shard's 536870912 samples"):
        make_recipe("voice", pairs_per_shard=100_000, duration=60.0)
    with pytest.raises(RecipeError, match="a clip of 60 s at 192000 Hz is 11520000 samples"):
        make_recipe("voice", sample_rate=192_000, duration=60.0, control_rate=480)
    with pytest.raises(RecipeError, match="control rate 2000 Hz exceeds the sample rate 1000 Hz"):
        make_recipe("voice", sample_rate=1000, control_rate=2000)
    with pytest.raises(RecipeError, match=r"parametric oscillator counts must be whole numbers in \[0, 16\]"):
        make_recipe("parametric", synth_args={"sine": 10**6})


# --- issue 11: README promises without a test ------------------------------------------


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_gives_the_bytes_of_a_clean_run(tmp_path):
    out = tmp_path / "interrupted"
    args = ["--shards", "12", "--pairs-per-shard", "8", "--batch-size", "8", "--workers", "2", "-q"]
    # A terminal's Ctrl-C goes to the whole process group: the render, its workers, the tracker.
    process = subprocess.Popen([*RENDER, str(out), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=default_ctrl_c)
    deadline = time.time() + 300
    while not (out / stats_name(0)).exists():
        assert process.poll() is None and time.time() < deadline, process.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    children = descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr.decode()
    assert stderr.decode() == f"error: interrupted; completed shards in {out} are kept, run the same command again to resume\n"
    time.sleep(1)
    assert alive(children) == set()
    done = sorted(p.name for p in out.glob("pairs-*.stats.json"))
    assert 1 <= len(done) < 12 and not (out / "manifest.json").exists()

    resumed = subprocess.run([*RENDER, str(out), *args], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} already complete" in resumed.stdout
    clean = tmp_path / "clean"
    render_dataset(make_recipe("voice", n_shards=12, pairs_per_shard=8), clean, batch_size=8, workers=0, progress=False)
    assert folder_bytes(out) == folder_bytes(clean)


@pytest.mark.slow
def test_the_production_batch_size_gives_the_bytes_of_a_small_one(tmp_path):
    recipe = make_recipe("voice", n_shards=2, pairs_per_shard=300)
    render_dataset(recipe, tmp_path / "production", batch_size=256, workers=2, progress=False)
    render_dataset(recipe, tmp_path / "small", batch_size=8, workers=0, progress=False)
    production, small = folder_bytes(tmp_path / "production"), folder_bytes(tmp_path / "small")
    assert sorted(production) == ["pairs-000000.stats.json", "pairs-000000.tar", "pairs-000001.stats.json", "pairs-000001.tar"]
    assert production == small
