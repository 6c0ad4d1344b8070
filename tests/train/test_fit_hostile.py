"""``fit`` at its edges (issue 17): one fit per run folder, a full disk while checkpointing,
and options that used to give tracebacks or be accepted silently."""

from __future__ import annotations

import errno
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from doppeltrain import checkpoint as checkpoint_module
from doppeltrain.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from doppeltrain.cli import main
from doppeltrain.run_lock import LOCK_NAME

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NETWORK = ["--model", "small", "--width", "8", "--embedding-dim", "16"]
RUN = ["--batch-size", "4", "--workers", "0", "--val-shards", "1", "--val-every", "0", "--steps-per-epoch", "2",
       "--augment", "none", "--no-progress"]
TINY = [*NETWORK, *RUN, "--epochs", "1"]
FIRST_OF_TWO_EPOCHS = [*NETWORK, *RUN, "--epochs", "2", "--until-epoch", "1"]


def one_error_line(err: str, after_epoch_lines: bool = False) -> str:
    """The one ``error:`` line of stderr; before it, only the run's epoch lines if expected."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert len(lines) == 1 or (after_epoch_lines and all(line.startswith("epoch ") for line in lines[:-1])), err
    return lines[-1]


@contextmanager
def lock_held_by_another_process(path: Path):
    """A second process holding ``path``'s flock, as a running fit holds its run folder's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); time.sleep(120)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_second_fit_into_a_running_run_folder_is_refused_in_one_line(voice_shards, tmp_path, capsys):
    runs = tmp_path / "runs"
    with lock_held_by_another_process(runs / "conc" / LOCK_NAME):
        assert main(["fit", str(voice_shards), "--runs-dir", str(runs), "--run", "conc", *TINY]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "is being trained by another fit" in line and "conc" in line
        assert sorted(p.name for p in (runs / "conc").iterdir()) == [LOCK_NAME]  # nothing of its own written
    # The lock dies with its holder: the same command now trains.
    assert main(["fit", str(voice_shards), "--runs-dir", str(runs), "--run", "conc", *TINY]) == 0
    assert (runs / "conc" / "checkpoints" / "latest.pt").is_file()


def test_the_run_folder_is_locked_while_fit_runs(voice_shards, tmp_path, monkeypatch):
    """While a fit trains, its lock is held (another process cannot take it)."""
    from doppeltrain import train

    seen = []
    real = train._train

    def probe(run):
        probe_lock = [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); "
                      "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(run.run_dir / LOCK_NAME)]
        seen.append(subprocess.run(probe_lock, capture_output=True).returncode)
        return real(run)

    monkeypatch.setattr(train, "_train", probe)
    assert main(["fit", str(voice_shards), "--runs-dir", str(tmp_path), "--run", "r", *TINY]) == 0
    assert seen == [1]  # the probe's flock failed: held


class FillingHandle:
    """A file handle on a disk that fills after ``room`` bytes (ENOSPC, as a real one)."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(voice_shards, tmp_path, capsys, monkeypatch):
    assert main(["fit", str(voice_shards), "--runs-dir", str(tmp_path), "--run", "full", *FIRST_OF_TWO_EPOCHS]) == 0
    latest = tmp_path / "full" / "checkpoints" / "latest.pt"
    before = latest.read_bytes()
    real_writer = checkpoint_module.atomic_writer

    @contextmanager
    def filling(path):
        with real_writer(path) as handle:
            yield FillingHandle(handle, room=20_000)

    monkeypatch.setattr(checkpoint_module, "atomic_writer", filling)
    capsys.readouterr()
    # A failed run, not bad input: exit 1, as a render whose write fails.
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "full", "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err, after_epoch_lines=True)
    assert "No space left on device" in line and "latest.pt" in line and "kept" in line
    assert latest.read_bytes() == before  # nothing corrupted
    assert [p.name for p in latest.parent.iterdir()] == ["latest.pt"]  # no temporary left
    monkeypatch.setattr(checkpoint_module, "atomic_writer", real_writer)
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "full", "--no-progress"]) == 0


def test_a_real_full_disk_while_saving_is_one_line(tmp_path):
    """On a real 150 kB tmpfs (needs root to mount one; the test above runs everywhere)."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        state = {key: 0 for key in checkpoint_module.CHECKPOINT_KEYS}
        state["model"] = {"w": torch.zeros(100_000)}  # 400 kB
        with pytest.raises(CheckpointWriteError, match="No space left on device") as caught:
            save_checkpoint(state, small / "latest.pt")
        assert "\n" not in str(caught.value)
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.parametrize("extra, words", [
    (["--val-shards", "inf"], "--val-shards must be"),
    (["--val-shards", "nan"], "--val-shards must be"),
    (["--seed", "-1"], "--seed must be a whole number from 0"),
    (["--seed", str(2**64)], "--seed must be a whole number from 0"),
    (["--shuffle-buffer", "0"], "--shuffle-buffer must be at least 1"),
    (["--shuffle-buffer", "-5"], "--shuffle-buffer must be at least 1"),
    (["--width", "100000"], "--width must be 1 to 4096"),
    (["--width", "1024"], "more than the 268435456 allowed"),  # resnet18 at width 1024: 2.9 G parameters
    (["--embedding-dim", str(10**30)], "--embedding-dim must be 1 to 65536"),
    (["--lr", "inf"], "--lr must be a positive finite number"),
    (["--weight-decay", "nan"], "--weight-decay must be"),
    (["--workers", "1000000"], "--workers must be a whole number from 0 to 1024"),
    (["--epochs", str(10**400)], "--epochs must be at most 2**53"),
    (["--steps-per-epoch", str(2**60)], "--steps-per-epoch must be at most 2**53"),
    (["--runs-dir", "FILE"], "is not a folder"),
    (["--run", "FILE"], "is not a folder"),
])
def test_fit_options_that_gave_tracebacks_are_one_line_errors(voice_shards, tmp_path, capsys, extra, words):
    (tmp_path / "afile").write_text("a file")
    if extra == ["--runs-dir", "FILE"]:
        extra = ["--runs-dir", str(tmp_path / "afile")]
    elif extra == ["--run", "FILE"]:  # a run name that is a file in the runs folder
        extra = ["--runs-dir", str(tmp_path), "--run", "afile"]
    args = ["fit", str(voice_shards), "--runs-dir", str(tmp_path / "runs"), *TINY, "--model", "resnet18", *extra]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line and len(line) < 300, line
    assert not (tmp_path / "runs").exists()


def test_a_resumed_checkpoint_with_a_hostile_config_is_one_line(voice_shards, tmp_path, capsys):
    assert main(["fit", str(voice_shards), "--runs-dir", str(tmp_path), "--run", "r", *FIRST_OF_TWO_EPOCHS]) == 0
    latest = tmp_path / "r" / "checkpoints" / "latest.pt"
    state = load_checkpoint(latest)
    state["config"]["epochs"] = "many"  # any JSON type may be there
    save_checkpoint(state, latest)
    capsys.readouterr()
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "r", "--no-progress"]) == 2
    assert "wrong type" in one_error_line(capsys.readouterr().err)
    state["config"]["epochs"] = 2
    state["config"]["model"]["width"] = 4096
    state["model"] = {}
    save_checkpoint(state, latest)
    assert main(["fit", "--resume", "--runs-dir", str(tmp_path), "--run", "r", "--no-progress"]) == 2
    assert "more than the 268435456 allowed" in one_error_line(capsys.readouterr().err)
