"""The GPU check's CPU dry run: the script the lent GPU machine runs keeps working."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--tiny", "--out", str(tmp_path), "--workers", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["platform"]["backend"] == "cpu"
    comparison = report["render"]["cpu_comparison"]
    # Both renders ran on the CPU here: the same bytes, so no error at all.
    assert comparison["pairs"] == 16 and comparison["params_identical"] and comparison["max_error_over_peak"] == 0.0
    train = report["train"]
    assert train["steps"] == 2 * 4  # one timed epoch, then one resumed epoch, of 4 steps
    assert 0 <= train["recall_at_1"]["untrained"] <= 1 and 0 <= train["recall_at_1"]["trained"] <= 1
    assert train["pairs_per_s"] > 0 and 0 < train["data_wait_fraction"] < 1
