"""Checkpoints are data, never code: weights_only loading through every command, RNG
states stored as tensors and restored exactly, and temporaries of killed writers."""

from __future__ import annotations

import os
import pickle
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner
from use_fixtures import SR, write_checkpoint, write_labelled_folder

from doppeltrain.checkpoint import (
    CHECKPOINT_KEYS,
    CheckpointError,
    load_checkpoint,
    load_checkpoint_network,
    save_checkpoint,
)
from doppeltrain.cli import app, main
from doppeltrain.rng_state import rng_state, set_rng_state
from doppeltrain.train import resume_config
from doppeltrain.use import hear, inference

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def craft(path: Path, marker: Path, form: str) -> Path:
    """A file named like a checkpoint whose loading by unpickling would create `marker`:
    ``zip`` as torch.save writes (the payload inside a checkpoint's keys; ``zip4`` with
    pickle protocol 4) or ``pickle``, a bare legacy pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if form.startswith("zip"):
        state = {key: 0 for key in CHECKPOINT_KEYS}
        state["config"] = {"note": Payload(marker)}
        torch.save(state, path, pickle_protocol=4 if form == "zip4" else 2)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    return path


@pytest.fixture(params=["zip", "zip4", "pickle"])
def crafted(request, tmp_path):
    marker = tmp_path / "MARKER"
    # The payload is armed: unpickled the old way, it runs (then forget that marker).
    armed = craft(tmp_path / "armed.pt", tmp_path / "ARMED", request.param)
    try:
        torch.load(armed, weights_only=False)
    except Exception:  # the bare pickle's result is not a checkpoint; it ran regardless
        pass
    assert (tmp_path / "ARMED").exists()
    return craft(tmp_path / "x.pt", marker, request.param), marker


def assert_refused_in_one_line(output: str, name: str) -> None:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert name in lines[0] and "arbitrary unpickling" in lines[0], output
    assert "Traceback" not in output


def test_python_loaders_refuse_a_payload_before_it_runs(crafted):
    path, marker = crafted
    for loader in (load_checkpoint, load_checkpoint_network, inference.load_model, lambda p: hear.load_model(str(p))):
        with pytest.raises(CheckpointError, match="arbitrary unpickling") as caught:
            loader(path)
        assert "\n" not in str(caught.value) and "x.pt" in str(caught.value)
    assert not marker.exists()


def test_commands_refuse_a_payload_before_it_runs(crafted, tmp_path):
    path, marker = crafted
    audio = tmp_path / "clip.wav"
    sf.write(audio, np.zeros(SR, np.float32), SR)
    labelled = write_labelled_folder(tmp_path / "labelled", per_class=3)
    runner = CliRunner()
    for args in (
        ["embed", str(path), str(audio), "--out", str(tmp_path / "e.npy"), "--no-progress"],
        ["probe", str(path), str(labelled), "--out", str(tmp_path / "p.json"), "--no-progress"],
        ["export", str(path), str(tmp_path / "exported")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args[0], result.output)
        assert_refused_in_one_line(result.output, "x.pt")
    assert not marker.exists()
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "p.json").exists()
    assert not (tmp_path / "exported" / "model.safetensors").exists()


def test_fit_resume_refuses_a_payload_before_it_runs(crafted, tmp_path, capsys):
    path, marker = crafted
    latest = tmp_path / "runs" / "r" / "checkpoints" / "latest.pt"
    latest.parent.mkdir(parents=True)
    latest.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        resume_config(tmp_path / "runs" / "r")
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path / "runs"), "--run", "r"]) == 2
    assert_refused_in_one_line(capsys.readouterr().err, "latest.pt")
    assert not marker.exists()


def test_the_real_entry_point_refuses_a_payload_without_a_traceback(tmp_path):
    marker = tmp_path / "MARKER"
    path = craft(tmp_path / "x.pt", marker, "zip")
    audio = tmp_path / "clip.wav"
    sf.write(audio, np.zeros(SR, np.float32), SR)
    result = subprocess.run(
        [sys.executable, "-m", "doppeltrain", "embed", str(path), str(audio), "--out", str(tmp_path / "e.npy")],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2
    assert_refused_in_one_line(result.stderr, "x.pt")
    assert "posix.system" in result.stderr  # says what the file would have run
    assert not marker.exists()


def test_rng_states_are_tensors_and_restore_exactly(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0.0, 1.0)  # leaves python's second Gaussian cached (gauss_next)
    np.random.randn()  # and numpy's (has_gauss, cached_gaussian)
    assert random.getstate()[2] is not None and np.random.get_state()[3] == 1
    path = write_checkpoint(tmp_path / "c.pt")
    state = load_checkpoint(path)
    state["rng"] = rng_state()
    save_checkpoint(state, path)
    expected = (random.random(), random.gauss(0.0, 1.0), np.random.randn(4).tolist(), torch.rand(4).tolist())

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    saved = torch.load(path, weights_only=True)["rng"]  # plain torch, no help from us
    assert isinstance(saved["python"]["state"], torch.Tensor) and isinstance(saved["numpy"]["key"], torch.Tensor)
    assert isinstance(saved["torch"], torch.Tensor)
    set_rng_state(saved)
    assert (random.random(), random.gauss(0.0, 1.0), np.random.randn(4).tolist(), torch.rand(4).tolist()) == expected


def test_malformed_rng_states_are_one_line_errors(tmp_path):
    state = rng_state()
    state["numpy"]["key"] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(CheckpointError, match="RNG states are malformed"):
        set_rng_state(state)
    with pytest.raises(CheckpointError, match="RNG states are malformed"):
        set_rng_state({"python": 1})


def test_checkpoints_need_no_scheduler_but_every_documented_key(tmp_path):
    path = write_checkpoint(tmp_path / "c.pt")
    state = load_checkpoint(path)
    assert "scheduler" not in state and set(CHECKPOINT_KEYS) <= set(state)
    del state["optimizer"]
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="not a doppeltrain checkpoint"):
        load_checkpoint(path)


def test_a_state_that_would_need_unpickling_is_never_written(tmp_path):
    path = write_checkpoint(tmp_path / "c.pt")
    before = path.read_bytes()
    state = load_checkpoint(path)
    state["config"] = {**state["config"], "runs_dir": Path("runs")}  # a Path is not plain data
    with pytest.raises(CheckpointError, match="refusing to write"):
        save_checkpoint(state, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_crafted_config_cannot_make_loading_allocate_without_bound(tmp_path):
    path = write_checkpoint(tmp_path / "c.pt")
    state = load_checkpoint(path)
    state["config"]["model"]["width"] = 10**9
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="model.width must be an integer in 1..4096"):
        load_checkpoint_network(path)


# --- temporaries of killed writers -------------------------------------------------------

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from doppelgen.files import atomic_writer
with atomic_writer(Path(sys.argv[1])) as handle:
    handle.write(b"half a checkpoint")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def kill_a_writer_of(path: Path) -> Path:
    """Start writing `path` through the atomic writer in a process that is killed
    mid-write; returns the temporary it leaves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=REPO, timeout=60)
    assert process.returncode == -9
    (temporary,) = path.parent.glob(f".{path.name}.tmp-*")
    return temporary


def test_saving_removes_the_temporaries_of_killed_writers(tmp_path):
    path = tmp_path / "checkpoints" / "latest.pt"
    temporary = kill_a_writer_of(path)
    assert not path.exists()
    save_checkpoint(load_checkpoint(write_checkpoint(tmp_path / "c.pt")), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]
    assert not temporary.exists()


def test_resuming_a_run_killed_in_its_first_checkpoint_says_to_start_again(voice_shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    kill_a_writer_of(runs / "r" / "checkpoints" / "latest.pt")
    assert main(["fit", "--resume", "--runs-dir", str(runs), "--run", "r"]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert "no such checkpoint" in error and "killed" in error and "without --resume" in error
    # Which is what works: a fresh start, whose first save clears the dead temporary.
    args = ["fit", str(voice_shards), "--runs-dir", str(runs), "--run", "r", "--epochs", "1", "--steps-per-epoch", "1",
            "--model", "small", "--width", "4", "--embedding-dim", "8", "--batch-size", "2", "--workers", "0",
            "--val-shards", "1", "--val-every", "0", "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in (runs / "r" / "checkpoints").iterdir()) == ["epoch-0001.pt", "latest.pt"]


@pytest.mark.parametrize("content", [b"not a checkpoint", b"", b"PK\x03\x04 truncated zip"])
def test_damaged_files_are_unreadable_not_called_unsafe(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="x.pt: unreadable checkpoint") as caught:
        load_checkpoint(path)
    assert "unpickling" not in str(caught.value) and "\n" not in str(caught.value)
