"""Streamed recipes: fit on pairs rendered on the fly (doppeltrain.data: stream_plan, streamed, sources).

The session's tiny voice recipe (4 shards of 8 pairs) and batches of 8 pairs per recipe,
the shape the session's fixture render already compiled. Tests that start fresh
processes (torchrun ranks, spawned rendering workers: each loads JAX and the compiled
kernel) are marked slow.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_subprocess import default_ctrl_c
from torch.utils.data import DataLoader, IterableDataset

from benchmarks.process_table import alive, command_line, process_table
from doppelgen.format import round_trip_bound
from doppelgen.paper_recipes import recipe_text
from doppelgen.recipe import make_recipe
from doppelgen.render.kernel import RenderError, render_pairs
from doppelgen.render.loop import render_dataset
from doppeltrain.checkpoint import load_checkpoint
from doppeltrain.cli import main
from doppeltrain.config import TrainConfig
from doppeltrain.data import DeltaRamp, IndexPlan, SharedEpoch, discover, make_loader, split_shards
from doppeltrain.data.stream_plan import batch_shares, index_plan, render_chunk
from doppeltrain.data.streamed import Stream, StreamedPairs, shared_state
from doppeltrain.data.worker_processes import worker_failure
from doppeltrain.train import fit

REPO = Path(__file__).resolve().parents[2]
SR = 16000
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_CLI = ["--model", "small", "--width", "8", "--embedding-dim", "32", "--batch-size", "8", "--val-shards", "1",
            "--augment", "none", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, voice_recipe) -> Path:
    """The recipe of the session's voice_shards, as a recipe file."""
    path = tmp_path_factory.mktemp("recipes") / "voice.json"
    path.write_text(recipe_text(voice_recipe))
    return path


def stream_config(datasets, runs_dir: Path, run: str, **fields) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.datasets = [str(d) for d in datasets]
    cfg.data.batch_size, cfg.data.workers, cfg.data.val_shards = 8, 0, 1
    cfg.model.model, cfg.model.width, cfg.model.embedding_dim = "small", 8, 32
    cfg.augment.mode = "none"
    cfg.epochs, cfg.steps_per_epoch = 2, 3
    cfg.val_every = cfg.checkpoint_every = 1
    cfg.log_every, cfg.val_audio_pairs, cfg.progress, cfg.audit = 1, 0, False, True
    cfg.runs_dir, cfg.run = str(runs_dir), run
    for name, value in fields.items():
        setattr(cfg, name, value)
    return cfg


def streamed_pairs(recipe, held=(), ramp=DeltaRamp(), total_steps=10, share=8) -> StreamedPairs:
    plan = IndexPlan(recipe.pairs_per_shard, tuple(held), share, 1)
    return StreamedPairs([Stream(recipe, plan)], rank=0, steps_per_epoch=total_steps, total_steps=total_steps, ramp=ramp,
                         val_batch_size=8, chunk=8, state=shared_state())


def audit_steps(run_dir: Path, rank: int = 0) -> list[dict]:
    lines = (run_dir / f"audit-rank{rank}.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "keys" in record]


def expand(ranges: list[list[int]]) -> list[int]:
    return [index for start, stop in ranges for index in range(start, stop)]


def held_out_shard_numbers(voice_shards, val_shards, seed: int) -> list[int]:
    _, val = split_shards(discover([str(voice_shards)], SR), val_shards, seed)
    return sorted(int(Path(shard.url).stem.split("-")[1]) for shard in val)


# --- the index plan: pure functions -------------------------------------------------------


def test_training_indices_skip_the_held_out_shards_and_never_repeat():
    plan = IndexPlan(pairs_per_shard=8, held=(1, 3), share=3, world_size=2)
    trained = np.concatenate([plan.train_indices(step, rank) for step in range(10) for rank in range(2)]).tolist()
    held = set(range(8, 16)) | set(range(24, 32))
    # Positions (step, rank, row) in order are the indices outside the held-out shards, in order.
    assert trained == [index for index in range(200) if index not in held][:60]
    assert plan.train_ranges(10) == [[0, 8], [16, 24], [32, 76]]
    assert expand(plan.train_ranges(10)) == trained
    assert plan.validation_ranges() == [[8, 16], [24, 32]]
    assert plan.validation_indices().tolist() == sorted(held)
    # Each step and rank depends on nothing else: rank 1 of step 4 alone.
    assert plan.train_indices(4, 1).tolist() == trained[(4 * 2 + 1) * 3 : (4 * 2 + 2) * 3]
    # Adjacent held-out shards at the start.
    assert IndexPlan(8, (0, 1), 3, 1).train_ranges(2) == [[16, 22]]
    assert IndexPlan(8, (), 3, 1).train_ranges(0) == []


def test_a_streamed_recipe_holds_out_the_shards_its_frozen_render_holds_out(voice_shards, voice_recipe):
    for val_shards, seed in ((1, 0), (2, 0), (1, 7), (0.5, 3)):
        plan = index_plan(voice_recipe.sha256, 4, 8, val_shards, seed, share=8, world_size=1)
        assert list(plan.held) == held_out_shard_numbers(voice_shards, val_shards, seed)
    assert index_plan(voice_recipe.sha256, 4, 8, 0, 0, share=8, world_size=1).held == ()


def test_batch_shares_and_render_chunks():
    assert batch_shares(768, 2) == [384, 384]
    assert batch_shares(7, 3) == [3, 2, 2]
    # Equal calls of at most 64 pairs: 384 pairs in 6 calls of 64, 100 in 2 of 50.
    assert render_chunk([384, 384], 64) == 64
    assert render_chunk([100, 101], 64) == 50
    assert render_chunk([768], None) == 768


def test_the_delta_ramp_gives_its_deltas_at_the_steps_it_says():
    ramp = DeltaRamp(start=0.05, fraction=0.5)
    assert ramp.at(0, 100, 0.25) == 0.05
    assert ramp.at(25, 100, 0.25) == pytest.approx(0.15)
    assert [ramp.at(step, 100, 0.25) for step in (50, 51, 99)] == [0.25, 0.25, 0.25]
    deltas = [ramp.at(step, 100, 0.25) for step in range(100)]
    assert deltas == sorted(deltas)
    assert DeltaRamp().at(0, 100, 0.25) == 0.25  # the default: the recipe's delta throughout


# --- streamed pairs are the pairs of a frozen render ----------------------------------------


def test_a_streamed_batch_is_the_frozen_batch_of_the_same_indices(voice_shards, voice_recipe):
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.data.workers = 8, 0
    _, val = split_shards(discover([str(voice_shards)], SR), 1, seed=0)
    frozen = list(make_loader(val, cfg, train=False, epoch_ref=SharedEpoch(0)))
    plan = index_plan(voice_recipe.sha256, 4, 8, 1, 0, share=8, world_size=1)
    pairs = StreamedPairs([Stream(voice_recipe, plan)], rank=0, steps_per_epoch=1, total_steps=1, ramp=DeltaRamp(),
                          val_batch_size=8, chunk=8, state=shared_state())
    streamed = [pairs.validation_batch(number, indices) for number, indices in pairs.validation_parts()]
    assert [batch.keys for batch in streamed] == [batch.keys for batch in frozen] != []
    # 24-bit FLAC keeps each clip within 2**-22 of its peak; the stored gain's float32
    # multiply adds at most one more rounding of the peak.
    tolerance = round_trip_bound("flac") + 2.0**-23
    for ours, theirs in zip(streamed, frozen):
        for view, stored in ((ours.a, theirs.a), (ours.b, theirs.b)):
            peak = view.abs().amax(dim=1, keepdim=True)
            assert ((view - stored).abs() <= tolerance * peak).all()
            assert not torch.equal(view, stored)  # the codec did round: the comparison is not vacuous


def test_streamed_pairs_are_bit_identical_to_a_float_wav_render(tmp_path):
    recipe = make_recipe("voice", n_shards=2, pairs_per_shard=8, codec="wav")
    render_dataset(recipe, tmp_path / "wav", batch_size=8, workers=0, progress=False)
    cfg = TrainConfig()
    cfg.data.batch_size, cfg.data.workers = 8, 0
    shards = split_shards(discover([str(tmp_path / "wav")], SR), 0, seed=0)[0]
    frozen = list(make_loader(shards, cfg, train=False, epoch_ref=SharedEpoch(0)))
    pairs = streamed_pairs(recipe)
    for step in (0, 1):
        streamed = pairs.train_batch(step)
        assert streamed.keys == frozen[step].keys
        assert torch.equal(streamed.a, frozen[step].a) and torch.equal(streamed.b, frozen[step].b)


def test_a_ramped_step_renders_the_pairs_of_its_delta(voice_recipe):
    pairs = streamed_pairs(voice_recipe, ramp=DeltaRamp(start=0.05, fraction=0.5), total_steps=4)
    for step, delta in ((0, 0.05), (1, 0.15), (2, 0.25), (3, 0.25)):
        batch = pairs.train_batch(step)
        a, b, _ = render_pairs(dataclasses.replace(voice_recipe, delta=delta), np.arange(8 * step, 8 * step + 8), batch_size=8)
        assert torch.equal(batch.a, torch.from_numpy(a)) and torch.equal(batch.b, torch.from_numpy(b)), step


# --- fit on a recipe --------------------------------------------------------------------------


def test_fit_on_a_recipe_trains_on_fresh_pairs_and_records_them(voice_shards, recipe_file, tmp_path):
    summary = fit(stream_config([recipe_file], tmp_path, "stream"))
    run_dir = tmp_path / "stream"
    record = json.loads((run_dir / "config.json").read_text())["streams"][0]
    # The recipe's sha256 is the one a frozen render of it stamps on every shard.
    stats = json.loads((voice_shards / "pairs-000000.stats.json").read_text())
    assert record["recipe_sha256"] == stats["recipe_sha256"]
    held = held_out_shard_numbers(voice_shards, 1, seed=0)
    assert expand(record["validation_indices"]) == [i for shard in held for i in range(8 * shard, 8 * shard + 8)]
    # 2 epochs x 3 steps x 8 pairs: 48 distinct pairs, none held out, as recorded.
    steps = audit_steps(run_dir)
    trained = [int(key) for step in steps for key in step["keys"]]
    assert [step["step"] for step in steps] == list(range(6))
    assert len(set(trained)) == 48
    assert trained == expand(record["train_indices"])
    assert not set(trained) & set(expand(record["validation_indices"]))
    assert (record["rendered_on"], record["delta_schedule"], record["pairs_per_rank_batch"]) == ("cpu", None, 8)
    assert summary["val"]["group"] == 8 and summary["val_untrained"] is not None


def test_a_resumed_streamed_run_trains_on_the_indices_of_an_uninterrupted_one(recipe_file, tmp_path):
    fit(stream_config([recipe_file], tmp_path, "whole", val_every=2))
    fit(stream_config([recipe_file], tmp_path, "split", val_every=2, until_epoch=1))
    fit(stream_config([recipe_file], tmp_path, "split", val_every=2, resume=True))
    assert [s["keys"] for s in audit_steps(tmp_path / "split")] == [s["keys"] for s in audit_steps(tmp_path / "whole")]
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "latest.pt")["model"]
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")["model"]
    assert all(torch.equal(whole[key], split[key]) for key in whole)


def test_a_mixed_run_takes_a_share_of_every_batch_from_each_source(voice_shards, recipe_file, tmp_path):
    cfg = stream_config([voice_shards, recipe_file], tmp_path, "mixed", epochs=1, steps_per_epoch=2)
    cfg.data.batch_size = 16
    summary = fit(cfg)
    held = held_out_shard_numbers(voice_shards, 1, seed=0)
    frozen_training = {f"{i:010d}" for shard in range(4) if shard not in held for i in range(8 * shard, 8 * shard + 8)}
    record = json.loads((tmp_path / "mixed" / "config.json").read_text())["streams"][0]
    streamed = [f"{i:010d}" for i in expand(record["train_indices"])]
    steps = audit_steps(tmp_path / "mixed")
    for number, step in enumerate(steps):
        assert set(step["keys"][:8]) <= frozen_training  # the frozen dataset's half, first
        assert step["keys"][8:] == streamed[8 * number : 8 * number + 8]
    # Validation: the frozen held-out shard, then the recipe's (the same pairs, rendered).
    assert summary["val"]["group"] == 16


class FailingPairs(IterableDataset):
    def __iter__(self):
        raise RenderError("pair 5 was still non-finite after 32 attempts")


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the worker raises at once; JAX is not used there
def test_an_error_in_a_loader_worker_becomes_one_line():
    with pytest.raises(RenderError) as caught:
        next(iter(DataLoader(FailingPairs(), batch_size=None, num_workers=1)))
    assert "Traceback" in str(caught.value)  # the DataLoader's message: the worker's whole traceback
    failure = worker_failure(caught.value)
    assert str(failure) == "a loader worker failed: RenderError: pair 5 was still non-finite after 32 attempts"
    assert worker_failure(RuntimeError("something else")) is None


def test_a_recipe_that_renders_no_finite_pair_stops_the_run_in_one_line(recipe_file, tmp_path, capsys, monkeypatch):
    from doppelgen.render import kernel

    def non_finite(*args, **kwargs):
        raise RenderError("pair 3 was still non-finite after 32 attempts")

    monkeypatch.setattr(kernel, "render_pairs", non_finite)
    status = main(["fit", str(recipe_file), "--runs-dir", str(tmp_path), "--workers", "0", *TINY_CLI])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and lines == ["error: voice at delta 0.25: pair 3 was still non-finite after 32 attempts"]


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such recipe file"),
        ("not-json", "unreadable recipe"),
        ("unknown-synth", "unknown synth 'moog'"),
        ("out-of-bounds", "delta must lie in [0, 4]"),
        ("sample-rate", "sample rate 22050 Hz"),
        ("all", "a recipe has no end"),
        ("render-on", "unknown --render-on 'tpu'"),
        ("delta-ramp", "--delta-ramp must be"),
        ("delta-from-frozen", "--delta-from ramps the delta of streamed recipes"),
        ("same-recipe", "are the same recipe; give it once"),
        pytest.param("no-gpu", "--render-on gpu: JAX sees no GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    ],
)
def test_bad_recipes_and_stream_options_give_one_line_and_exit_2(voice_shards, recipe_file, tmp_path, capsys, case, expected):
    recipe = json.loads(recipe_file.read_text())
    source = {
        "missing": tmp_path / "nowhere.json",
        "not-json": tmp_path / "bad.json",
        "unknown-synth": write_json(tmp_path / "moog.json", {**recipe, "synth": {"name": "moog", "args": {}}}),
        "out-of-bounds": write_json(tmp_path / "loud.json", {**recipe, "delta": 9.0}),
        "sample-rate": write_json(tmp_path / "rate.json", {**recipe, "sample_rate": 22050}),
        "delta-from-frozen": voice_shards,
    }.get(case, recipe_file)
    (tmp_path / "bad.json").write_text("{not json")
    extra = {
        "all": ["--pairs-per-epoch", "all"],
        "render-on": ["--render-on", "tpu"],
        "delta-ramp": ["--delta-from", "0.05", "--delta-ramp", "0"],
        "delta-from-frozen": ["--delta-from", "0.05"],
        "no-gpu": ["--render-on", "gpu"],
        "same-recipe": [str(write_json(tmp_path / "copy.json", recipe))],  # the same recipe, another file
    }.get(case, [])
    status = main(["fit", str(source), "--runs-dir", str(tmp_path / "runs"), "--workers", "0", *TINY_CLI, *extra])
    error = capsys.readouterr().err
    lines = [line for line in error.strip().splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), error
    assert expected in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before the run folder is made


# --- fresh processes: ranks, spawned rendering workers, signals -------------------------------


@pytest.mark.slow
def test_ranks_and_workers_render_disjoint_indices_across_epochs(recipe_file, tmp_path):
    world = 2
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
        "-m", "doppeltrain", "fit", str(recipe_file), "--runs-dir", str(tmp_path), "--name", "ddp", *TINY_CLI,
        "--workers", "2", "--epochs", "2", "--steps-per-epoch", "2", "--val-every", "2", "--audit",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=ONE_THREAD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    record = json.loads((run_dir / "config.json").read_text())["streams"][0]
    plan = IndexPlan(8, tuple(sorted(set(i // 8 for i in expand(record["validation_indices"])))), 8, world)
    keys = []
    for rank in range(world):
        steps = audit_steps(run_dir, rank)
        assert [s["step"] for s in steps] == [0, 1, 2, 3]  # steps 0 and 2 from worker 0, 1 and 3 from worker 1
        for step in steps:
            assert [int(key) for key in step["keys"]] == plan.train_indices(step["step"], rank).tolist()
        keys += [key for step in steps for key in step["keys"]]
    # 2 ranks x 2 epochs x 2 steps x 8 pairs, all distinct, and what config.json says.
    assert len(keys) == len(set(keys)) == 64
    assert sorted(int(key) for key in keys) == expand(record["train_indices"])


def render_workers(pid: int) -> list[int]:
    """The spawned loader workers of process ``pid``."""
    table = process_table()
    return [child for child, row in table.items() if row.parent == pid and b"spawn_main" in command_line(child)]


def start_long_streamed_fit(recipe_file: Path, tmp_path: Path) -> subprocess.Popen:
    """A streamed fit with one rendering worker, in its own process group (a terminal's
    Ctrl-C reaches the whole group), SIGINT at its default as a terminal leaves it."""
    args = ["fit", str(recipe_file), "--runs-dir", str(tmp_path), "--run", "long", *TINY_CLI, "--workers", "1",
            "--epochs", "1", "--steps-per-epoch", "10000", "--val-every", "0", "--log-every", "1"]
    return subprocess.Popen([sys.executable, "-m", "doppeltrain", *args], cwd=REPO, env=ONE_THREAD_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_ctrl_c)


def wait_for_training(process: subprocess.Popen, tmp_path: Path) -> list[int]:
    metrics = tmp_path / "long" / "metrics.jsonl"
    deadline = time.monotonic() + 400
    while not (metrics.exists() and '"split": "train"' in metrics.read_text()):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    workers = render_workers(process.pid)
    assert len(workers) == 1
    return workers


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "kill-worker"])
def test_ctrl_c_and_a_killed_rendering_worker_end_the_run_cleanly(recipe_file, tmp_path, stop):
    process = start_long_streamed_fit(recipe_file, tmp_path)
    try:
        workers = wait_for_training(process, tmp_path)
        if stop == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            os.kill(workers[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    if stop == "ctrl-c":
        # Stopped at a step boundary (the notice), nothing else said, exit 130.
        assert process.returncode == 130, stderr
        assert lines and set(lines) <= {"interrupt: stopping after this step (Ctrl-C again to stop now)", "interrupted"}, stderr
    else:
        assert process.returncode == 1, stderr
        assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], stderr
        assert lines[-1].startswith("error: a loader worker died"), stderr
    deadline = time.monotonic() + 30
    while alive(set(workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(set(workers)), "a rendering worker outlived the run"


def test_auto_renders_on_the_cpu_when_training_on_the_cpu():
    from doppeltrain.data.streamed import render_place

    assert render_place("auto", torch.device("cpu")) == "cpu"
    assert render_place("cpu", torch.device("cpu")) == "cpu"


@pytest.mark.slow
def test_the_streamed_benchmark_compares_the_loader_with_the_kernel(tmp_path):
    from benchmarks import train_streamed

    figures = train_streamed.compare(train_streamed.write_recipe(tmp_path), workers=1, batch_size=8, seconds=2, rounds=1)
    assert figures["loader_pairs_per_s"] > 0 and figures["kernel_pairs_per_s"] > 0
    assert figures["ratio"] == pytest.approx(figures["loader_pairs_per_s"] / figures["kernel_pairs_per_s"], abs=0.002)
    assert figures["worker_start_cpu_s"] > 0
