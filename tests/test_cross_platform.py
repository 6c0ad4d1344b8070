"""Renders across platforms: what identifies a platform, JAX's process settings, and a
dataset rendered with XLA capped at SSE4.2 passing `verify --rerender` here."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from doppelgen.format import read_manifest
from doppelgen.publish import rerender as rerender_module
from doppelgen.publish.cross_platform import CLIP_TOLERANCE, DESCRIPTION, log_mel_distance, params_difference
from doppelgen.render.platform_identity import IDENTITY_KEYS, _cpu_flags, isa_cap, same_platform, xla_cpu_isa

REPO = Path(__file__).resolve().parents[1]
AVX2_HOST = {"sse4_2", "avx", "avx2", "fma"}
AVX512_HOST = AVX2_HOST | {"avx512f", "avx512_vnni"}


def test_the_isa_is_the_hosts_newest_level_capped_by_xla_flags(tmp_path):
    assert xla_cpu_isa(AVX2_HOST, "x86_64", "") == "AVX2"
    assert xla_cpu_isa(AVX512_HOST, "x86_64", "") == "AVX512_VNNI"
    assert xla_cpu_isa(AVX512_HOST, "x86_64", "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=avx2") == "AVX2"
    assert xla_cpu_isa(AVX2_HOST, "x86_64", "--xla_cpu_max_isa=SSE4_2") == "SSE4_2"
    assert xla_cpu_isa(AVX2_HOST, "x86_64", "--xla_cpu_max_isa=AVX512") == "AVX2"  # a cap above the host changes nothing
    assert xla_cpu_isa({"sse4_2", "avx", "avx2"}, "x86_64", "") == "AVX"  # AVX2 without FMA: XLA's AVX2 fuses multiply-adds
    assert xla_cpu_isa({"fp", "asimd", "sve"}, "aarch64", "") == "aarch64 asimd sve"
    assert isa_cap("--xla_cpu_max_isa=SSE4_2") == "SSE4_2" and isa_cap("") is None
    assert _cpu_flags(tmp_path / "no-cpuinfo") is None  # then the ISA is "unknown", never the same platform


def test_the_same_platform_means_every_identity_key_agrees():
    ours = {"backend": "cpu", "device_kind": "cpu", "device_count": 1, "machine": "x86_64", "cpu_isa": "AVX2", "matmul_precision": "highest"}
    assert same_platform(dict(ours, device_count=4), ours)  # more devices render the same bytes
    for key in IDENTITY_KEYS:
        assert not same_platform(dict(ours, **{key: "other"}), ours), key
        older = {k: v for k, v in ours.items() if k != key}  # a manifest written before the key was recorded
        assert not same_platform(older, ours), key
    assert not same_platform(dict(ours, cpu_isa="unknown"), dict(ours, cpu_isa="unknown"))


def test_distances_are_zero_for_equal_clips_and_grow_with_a_level_change():
    t = np.arange(16000) / 16000
    tone = (np.sin(2 * np.pi * 300 * t) * np.minimum(1, 5 * (1 - t))).astype(np.float32)
    assert log_mel_distance(tone, tone, 16000) == 0.0
    assert log_mel_distance(np.zeros(16000), np.zeros(16000), 16000) == 0.0
    assert log_mel_distance(tone, tone[:8000], 16000) == float("inf")
    assert abs(log_mel_distance(tone, tone * 1.2, 16000) - np.log(1.2)) < 0.02
    assert log_mel_distance(tone, tone * 2, 16000) > CLIP_TOLERANCE
    assert params_difference({"base": [0.5, 0.25]}, {"base": [0.5, 0.2500003]}) == pytest.approx(3e-7, rel=0.01)
    assert params_difference({"base": [0.5]}, {"base": [0.5, 0.1]}) == float("inf")
    assert params_difference(None, None) == 0.0


def run_python(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_jax_process_settings_come_before_a_backend_and_respect_the_users(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    code = (
        "import os, jax\n"
        "from doppelgen.render.jax_runtime import prepare_jax_backends\n"
        "prepare_jax_backends()\n"
        "print(os.environ.get('JAX_PLATFORMS'), jax.config.jax_platforms, os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'))"
    )
    # JAX_PLATFORMS=cuda would leave no CPU backend to draw parameters on: cpu is added,
    # after the user's platform (still the default), and JAX's config is told too.
    assert run_python(code, JAX_PLATFORMS="cuda") == "cuda,cpu cuda,cpu false"
    assert run_python(code, JAX_PLATFORMS="cpu") == "cpu cpu false"
    # A bounded reservation the user asked for is left alone.
    assert run_python(code, JAX_PLATFORMS="cpu", XLA_PYTHON_CLIENT_MEM_FRACTION=".3") == "cpu cpu None"


def test_a_ray_task_given_no_gpu_renders_on_the_cpu(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    code = (
        "import os\n"
        "from types import SimpleNamespace\n"
        "from doppelgen.render.distributors import render_run\n"
        "job = SimpleNamespace(render=lambda *a: print(os.environ.get('JAX_PLATFORMS'), os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE')))\n"
        "render_run(job, range(0), 0, gpus={gpus})"
    )
    assert run_python(code.format(gpus=0)) == "cpu false"
    assert run_python(code.format(gpus=1)) == "None false"


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or xla_cpu_isa() in ("SSE4_2", "unknown"), reason="needs an x86-64 CPU newer than SSE4.2")
def test_a_dataset_rendered_with_xla_capped_at_sse42_passes_verify_rerender_here(tmp_path, monkeypatch):
    out = tmp_path / "sse42"
    render = [sys.executable, "-m", "doppelgen", "render", str(out), "--synth", "voice", "--shards", "2", "--pairs-per-shard", "8", "--batch-size", "8", "--workers", "0", "-q"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(render, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "manifest.json").read_text())["record"]["platform"]
    assert record["cpu_isa"] == "SSE4_2" and record["matmul_precision"] == "highest"

    env = {key: value for key, value in env.items() if key != "XLA_FLAGS"}
    verify = subprocess.run([sys.executable, "-m", "doppelgen", "verify", str(out), "--rerender", "8"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    assert f"compared: {DESCRIPTION}; measured: worst clip" in verify.stderr, verify.stderr

    # It is a real difference: byte for byte (as if this were the same platform) the pairs differ.
    monkeypatch.setattr(rerender_module, "same_platform", lambda manifest: True)
    manifest = read_manifest(out)
    exact = rerender_module.rerender_pairs(out, manifest, 8, seed=0)
    assert exact.problems and all(p.endswith("re-rendered bytes differ (but agree as a render from another platform would)") for p in exact.problems)
