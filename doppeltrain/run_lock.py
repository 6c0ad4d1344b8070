"""One ``fit`` per run folder: ``RUNS_DIR/RUN/.lock`` held for the life of the run.

Two fits into one folder both used to succeed: their ``metrics.jsonl`` lines
interleaved, and the checkpoint one of them reported held the other's weights. Rank 0
holds an exclusive ``flock`` on the lock file from before it reads the folder (a resume's
checkpoint, the "already holds a run" check) until the run ends; a second fit is refused
in one line. The kernel releases the lock when the process dies, so a killed run never
leaves a stale one behind. Where the file system has no locks, nothing is refused.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from doppelgen.files import hold_lock, release_lock
from doppeltrain.config_checks import TrainError

LOCK_NAME = ".lock"


@contextmanager
def locked_run_folder(run_dir: Path, active: bool = True) -> Iterator[None]:
    """Make ``run_dir`` and hold its lock for the ``with`` block (only when ``active``:
    rank 0); TrainError in one line when another fit holds it. The folders this call made
    are removed again if the block fails before anything but the lock was written there."""
    if not active:
        yield
        return
    run_dir = Path(run_dir)
    made = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]  # deepest first
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        descriptor = hold_lock(run_dir / LOCK_NAME)
    except BlockingIOError:
        raise TrainError(f"{run_dir} is being trained by another fit (it holds {run_dir / LOCK_NAME}); "
                         "wait for it to end or choose another --run") from None
    except OSError as error:
        raise TrainError(f"cannot use {run_dir} as a run folder: {error.strerror or error}") from None
    try:
        yield
    except BaseException:
        # Options and data are refused before a run folder appears (as before the lock).
        if made and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:  # no longer empty: another writer's
                    break
        raise
    finally:
        release_lock(descriptor)
