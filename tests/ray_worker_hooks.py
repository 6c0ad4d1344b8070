"""Instrumentation that tests/test_ray_render.py installs in its Ray cluster's worker
processes (runtime_env ``worker_process_setup_hook``); nothing imports it elsewhere.

- Every manifest.json write is logged, with the name of the Ray task that made it.
- While an "arm" file names a shard tar, the worker about to write that tar takes the
  arm (a rename: one winner), writes half the tar to the writer's real temporary name,
  and SIGKILLs its own process: a task killed mid-shard, as the out-of-memory killer or
  a lost node would do it.

Both live under the folder named by DOPPELGEN_TEST_RAY_DIR in the workers' environment.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

HOOK_DIR_ENV = "DOPPELGEN_TEST_RAY_DIR"
ARM_NAME, FIRED_NAME, MANIFEST_LOG_NAME = "kill-next-shard", "killed.json", "manifest-writes.log"


def install() -> None:
    from doppelgen import files, storage
    from doppelgen.render import shard_runs

    folder = Path(os.environ[HOOK_DIR_ENV])
    # Local shard files are written by storage.LocalStore.put through this name.
    real_write_atomic, real_write_manifest = storage.write_atomic, shard_runs.write_manifest

    def write_atomic(path, data: bytes) -> None:
        path = Path(path)
        if path.name == _read(folder / ARM_NAME) and _take(folder / ARM_NAME, folder / f"{ARM_NAME}.{os.getpid()}"):
            temporary = files.temporary_path(path)
            with open(temporary, "wb") as handle:
                handle.write(data[: len(data) // 2])
            (folder / FIRED_NAME).write_text(json.dumps({"pid": os.getpid(), "temporary": str(temporary)}))
            os.kill(os.getpid(), signal.SIGKILL)
        real_write_atomic(path, data)

    def write_manifest(out_dir, manifest: dict) -> None:
        import ray

        with open(folder / MANIFEST_LOG_NAME, "a") as log:
            log.write(f"{ray.get_runtime_context().get_task_name()}\n")
        real_write_manifest(out_dir, manifest)

    storage.write_atomic = write_atomic
    shard_runs.write_manifest = write_manifest


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _take(arm: Path, taken: Path) -> bool:
    try:
        os.rename(arm, taken)
        return True
    except FileNotFoundError:
        return False
