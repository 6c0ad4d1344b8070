"""fit end to end on rendered shards: run folder, checkpoints, resume, bad inputs.

A tiny network (one block per stage, width 8), batches of 4 one-second pairs and a few
steps: each fit takes seconds on a CPU.
"""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from cli_subprocess import default_ctrl_c

from doppeltrain.checkpoint import (
    CHECKPOINT_KEYS,
    CheckpointError,
    load_checkpoint,
    load_checkpoint_network,
    save_checkpoint,
)
from doppeltrain.cli import main
from doppeltrain.config import TrainConfig
from doppeltrain.config_checks import TrainError
from doppeltrain.model import build_model
from doppeltrain.train import fit

REPO = Path(__file__).resolve().parents[2]
TRAIN_FIELDS = {"step", "epoch", "loss", "alignment", "uniformity", "lr", "pairs_per_s", "data_wait_fraction"}
# 4 shards of 8 pairs, 1 held out: 24 training pairs, 6 batches of 4 per epoch.
STEPS_PER_EPOCH = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_config(dataset: Path, runs_dir: Path, run: str = "run", **fields) -> TrainConfig:
    cfg = TrainConfig()
    # On the CPU even where a GPU is: runs resume bit for bit there (cuDNN's autotuned
    # convolutions and bf16 make no such promise).
    cfg.device = "cpu"
    cfg.data.datasets = [str(dataset)]
    cfg.data.batch_size = 4
    cfg.data.workers = 0
    cfg.data.val_shards = 1
    cfg.model.model, cfg.model.width, cfg.model.embedding_dim = "small", 8, 32
    cfg.epochs = 2
    cfg.pairs_per_epoch = None  # one pass over the 24 training pairs
    cfg.val_every = 1
    cfg.checkpoint_every = 1
    cfg.log_every = 2
    cfg.val_audio_pairs = 2
    cfg.progress = False
    cfg.runs_dir, cfg.run = str(runs_dir), run
    for name, value in fields.items():
        setattr(cfg, name, value)
    return cfg


TINY_CLI = ["--model", "small", "--width", "8", "--embedding-dim", "32", "--batch-size", "4", "--workers", "0",
            "--val-shards", "1", "--device", "cpu", "--no-progress"]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_one_line_error(output: str, warnings: bool = False) -> None:
    """The output ends in one ``error:`` line, without a traceback; other lines only
    where logged warnings are expected."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), output
    assert sum(line.startswith("error: ") for line in lines) == 1, output
    assert warnings or len(lines) == 1, output
    assert "Traceback" not in output


@pytest.fixture(scope="module")
def fitted(voice_shards, tmp_path_factory):
    """One 2-epoch run shared by the tests that only read its outputs."""
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_config(voice_shards, runs)
    # A run killed before its first checkpoint left a log; a fresh start replaces it.
    (runs / "run").mkdir()
    (runs / "run" / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 99, "epoch": 0}) + "\n")
    summary = fit(cfg)
    return cfg, summary, runs / "run"


def test_fit_writes_config_metrics_and_tensorboard(fitted):
    cfg, summary, run_dir = fitted
    assert TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())) == cfg
    records = read_metrics(run_dir)
    train = [r for r in records if r["split"] == "train"]
    assert train and all(TRAIN_FIELDS <= set(r) for r in train)
    assert all(math.isfinite(r[key]) for r in train for key in TRAIN_FIELDS)
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10, 12]
    assert all(0.0 <= r["data_wait_fraction"] <= 1.0 and r["pairs_per_s"] > 0 for r in train)
    val = [r for r in records if r["split"] == "val"]
    # The untrained network first (step 0), then after each epoch.
    assert [(r["epoch"], r["step"]) for r in val] == [(0, 0), (0, 6), (1, 12)]
    # 8 held-out pairs (one shard) form one retrieval group of 8.
    assert all(r["group"] == 8 and r["groups"] == 1 and 1 <= r["median_rank"] <= 8 for r in val)
    assert all(0 <= r["recall_at_1"] <= r["recall_at_10"] == 1.0 for r in val)
    assert summary["step"] == 2 * STEPS_PER_EPOCH and math.isfinite(summary["loss"])
    assert summary["val"] == {k: v for k, v in val[-1].items() if k not in ("split", "step", "epoch")}
    assert summary["val_untrained"] == {k: v for k, v in val[0].items() if k not in ("split", "step", "epoch")}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"audio": 0, "images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/alignment", "train/uniformity", "train/lr", "val/loss", "val/recall_at_1"} <= set(tags["scalars"])
    # The learning rate of every step, not only of the logged ones.
    assert [event.step for event in events.Scalars("train/lr")] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert {"val_pair0/a", "val_pair0/b", "val_pair1/a"} <= set(tags["audio"])
    assert {"val_pair0/logmel_a_b", "val_pair1/logmel_a_b"} <= set(tags["images"])


def test_fit_checkpoints_hold_the_documented_keys(fitted, voice_shards):
    cfg, summary, run_dir = fitted
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["epoch-0001.pt", "epoch-0002.pt", "latest.pt"]  # no temporaries left
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert set(state) == set(CHECKPOINT_KEYS) | {"world_size"}
    assert state["world_size"] == 1
    assert (state["epoch"], state["step"]) == (2, 2 * STEPS_PER_EPOCH)
    assert state["config"] == cfg.to_dict()
    manifest_sha = hashlib.sha256((voice_shards / "manifest.json").read_bytes()).hexdigest()
    assert state["manifests"] == {str(voice_shards): manifest_sha}
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    first = load_checkpoint(run_dir / "checkpoints" / "epoch-0001.pt")
    assert first["step"] == STEPS_PER_EPOCH
    assert any(not torch.equal(first["model"][k], state["model"][k]) for k in state["model"])


def test_load_model_gives_the_trained_network_in_eval_mode(fitted):
    _, _, run_dir = fitted
    model, config = load_checkpoint_network(run_dir / "checkpoints" / "latest.pt")
    state = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert not model.training and config.model.embedding_dim == 32
    assert all(torch.equal(value, state["model"][key]) for key, value in model.state_dict().items())
    with torch.no_grad():
        assert model(torch.randn(2, 1, 96, 64)).shape == (2, 32)


@pytest.mark.slow
def test_cli_fit_runs_as_a_module(voice_shards, tmp_path):
    impulse_responses = tmp_path / "irs"
    impulse_responses.mkdir()
    decay = np.exp(-np.arange(800) / 100.0).astype(np.float32)
    soundfile.write(impulse_responses / "room.wav", decay * np.random.default_rng(0).standard_normal(800).astype(np.float32), 16000)
    with_progress = [option for option in TINY_CLI if option != "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-m", "doppeltrain", "fit", str(voice_shards), "--runs-dir", str(tmp_path), "--run", "cli",
         "--epochs", "1", "--steps-per-epoch", "2", "--optimizer", "adam", "--precision", "bf16",
         "--ir-dir", str(impulse_responses), *with_progress],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV,
    )
    assert result.returncode == 0, result.stderr
    assert "cli: 1 epochs, 2 steps" in result.stdout
    assert "epoch 1/1" in result.stderr  # the tqdm bar
    state = load_checkpoint(tmp_path / "cli" / "checkpoints" / "latest.pt")
    config = state["config"]
    assert (config["optim"]["optimizer"], config["steps_per_epoch"], config["precision"]) == ("adam", 2, "bf16")
    assert config["augment"]["ir_dir"] == str(impulse_responses)
    assert "exp_avg" in str(state["optimizer"]["state"])  # Adam's moments, not SGD's empty state
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())


@pytest.mark.parametrize("workers, optimizer", [(0, "sgd"), (2, "adam")])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(voice_shards, tmp_path, workers, optimizer):
    def config(run, **fields):
        cfg = tiny_config(voice_shards, tmp_path, run, **fields)
        cfg.data.workers, cfg.optim.optimizer, cfg.val_every = workers, optimizer, 2
        return cfg

    fit(config("whole"))
    fit(config("split", until_epoch=1))  # as if killed after epoch 1's checkpoint
    assert load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")["epoch"] == 1
    with open(tmp_path / "split" / "metrics.jsonl", "a") as log:  # ... and killed again mid-epoch 2
        log.write(json.dumps({"split": "train", "step": 8, "epoch": 1, "loss": 0.0}) + "\n")
        log.write('{"split": "train", "st')  # a record cut short by the kill
    summary = fit(config("split", resume=True))
    assert summary["step"] == 2 * STEPS_PER_EPOCH
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "latest.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "latest.pt")
    assert list(whole["model"]) == list(split["model"])
    for key in whole["model"]:
        assert torch.equal(whole["model"][key], split["model"][key]), key
    # The resumed run's log has each step once, as the uninterrupted run's, at the same
    # learning rates (a function of the step).
    steps = lambda run: [(r["split"], r["step"], r.get("lr")) for r in read_metrics(tmp_path / run)]
    assert steps("split") == steps("whole")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_weights(voice_shards, tmp_path, stop):
    # Epochs of 30 steps: long enough to be killed in the middle of the second one.
    args = ["fit", str(voice_shards), "--runs-dir", str(tmp_path), "--epochs", "2", "--steps-per-epoch", "30",
            "--val-every", "0", "--log-every", "1", *TINY_CLI]
    killed = subprocess.Popen([sys.executable, "-m", "doppeltrain", *args, "--run", "killed"], cwd=REPO, env=ONE_THREAD_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=default_ctrl_c)
    latest = tmp_path / "killed" / "checkpoints" / "latest.pt"

    def in_second_epoch() -> bool:
        metrics = tmp_path / "killed" / "metrics.jsonl"
        return latest.exists() and metrics.exists() and '"epoch": 1' in metrics.read_text()

    try:
        while not in_second_epoch() and killed.poll() is None:
            time.sleep(0.01)
        assert killed.poll() is None, "the run ended before it could be killed"
        killed.send_signal(stop)
        status = killed.wait(timeout=60)
    finally:
        killed.kill()
        killed.wait()
    assert status == (130 if stop == signal.SIGINT else -signal.SIGKILL)
    assert not [p.name for p in latest.parent.iterdir() if p.name != "latest.pt"]  # no temporaries
    assert load_checkpoint(latest)["epoch"] == 1
    logged = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()  # the last may be cut
    assert 30 < len(logged) < 60  # killed with part of epoch 2 logged

    assert main([*args, "--run", "killed", "--resume"]) == 0
    assert main([*args, "--run", "whole"]) == 0
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "latest.pt")["model"]
    resumed = load_checkpoint(latest)["model"]
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    assert [r["step"] for r in read_metrics(tmp_path / "killed")] == list(range(1, 61))


def test_cli_resume_continues_from_the_checkpoints_config(voice_shards, tmp_path, capsys):
    args = ["fit", str(voice_shards), "--runs-dir", str(tmp_path), "--run", "r", "--epochs", "2",
            "--until-epoch", "1", "--steps-per-epoch", "1", "--val-every", "0", *TINY_CLI]
    assert main(args) == 0
    # A bare --resume takes datasets and options from the run itself.
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "r", "--no-progress"]) == 0
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "latest.pt")
    assert (state["epoch"], state["step"]) == (2, 2)
    capsys.readouterr()  # the runs' epoch lines
    # Changing what the weights depend on is refused, in one line.
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "r", "--lr", "0.5"]) == 2
    error = capsys.readouterr().err
    assert_one_line_error(error)
    assert "optim.lr" in error
    # And another number of loader workers: it decides which worker reads which shard.
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "r", "--workers", "3"]) == 2
    assert "data.workers" in capsys.readouterr().err
    # So is resuming with another number of processes (learning rate, data shares).
    latest = tmp_path / "r" / "checkpoints" / "latest.pt"
    state["world_size"], state["epoch"] = 2, 1
    save_checkpoint(state, latest)
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "r"]) == 2
    error = capsys.readouterr().err
    assert_one_line_error(error)
    assert "trained by 2 processes, this is 1" in error


def test_a_fresh_fit_refuses_to_overwrite_a_run(fitted, voice_shards):
    cfg, _, run_dir = fitted
    with pytest.raises(TrainError, match="already holds a run"):
        fit(tiny_config(voice_shards, run_dir.parent))


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint({key: 1 for key in CHECKPOINT_KEYS}, path)

    class Unpicklable:
        def __reduce__(self):
            raise KeyboardInterrupt  # as if the process were stopped mid-write

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**{key: 2 for key in CHECKPOINT_KEYS}, "model": [torch.zeros(1000), Unpicklable()]}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(path)


def make_corrupt_dataset(voice_shards: Path, tmp_path: Path, part: str) -> Path:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(voice_shards, corrupt)
    if part == "manifest":
        (corrupt / "manifest.json").write_text("{not json")
    else:
        for shard in corrupt.glob("*.tar"):
            shard.write_bytes(np.random.default_rng(0).bytes(5000))
    return corrupt


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such dataset folder"),
        ("empty", "no complete shards"),
        ("corrupt", "unreadable manifest"),
        ("corrupt-shards", "no readable pairs"),
        ("optimizer", "unknown optimizer 'lamb'"),
        ("option", "No such option"),
        ("no-datasets", "no datasets given"),
        ("batch", "--batch-size must be at least 2"),
        ("resume-nothing", "no such checkpoint"),
        ("ir-dir", "--ir-dir"),
        ("empty-ir-dir", "no .wav or .flac impulse responses"),
        pytest.param("cuda", "CUDA is not available", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
    ],
)
def test_bad_inputs_give_one_line_and_exit_2(voice_shards, tmp_path, capsys, case, expected):
    empty = tmp_path / "empty"
    empty.mkdir()
    dataset = {"missing": tmp_path / "nowhere", "empty": empty}.get(case, voice_shards)
    if case.startswith("corrupt"):
        dataset = make_corrupt_dataset(voice_shards, tmp_path, "manifest" if case == "corrupt" else "shards")
    extra = {
        "optimizer": ["--optimizer", "lamb"],
        "option": ["--frobnicate", "3"],
        "batch": ["--batch-size", "1"],
        "resume-nothing": ["--resume"],
        "ir-dir": ["--ir-dir", str(tmp_path / "no-irs")],
        "empty-ir-dir": ["--ir-dir", str(empty)],
        "cuda": ["--device", "cuda"],
    }.get(case, [])
    datasets = [] if case in ("no-datasets", "resume-nothing") else [str(dataset)]
    status = main(["fit", *datasets, "--runs-dir", str(tmp_path / "runs"), *TINY_CLI, *extra])
    captured = capsys.readouterr()
    assert status == 2
    assert_one_line_error(captured.err, warnings=case == "corrupt-shards")  # each bad shard is logged
    assert expected in captured.err
    # Options and data are checked before the run folder is made; unreadable shards show
    # only when read.
    assert not (tmp_path / "runs").exists() or case in ("resume-nothing", "corrupt-shards")


class SlowLoader:
    """A training loader that makes the loop wait ``delay`` seconds for every batch."""

    def __init__(self, loader, delay: float):
        self.loader, self.delay = loader, delay

    def __len__(self):
        return len(self.loader)

    @property
    def skipped(self):
        return self.loader.skipped

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def test_the_data_wait_fraction_counts_the_time_spent_waiting_for_batches(voice_shards, tmp_path, monkeypatch):
    from doppeltrain.data import sources

    delay, real_make_loader = 0.3, sources.make_loader
    monkeypatch.setattr(sources, "make_loader", lambda *a, **k: SlowLoader(real_make_loader(*a, **k), delay) if k["train"] else real_make_loader(*a, **k))
    summary = fit(tiny_config(voice_shards, tmp_path, epochs=1, val_every=0, log_every=1))
    counted = STEPS_PER_EPOCH - 1  # the epoch's first step (starting the workers) is not counted
    assert summary["data_wait_seconds"] >= counted * delay
    assert 0 < summary["data_wait_fraction"] < 1
    # Every logged window (one step each) waited at least the delay: wait = fraction * span.
    for record in [r for r in read_metrics(Path(summary["run_dir"])) if r["split"] == "train"]:
        span = 4 / record["pairs_per_s"]
        assert record["data_wait_fraction"] * span >= delay * 0.999


def test_benchmark_measures_the_data_wait_fraction(voice_shards):
    from benchmarks import train_fit

    fraction = train_fit.measure_fit_wait_fraction(voice_shards, steps=3, batch_size=4, workers=1, width=4)
    # The first batch always waits for the loader's worker process to start: a fraction of
    # 0 means the waiting was not counted.
    assert 0.0 < fraction < 1.0


def test_bad_input_through_the_real_entry_point_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "doppeltrain", "fit", str(tmp_path / "nowhere"), "--runs-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=ONE_THREAD_ENV,
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr)


def test_a_corrupt_member_is_skipped_and_reported_by_fit(voice_shards, tmp_path):
    import tarfile

    dataset = tmp_path / "one-bad-member"
    shutil.copytree(voice_shards, dataset)
    for shard in sorted(dataset.glob("pairs-*.tar")):
        with tarfile.open(shard) as archive:
            member = archive.getmembers()[0]  # the first pair's view a
        data = bytearray(shard.read_bytes())
        data[member.offset_data : member.offset_data + 64] = b"\xff" * 64  # its FLAC header
        shard.write_bytes(bytes(data))
    summary = fit(tiny_config(dataset, tmp_path / "runs", epochs=1, val_every=0))
    assert summary["skipped_samples"] >= 1
    train = [r for r in read_metrics(Path(summary["run_dir"])) if r["split"] == "train"]
    assert train[-1]["skipped_samples"] == summary["skipped_samples"]


# A fixed run is a function of its config on a given machine: the same run twice gives
# the same weights, bit for bit. Across machines the weights are not pinned: four Adam
# steps amplify last-bit differences of another CPU's BLAS and JAX render up to 8 %.
def test_the_same_run_twice_ends_with_the_same_weights(voice_shards, tmp_path):
    def run(name):
        cfg = tiny_config(voice_shards, tmp_path, name, epochs=1, steps_per_epoch=4, val_every=0)
        cfg.optim.optimizer = "adam"
        summary = fit(cfg)
        return load_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "latest.pt")["model"]

    first, second = run("first"), run("second")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    # ... and the run trained: its weights are not the initial ones.
    torch.manual_seed(tiny_config(voice_shards, tmp_path).seed)  # as fit does before building the network
    initial = build_model(tiny_config(voice_shards, tmp_path).model).state_dict()
    assert any(not torch.equal(initial[key], first[key]) for key in first if first[key].is_floating_point())


def test_a_training_step_reads_nothing_back_from_the_device(voice_shards, tmp_path):
    # Counted on the CPU with benchmarks/augment_ops.py's rule: .item(), .tolist(), bool(),
    # nonzero and uploads of host data would each make a GPU's host wait.
    from benchmarks import augment_ops
    from doppeltrain import distributed, train

    run = train._prepare(tiny_config(voice_shards, tmp_path, epochs=1, val_every=0), distributed.init_distributed("cpu"))
    try:
        run.pipeline.augmenter.waveform_augment.one_pass = True  # a GPU's path (the CPU's picks rows with nonzero)
        a, b, _ = next(iter(run.train_loader))
        train.train_step(run, a, b, 0, 0.01)  # the first builds the pitch shift's tables, once
        counted = augment_ops.count_calls(lambda: train.train_step(run, a, b, 0, 0.01))
    finally:
        run.close()
    assert counted["syncs"] == 0, counted["sync_ops"]
    assert counted["ops"] > 100  # the step ran under the counter


def test_a_loss_that_is_not_finite_stops_the_run_at_the_next_read_naming_its_step(voice_shards, tmp_path, monkeypatch):
    from doppeltrain import train

    real_loss, calls = train.contrastive_loss, []

    def poisoned(*args):
        loss, alignment, uniformity = real_loss(*args)
        calls.append(len(calls))
        return (loss * float("nan") if len(calls) == 2 else loss), alignment, uniformity  # step 1

    monkeypatch.setattr(train, "contrastive_loss", poisoned)
    # Losses are read every 4 steps: noticed at step 4, named as step 1, before any checkpoint.
    with pytest.raises(TrainError, match=r"^the loss became nan at step 1 \(epoch 1\)$"):
        fit(tiny_config(voice_shards, tmp_path, epochs=1, val_every=0, log_every=4))
    assert len(calls) == 4
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


def test_losses_read_every_few_steps_log_what_every_step_logged(fitted, voice_shards, tmp_path):
    # The fixture's run logs every 2 steps; the same run logging every step records the
    # same losses at steps 2, 4, ... and the same epoch means (sums stay float64).
    cfg, summary, run_dir = fitted
    every_step = fit(tiny_config(voice_shards, tmp_path, log_every=1))
    by_step = {r["step"]: r for r in read_metrics(tmp_path / "run") if r["split"] == "train"}
    for record in (r for r in read_metrics(run_dir) if r["split"] == "train"):
        assert all(record[key] == by_step[record["step"]][key] for key in ("loss", "alignment", "uniformity"))
    assert every_step["loss"] == summary["loss"]
