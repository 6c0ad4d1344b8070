"""The phases of gpu_check, one per process: ``python gpu_check_phases.py NAME FOLDER --budget-s S``.

``benchmarks/gpu_check.py`` runs them in order, each with a budget, and kills one that
overruns. A phase prints its JSON lines on the standard output it was given (everything
else the libraries print goes to its log) and appends them to ``FOLDER/results.jsonl``;
phases hand data on through ``FOLDER`` (the render phase's dataset feeds the others).
Every line has ``phase`` and ``status`` (ok, skipped or, from gpu_check.py, failed or
timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_check import emit  # noqa: E402
from doppelgen.render.jax_runtime import prepare_jax_backends  # noqa: E402  (imports no JAX)

# What the phases import, for gpu_check.py --check-imports (run first on the lent machine:
# a wheel missing from device_wheels.txt then fails in seconds, with its name).
IMPORTS = (
    "_cffi_backend", "soundfile", "braceexpand", "webdataset", "synthax", "pyroomacoustics", "jax", "torch",
    "torch.distributed.run", "torch.utils.tensorboard", "doppelgen.cli", "doppelgen.render.loop",
    "doppelgen.render.kernel", "doppelgen.publish.cross_platform", "doppelgen.irs", "doppeltrain.cli", "doppeltrain.train",
)
# Sizes: dataset, render batch, network, training batch, steps per epoch, streamed steps per epoch.
FULL = dict(shards=16, pairs_per_shard=1000, render_batch=1024, model="resnet18", width=64, batch_size=768, steps=20, stream_steps=10, stream_epochs=2)
TINY = dict(shards=4, pairs_per_shard=16, render_batch=16, model="small", width=8, batch_size=8, steps=4, stream_steps=2, stream_epochs=1)
DATASET, CPU_RENDER, RUNS = "render-default-device", "render-cpu", "runs"
GIB = 2**30


class Phase:
    """What a phase knows: its folder, sizes and deadline, and where its lines go."""

    def __init__(self, name: str, folder: Path, budget_s: float, tiny: bool, workers: int | None, results):
        self.name, self.folder, self.budget_s, self.tiny = name, folder, budget_s, tiny
        self.size = TINY if tiny else FULL
        self.workers = workers if workers is not None else max(1, (os.cpu_count() or 2) - 2)
        self.started = time.perf_counter()
        self.results = results

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def emit(self, status: str = "ok", **fields) -> None:
        emit({"phase": self.name, "status": status, **fields, "seconds": round(time.perf_counter() - self.started, 1)}, self.folder, self.results)

    def dataset(self) -> Path | None:
        """The render phase's dataset, if it finished (its manifest is written last)."""
        folder = self.folder / DATASET
        return folder if (folder / "manifest.json").exists() else None


def versions() -> dict:
    found = {}
    for name in ("torch", "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "numpy", "synthax", "soundfile", "webdataset", "pyroomacoustics"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = sys.version.split()[0]
    return found


def jax_peak_gib() -> float | None:
    """Peak bytes JAX held on its first device, where the backend says (GPUs do)."""
    if "jax" not in sys.modules:
        return None
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # backends without memory statistics raise or return None
        return None
    return round(stats["peak_bytes_in_use"] / GIB, 2) if "peak_bytes_in_use" in stats else None


def torch_peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / GIB, 2) if torch.cuda.is_available() else None


# --- env --------------------------------------------------------------------------


def bf16_native(torch) -> bool | None:
    """Whether the GPU runs bf16 natively (Ampere and later), not emulated."""
    if not torch.cuda.is_available():
        return None
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation to exclude
        return torch.cuda.get_device_capability(0) >= (8, 0)


def cuda_major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def phase_env(phase: Phase) -> None:
    import jax
    import torch

    from doppelgen.render.jax_runtime import configure_jax
    from doppelgen.render.platform_identity import render_platform

    configure_jax()
    gpu = None
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        gpu = {"name": properties.name, "count": torch.cuda.device_count(), "memory_gib": round(properties.total_memory / GIB, 1),
               "capability": ".".join(map(str, torch.cuda.get_device_capability(0))), "bf16_native": bf16_native(torch)}
    found = versions()
    plugin = next((cuda_major(name.split("-")[1][4:]) for name in found if name.startswith("jax-cuda")), None)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    phase.emit(
        gpu=gpu, driver=driver, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        jax_platform=render_platform(), jax_devices=[str(device) for device in jax.devices()],
        # torch's CUDA and JAX's plugin must be the same major version (docs/gpu.md)
        cuda_match=(plugin == cuda_major(torch.version.cuda)) if plugin and torch.version.cuda else None,
        xla_preallocate=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), xla_mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
        cpus=os.cpu_count(), versions=found,
    )


# --- render and compare -------------------------------------------------------------


def voice_recipe(size: dict):
    from doppelgen.recipe import make_recipe

    return make_recipe("voice", delta=0.25, n_shards=size["shards"], pairs_per_shard=size["pairs_per_shard"])


def phase_render(phase: Phase) -> None:
    """The dataset on JAX's default device; the kernel's own throughput beside the whole
    render's (which includes the compile, the FLAC encoding and the manifest)."""
    import numpy as np

    from doppelgen.render.kernel import render_batch
    from doppelgen.render.loop import render_dataset
    from doppelgen.render.platform_identity import render_platform

    size, recipe = phase.size, voice_recipe(phase.size)
    started = time.perf_counter()
    render_dataset(recipe, phase.folder / DATASET, batch_size=size["render_batch"], workers=phase.workers, progress=False)
    seconds = time.perf_counter() - started
    batch = size["render_batch"]
    render_batch(recipe, np.arange(batch), batch)  # compiled by the render: a warm call
    timed = time.perf_counter()
    calls = 3
    for call in range(calls):
        render_batch(recipe, np.arange(call * batch, (call + 1) * batch) % recipe.n_pairs, batch)
    kernel_s = time.perf_counter() - timed
    phase.emit(
        platform=render_platform(), pairs=recipe.n_pairs, render_seconds=round(seconds, 1), pairs_per_s=round(recipe.n_pairs / seconds),
        kernel_pairs_per_s=round(calls * batch / kernel_s), render_batch=batch, jax_peak_gib=jax_peak_gib(),
    )


def flat_params(meta: dict) -> list[float]:
    layers = meta.get("layers") or [meta["params"]]
    return [value for layer in layers for role in ("base", "a", "b") for value in layer[role]]


def compare_renders(first: Path, second: Path, shard: int) -> dict:
    """Shard ``shard`` of two renders of one recipe, compared as ``verify --rerender``
    compares renders of two platforms, with the figures behind the verdict."""
    import numpy as np

    from doppelgen.format import iter_shard_pairs, shard_name
    from doppelgen.publish.cross_platform import CLIP_TOLERANCE, MEDIAN_TOLERANCE, PARAMS_TOLERANCE, log_mel_distance

    distances, errors, identical, pairs, mismatched = [], [], 0, 0, 0
    params_worst, params_differing, params_total = 0.0, 0, 0
    for one, other in zip(iter_shard_pairs(first / shard_name(shard)), iter_shard_pairs(second / shard_name(shard)), strict=True):
        pairs += 1
        if one.key != other.key or one.meta["seed"] != other.meta["seed"]:
            mismatched += 1
            continue
        ours, theirs = np.asarray(flat_params(one.meta)), np.asarray(flat_params(other.meta))
        params_total += ours.size
        params_differing += int(np.sum(ours != theirs))
        params_worst = max(params_worst, float(np.max(np.abs(ours - theirs))) if ours.size else 0.0)
        for x, y in ((one.a, other.a), (one.b, other.b)):
            identical += int(np.array_equal(x, y))
            peak = max(float(np.abs(x).max()), 1e-12)
            errors.append(float(np.abs(x - y).max()) / peak)
            distances.append(log_mel_distance(x, y, 16000))
    distances_np = np.asarray(distances)
    median = float(np.median(distances_np)) if distances else None
    agrees = (not mismatched and params_worst <= PARAMS_TOLERANCE and bool(distances) and float(distances_np.max()) <= CLIP_TOLERANCE
              and median <= MEDIAN_TOLERANCE)
    return {
        "pairs": pairs, "mismatched_pairs": mismatched, "clips": len(distances), "identical_clips": identical,
        "params": {"values": params_total, "differing": params_differing, "max_difference": params_worst},
        "max_error_over_peak": {"median": float(np.median(errors)) if errors else None, "max": max(errors, default=None)},
        "log_mel_distance": {"median": median, "q99": float(np.quantile(distances_np, 0.99)) if distances else None,
                             "max": float(distances_np.max()) if distances else None, "over_clip_tolerance": int(np.sum(distances_np > CLIP_TOLERANCE))},
        "tolerances": {"params": PARAMS_TOLERANCE, "clip": CLIP_TOLERANCE, "median": MEDIAN_TOLERANCE},
        "agrees": agrees,
    }


def phase_compare(phase: Phase) -> None:
    """Shard 0 of the dataset rendered again on the CPU, in a process of its own
    (``JAX_PLATFORMS=cpu``), and compared with the default device's."""
    dataset = phase.dataset()
    if dataset is None:
        return phase.emit("skipped", reason="the render phase did not finish its dataset")
    command = [sys.executable, "-m", "doppelgen", "render", str(phase.folder / CPU_RENDER), "--manifest", str(dataset / "manifest.json"), "--shard-range", "0:1", "-q",
               "--workers", str(phase.workers)]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True, timeout=max(1.0, phase.left() - 5))
    cpu_seconds = time.perf_counter() - started
    record = json.loads((dataset / "manifest.json").read_text())["record"]["platform"]
    phase.emit(device_platform=record, cpu_render_seconds=round(cpu_seconds, 1), comparison=compare_renders(dataset, phase.folder / CPU_RENDER, 0))


# --- training on frozen shards ------------------------------------------------------


def train_config(phase: Phase, datasets: list[str], run: str, precision: str):
    from doppeltrain.config import TrainConfig

    size, cfg = phase.size, TrainConfig()
    cfg.data.datasets = datasets
    cfg.data.batch_size, cfg.data.workers = size["batch_size"], phase.workers
    cfg.model.model, cfg.model.width = size["model"], size["width"]
    cfg.precision, cfg.steps_per_epoch = precision, size["steps"]
    cfg.val_every, cfg.checkpoint_every, cfg.progress = 1, 1000, False
    cfg.runs_dir, cfg.run = str(phase.folder / RUNS), run
    return cfg


def train_for(phase: Phase, precision: str, budget_s: float, resume: bool = True) -> dict:
    """One epoch, then (``resume``) as many more as fit ``budget_s``, resumed from its
    checkpoint: figures of the last."""
    import torch

    from doppeltrain.train import fit

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    cfg = train_config(phase, [str(phase.dataset())], f"frozen-{precision}", precision)
    started = time.perf_counter()
    cfg.until_epoch = 1
    first = fit(cfg)
    epoch_s = time.perf_counter() - started
    more = 1 if phase.tiny else int((budget_s - epoch_s) // epoch_s) - 1  # the first epoch held the start-up: one spare
    more = more if resume else 0
    last = first
    if more > 0:
        cfg.resume, cfg.until_epoch = True, 1 + min(more, cfg.epochs - 1)
        last = fit(cfg)
    return {
        "precision": precision, "device": last["device"], "model": f"{cfg.model.model} width {cfg.model.width}", "batch_size": cfg.data.batch_size,
        "steps": last["step"], "first_epoch_seconds": round(epoch_s, 1), "pairs_per_s": last["pairs_per_s"], "data_wait_fraction": last["data_wait_fraction"],
        "recall_at_1": {"untrained": first["val_untrained"]["recall_at_1"], "trained": last["val"]["recall_at_1"]},
        "recall_group": last["val"]["group"], "loss": last["loss"], "max_memory_allocated_gib": torch_peak_gib(),
    }


def phase_train(phase: Phase) -> None:
    """bf16 then fp32 on the frozen shards, a line each."""
    if phase.dataset() is None:
        return phase.emit("skipped", reason="the render phase did not finish its dataset")
    from doppelgen.irs import default_ir_dir

    started = time.perf_counter()
    default_ir_dir()  # rendered into the cache on first use: timed apart from training
    ir_seconds = round(time.perf_counter() - started, 1)
    # fp32 resumes only on a real run: the dry run exercises resuming once, in bf16.
    for precision, share in (("bf16", 0.6), ("fp32", 1.0)):
        phase.emit(**train_for(phase, precision, share * phase.left(), resume=precision == "bf16" or not phase.tiny), ir_set_seconds=ir_seconds)


# --- streamed pairs -------------------------------------------------------------------


def fit_has_render_on() -> bool:
    """Whether ``doppeltrain fit`` takes ``--render-on`` (streamed pairs) in this build."""
    import typer

    from doppeltrain.cli import app

    fit = typer.main.get_command(app).commands["fit"]
    return any("--render-on" in parameter.opts for parameter in fit.params)


def read_metrics(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def phase_streamed(phase: Phase, where: str) -> None:
    """``doppeltrain fit RECIPE.json --render-on WHERE`` for a few steps."""
    import torch

    if not fit_has_render_on():
        return phase.emit("skipped", reason="doppeltrain fit has no --render-on option (streamed pairs not in this build)")
    if where == "gpu" and not torch.cuda.is_available():
        return phase.emit("skipped", reason="no CUDA GPU: --render-on gpu renders on the training GPU")
    from doppelgen.paper_recipes import recipe_text
    from doppeltrain.cli import main as doppeltrain_main

    size = phase.size
    recipe_file = phase.folder / f"stream-{where}.json"
    recipe_file.write_text(recipe_text(voice_recipe(size)))
    run = f"streamed-{where}"
    precision = "bf16" if torch.cuda.is_available() else "fp32"
    code = doppeltrain_main([
        "fit", str(recipe_file), "--run", run, "--runs-dir", str(phase.folder / RUNS), "--render-on", where,
        "--steps-per-epoch", str(size["stream_steps"]), "--until-epoch", str(size["stream_epochs"]), "--batch-size", str(size["batch_size"]),
        "--model", size["model"], "--width", str(size["width"]), "--precision", precision, "--workers", str(phase.workers),
        "--val-every", "1", "--checkpoint-every", "1000", "--no-progress",
    ])
    records = read_metrics(phase.folder / RUNS / run)
    val = [r for r in records if r.get("split") == "val"]
    train = [r for r in records if r.get("split") == "train"]
    phase.emit(
        "ok" if code == 0 else "failed", render_on=where, exit_code=code, precision=precision, batch_size=size["batch_size"],
        steps=train[-1]["step"] if train else None,
        pairs_per_s=train[-1].get("pairs_per_s") if train else None, data_wait_fraction=train[-1].get("data_wait_fraction") if train else None,
        recall_at_1={"start": val[0].get("recall_at_1") if val else None, "end": val[-1].get("recall_at_1") if len(val) > 1 else None},
        max_memory_allocated_gib=torch_peak_gib(), jax_peak_gib=jax_peak_gib(), versions=versions(),
    )


# --- DDP ----------------------------------------------------------------------------------


def phase_ddp(phase: Phase) -> None:
    """torchrun over every GPU (NCCL, SyncBatchNorm) for a few steps; on the CPU dry run two
    gloo processes. One line: what DDP used, and whether the ranks ended equal."""
    import torch

    dataset = phase.dataset()
    if dataset is None:
        return phase.emit("skipped", reason="the render phase did not finish its dataset")
    if phase.tiny:
        ranks, device = 2, "cpu"
    else:
        ranks, device = torch.cuda.device_count(), "cuda"
        if ranks < 2:
            return phase.emit("skipped", reason=f"needs 2 or more GPUs (NCCL refuses two ranks on one), found {ranks}")
    size, run = phase.size, "ddp"
    record_dir = phase.folder / "ddp"
    fit_args = [
        "fit", str(dataset), "--run", run, "--runs-dir", str(phase.folder / RUNS), "--device", device, "--steps-per-epoch", str(size["steps"]),
        "--until-epoch", "1", "--batch-size", str(size["batch_size"]), "--model", size["model"], "--width", str(size["width"]),
        "--workers", str(max(1, phase.workers // ranks)), "--val-every", "1", "--checkpoint-every", "1000", "--audit", "--no-progress",
    ]
    record_dir.mkdir(parents=True, exist_ok=True)
    # In a file: torchrun's own parser would take fit's --run for an abbreviation of its --run-path.
    (record_dir / "fit-args.json").write_text(json.dumps(fit_args))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", str(HERE / "gpu_check_ddp.py"), str(record_dir)]
    code = subprocess.run(command, cwd=REPO, timeout=max(1.0, phase.left() - 5)).returncode
    ranks_seen = [json.loads(path.read_text()) for path in sorted(record_dir.glob("rank*.json"))]
    run_dir = phase.folder / RUNS / run
    digests = set()
    for path in sorted(run_dir.glob("audit-rank*.jsonl")):
        for line in path.read_text().splitlines():
            if "final_weights_sha256" in line:
                digests.add(json.loads(line)["final_weights_sha256"])
    train = [r for r in read_metrics(run_dir) if r.get("split") == "train"]
    equal = len(digests) == 1 and len(ranks_seen) == ranks
    phase.emit(
        "ok" if code == 0 and equal else "failed", exit_code=code, world_size=ranks, device=device,
        backend=ranks_seen[0].get("backend") if ranks_seen else None, batchnorm=ranks_seen[0].get("batchnorm") if ranks_seen else None,
        weights_equal_across_ranks=equal, steps=train[-1]["step"] if train else None, pairs_per_s=train[-1].get("pairs_per_s") if train else None,
        loss=train[-1].get("loss") if train else None, max_memory_allocated_gib=[r.get("max_memory_allocated_gib") for r in ranks_seen],
    )


PHASES = {
    "env": phase_env,
    "render": phase_render,
    "compare": phase_compare,
    "train": phase_train,
    "streamed-gpu": lambda phase: phase_streamed(phase, "gpu"),
    "streamed-cpu": lambda phase: phase_streamed(phase, "cpu"),
    "ddp": phase_ddp,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(PHASES))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    # JSON lines go to the standard output we were given; all else the libraries print
    # (progress, warnings, doppeltrain's summary) to the log on standard error.
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    prepare_jax_backends()  # before any JAX backend: torch keeps the GPU's memory
    PHASES[args.name](Phase(args.name, args.folder, args.budget_s, args.tiny, args.workers, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
