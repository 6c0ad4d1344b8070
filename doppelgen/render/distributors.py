"""How a render's shards are spread: all in this process (``local``) or as tasks on a Ray
cluster (``ray``). Two functions with one signature, picked by name from
``DISTRIBUTORS`` (img2dataset's distributors): ``distributor(job, shards, options,
progress, warn)`` checks its options and what it needs, claims OUT (``job.claim``),
renders ``shards`` in runs (``job.render``), writes manifest.json where they were
rendered (``job.finish``) and returns the summary. To add a distributor, add its function
and its entry here.

A Ray task renders a run of consecutive shards with :meth:`RenderJob.render`, so the
kernel, the shard writer, the atomic protocol, the folder claim and resume are the local
ones: a task killed midway leaves only temporaries of a dead writer, and its retry skips
the complete shards and removes those temporaries. The tasks never write manifest.json
(two of them finishing together would both see the recipe complete); the driver asks for
it once, in one more task, after the last render task: that task runs where the render
tasks run, so the manifest records their platform and software.

OUT must be the same place for the driver and every node: a folder on a file system they
share, or an object-store URL.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from doppelgen.console import InputError, one_line
from doppelgen.files import default_workers
from doppelgen.render.shard_runs import RenderJob, RenderSummary

RAY_EXTRA = "pip install 'doppelgangers[ray]'"
# How often the driver wakes from waiting on tasks: Ctrl-C is handled between waits.
WAIT_SECONDS = 0.5
# ray.init retried a HOST:PORT that nothing listened on for minutes (ray:// for 30 s):
# the driver knocks first and gives up after this long.
CONNECT_SECONDS = 10.0


class DistributorError(InputError):
    """The distributor cannot run with these options or this installation; one line."""


class ClusterError(RuntimeError):
    """The cluster could not be reached, or a task failed for good; one line."""


@dataclass(frozen=True)
class RayOptions:
    """How ``--distributor ray`` cuts the render into tasks and what each task asks for."""

    address: str = "auto"  # "auto": RAY_ADDRESS, else the cluster `ray start` started here, else a new local one
    shards_per_task: int = 4  # a task's run of shards: long enough to amortize its start, short enough to retry cheaply
    cpus_per_task: float = 1.0
    gpus_per_task: float | None = None  # None: 1 where the cluster reports GPUs, else 0
    max_retries: int = 3  # retries of a task whose process died or that hit a storage error

    def validate(self) -> None:
        if not self.address.strip():
            raise DistributorError("--ray-address must not be empty (use auto, local, HOST:PORT or ray://HOST:PORT)")
        if self.shards_per_task < 1:
            raise DistributorError(f"--shards-per-task must be >= 1, got {self.shards_per_task}")
        if self.max_retries < 0:
            raise DistributorError(f"--max-retries must be >= 0, got {self.max_retries}")
        for name, value, least in (("--cpus-per-task", self.cpus_per_task, 0.0), ("--gpus-per-task", self.gpus_per_task, 0.0)):
            if value is None:
                continue
            # Ray takes fractions of one CPU or GPU, and whole numbers above one.
            if not (math.isfinite(value) and value >= least) or (value > 1 and value != int(value)) or (name == "--cpus-per-task" and value == 0):
                raise DistributorError(f"{name} must be a fraction of 1 or a whole number{' > 0' if name == '--cpus-per-task' else ''}, got {value:g}")


def task_resources(options: RayOptions, cluster: dict) -> dict:
    """``ray.remote`` options of the tasks, given the cluster's resources (``ray.cluster_resources()``)."""
    gpus = options.gpus_per_task if options.gpus_per_task is not None else (1.0 if cluster.get("GPU", 0) > 0 else 0.0)
    return {
        "num_cpus": options.cpus_per_task,
        "num_gpus": gpus,
        "max_retries": options.max_retries,
        # JAX binds a process to the GPUs it saw first: a GPU task's process must serve no
        # other task (Ray's default only when num_gpus is given here, not in .options()).
        "max_calls": 1 if gpus > 0 else 0,
    }


def task_workers(options: RayOptions, gpus: float, workers: int | None = None) -> int:
    """Encoding processes a task starts: ``workers`` if asked for, else none on a CPU task
    (its one core renders and encodes in turn; an encoder process would only compete for
    it) and one per CPU on a GPU task (the device renders, the cores encode)."""
    if workers is not None:
        return workers
    return int(options.cpus_per_task) if gpus > 0 else 0


def shard_runs(shards: range, per_task: int) -> list[range]:
    """``shards`` cut into consecutive runs of at most ``per_task``."""
    return [range(start, min(start + per_task, shards.stop)) for start in range(shards.start, shards.stop, per_task)]


def import_ray():
    try:
        import ray
    except ImportError:
        raise DistributorError(f"--distributor ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    return ray


def _task_backends(gpus: float) -> None:
    """JAX's backends in a Ray task, before it renders. ``gpus``: what the task asked Ray for."""
    from doppelgen.render.jax_runtime import configure_jax_memory, use_cpu_only

    if not gpus:
        # Ray sets CUDA_VISIBLE_DEVICES only for tasks it gives GPUs: a CPU task on a GPU
        # node would see every GPU and render on GPU 0.
        use_cpu_only()
    # Several tasks may share one GPU (--gpus-per-task 0.5): JAX must not take 75% of it each.
    configure_jax_memory()


def render_run(job: RenderJob, shards: range, workers: int, gpus: float = 0.0) -> RenderSummary:
    """The body of one Ray render task: render ``shards`` of the job (resuming what a
    killed attempt left); 0 ``gpus`` renders on the CPU."""
    _task_backends(gpus)
    return job.render(shards, workers)


def finish_run(job: RenderJob, rendered: bool, seconds: float, gpus: float = 0.0) -> RenderSummary:
    """The body of the Ray manifest task (``RenderJob.finish``), on the render tasks'
    resources, so that the manifest records the platform they rendered on."""
    _task_backends(gpus)
    return job.finish(rendered, seconds)


@contextmanager
def ray_connection(ray, address: str) -> Iterator[bool]:
    """Be connected to a cluster for the ``with`` block, which gets whether this process
    started that cluster. A connection the caller already holds (a notebook's, a test's)
    is used and kept; one made here is closed after, and a local cluster started here
    stops with it."""
    if ray.is_initialized():
        yield False
        return
    _check_reachable((os.environ.get("RAY_ADDRESS") or address) if address == "auto" else address)
    try:
        # Ray's own address="auto" refuses to start a cluster; address=None finds
        # RAY_ADDRESS or the last `ray start` here and otherwise starts a local one.
        ray.init(address=None if address == "auto" else address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as error:  # ConnectionError, or anything Ray raises for a bad address
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {one_line(error)}") from None
    try:
        yield cluster_started_here(ray)
    finally:
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Refuse in seconds a concrete ``[ray://]HOST:PORT`` where nothing listens; Ray
    resolves (and reports on) every other form itself."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise ClusterError(f"no Ray cluster answers at {address}: {error.strerror or one_line(error)}") from None


def local_distributor(job: RenderJob, shards: range, options: RayOptions, progress: bool, warn: Callable[[str], None]) -> RenderSummary:
    """Every shard in this process, one run of them all (``job.workers`` encoding
    processes, default one a core), then the manifest here. Takes no cluster options."""
    if options != RayOptions():
        raise DistributorError("--ray-address, --shards-per-task, --cpus-per-task, --gpus-per-task and --max-retries apply only to --distributor ray")
    job.claim()
    summary = job.render(shards, default_workers() if job.workers is None else job.workers, progress)
    final = job.finish(bool(summary.rendered), summary.seconds)
    summary.manifest_written, summary.complete = final.manifest_written, final.complete
    return summary


def ray_distributor(job: RenderJob, shards: range, options: RayOptions, progress: bool, warn: Callable[[str], None]) -> RenderSummary:
    """Render ``shards`` as Ray tasks of ``options.shards_per_task`` shards, each retried up
    to ``options.max_retries`` times, then write manifest.json in one more task once every shard
    of the recipe is complete. The bytes are those of a local render. Ctrl-C cancels the
    tasks and keeps the complete shards (KeyboardInterrupt propagates). ``warn`` gets
    one-line notes (a request the cluster cannot meet yet)."""
    from tqdm import tqdm

    options.validate()
    ray = import_ray()
    job.claim()  # here, once: no task ever clears anything
    started = time.perf_counter()
    with ray_connection(ray, options.address) as started_here:
        cluster = ray.cluster_resources()
        resources = task_resources(options, cluster)
        for name, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
            if resources[key] > cluster.get(name, 0):
                warn(f"each task asks for {resources[key]:g} {name}, the cluster has {cluster.get(name, 0):g} now: tasks wait until such nodes join")
        # A died process is always retried; of exceptions only those a retry can cure:
        # storage errors (a network blip) and an encoding worker that was killed.
        task = ray.remote(**resources, retry_exceptions=_retried_exceptions())(render_run).options(name="doppelgen-render")
        workers = task_workers(options, resources["num_gpus"], job.workers)
        summary = RenderSummary(out=job.out)
        pending = {task.remote(job, run, workers, gpus=resources["num_gpus"]): run for run in shard_runs(shards, options.shards_per_task)}
        with tqdm(total=len(shards), unit="shard", desc=f"render {job.recipe.synth.name} on ray", disable=not progress) as bar:
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
                    for ref in ready:
                        del pending[ref]
                        done = _result(ray, ref)
                        summary.rendered.extend(done.rendered)
                        summary.skipped.extend(done.skipped)
                        summary.pairs += done.pairs
                        bar.update(len(done.rendered) + len(done.skipped))
            except BaseException:
                # A cluster this process started goes with ray.shutdown(), its workers
                # killed; only tasks on a cluster that outlives us need cancelling.
                if not started_here:
                    _cancel(ray, list(pending))
                raise
        summary.rendered.sort()
        summary.skipped.sort()
        summary.seconds = time.perf_counter() - started
        finish = ray.remote(**resources)(finish_run).options(name="doppelgen-manifest")
        final = _result(ray, finish.remote(job, bool(summary.rendered), summary.seconds, gpus=resources["num_gpus"]))
    summary.manifest_written, summary.complete = final.manifest_written, final.complete
    summary.seconds = time.perf_counter() - started
    return summary


# Where shards are rendered, by the name --distributor takes: functions of one signature.
Distributor = Callable[[RenderJob, range, RayOptions, bool, Callable[[str], None]], RenderSummary]
DISTRIBUTORS: dict[str, Distributor] = {"local": local_distributor, "ray": ray_distributor}


def _retried_exceptions() -> list[type[BaseException]]:
    from doppelgen.render.encoding_workers import EncodingWorkerError

    return [OSError, EncodingWorkerError]


def _result(ray, ref) -> RenderSummary:
    """The task's summary; its failure as the exception it raised in the task (the CLI
    knows how to say those in one line), or a ClusterError."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = error.cause if isinstance(error.cause, BaseException) else None
        if cause is not None and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise ClusterError(f"a render task failed: {one_line(cause or error)}") from None
    except ray.exceptions.RayError as error:
        # The worker or its node died more often than --max-retries allows, and the like.
        text = one_line(error).split(". ")[0]
        raise ClusterError(f"a render task failed for good ({type(error).__name__}): {text}; completed shards are kept, re-run to resume") from None


def cluster_started_here(ray) -> bool:
    """Whether ``ray.init`` started the cluster (its head node) in this process rather
    than joining one. Ray says so only on its private node object; where that is gone,
    answer no, which costs only the forced cancel below."""
    node = getattr(getattr(getattr(ray, "_private", None), "worker", None), "_global_node", None)
    return bool(getattr(node, "head", False))


def _cancel(ray, refs: list) -> None:
    """Stop the ``refs`` not yet done by killing their processes. Not Ray's polite cancel:
    its KeyboardInterrupt, landing in soundfile's I/O callback, was printed and swallowed
    and the task went on encoding, with libsndfile handed a failed callback. A killed
    writer leaves only a temporary, which the next run on that host removes.

    A forced cancel whose task's reply is already on its way makes Ray's core worker
    abort ("Tried to complete task that was not pending"), so finished tasks are left
    alone; the window that remains is a task finishing during this loop."""
    if not refs:
        return
    _, running = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in running:
        ray.cancel(ref, force=True)
