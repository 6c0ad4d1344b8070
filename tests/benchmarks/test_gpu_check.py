"""gpu_check: the script the lent GPU machine runs works the first time, and every time.

Its CPU dry run (``--tiny``) runs twice in a row in one folder; a kept ``--out`` is
refused; a phase past its budget is killed alone and reported; ``--ddp`` runs two gloo
ranks on the CPU."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[2]


def run_script(*args: str, timeout: int = 900) -> tuple[subprocess.CompletedProcess, list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result, lines


def by_phase(lines: list[dict]) -> dict[str, list[dict]]:
    phases: dict[str, list[dict]] = {}
    for line in lines:
        phases.setdefault(line["phase"], []).append(line)
    return phases


@pytest.mark.slow
def test_the_cpu_dry_run_runs_twice_in_a_row_in_one_folder(tmp_path):
    folders = []
    # The second run: the phases a rerun in the same place can break (its folder, the
    # render's compile cache and output), not the training phases once more.
    for again in (False, True):
        rerun = ["--phases", "env,render"] if again else []
        result, lines = run_script("--tiny", "--out-root", str(tmp_path), "--workers", "1", *rerun)
        assert result.returncode == 0, result.stderr[-3000:]
        phases = by_phase(lines)
        if again:
            assert [line["phase"] for line in lines[1:]] == ["start", "env", "render", "end"]
            assert phases["render"][0]["status"] == "ok" and phases["render"][0]["pairs"] == 64
            folder = Path(phases["start"][0]["out"])
            assert folder.parent == tmp_path and folder != folders[0]
            folders.append(folder)
            continue
        assert phases["imports"][0]["status"] == "ok"
        assert [line["phase"] for line in lines[1:]][:4] == ["start", "env", "render", "compare"]
        failed = [line for line in lines if line.get("status") in ("failed", "timeout")]
        assert not failed, failed
        assert phases["env"][0]["jax_platform"]["backend"] == "cpu" and phases["env"][0]["versions"]["torch"]
        render = phases["render"][0]
        assert render["pairs"] == 64 and render["pairs_per_s"] > 0 and render["kernel_pairs_per_s"] > 0
        # Both renders ran on this CPU: the same bytes, so nothing differs at all.
        comparison = phases["compare"][0]["comparison"]
        assert comparison["agrees"] and comparison["clips"] == comparison["identical_clips"] == 32
        assert comparison["params"]["differing"] == 0 and comparison["log_mel_distance"]["max"] == 0.0
        assert [line["precision"] for line in phases["train"]] == ["bf16", "fp32"]
        assert [line["steps"] for line in phases["train"]] == [2 * 4, 4]  # bf16 resumes for a second epoch of 4 steps
        for train in phases["train"]:
            assert 0 <= train["recall_at_1"]["untrained"] <= 1 and 0 <= train["recall_at_1"]["trained"] <= 1
            assert train["pairs_per_s"] > 0 and 0 < train["data_wait_fraction"] < 1
        # Streamed pairs: never on a GPU here; on the CPU where fit has --render-on.
        assert phases["streamed-gpu"][0]["status"] == "skipped"
        streamed = phases["streamed-cpu"][0]
        assert streamed["status"] == "skipped" and "--render-on" in streamed["reason"] or streamed["status"] == "ok" and streamed["steps"] >= 2
        folder = Path(phases["start"][0]["out"])
        assert folder.parent == tmp_path and phases["end"][0]["out"] == str(folder)
        assert [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()] == lines[1:]
        folders.append(folder)


def test_phases_chooses_in_the_usual_order_and_refuses_an_unknown_one():
    assert gpu_check.chosen_phases(gpu_check.PHASES, "train, render") == ("render", "train")
    assert gpu_check.chosen_phases(gpu_check.PHASES, None) == gpu_check.PHASES
    with pytest.raises(gpu_check.GpuCheckError, match="unknown phase ddp"):
        gpu_check.chosen_phases(gpu_check.PHASES, "render,ddp")


def test_a_kept_out_folder_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "kept.txt").write_text("an earlier run")
    assert gpu_check.main(["--out", str(tmp_path), "--tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {tmp_path} is not an empty folder" in err


def test_a_phase_past_its_budget_is_killed_alone_and_what_it_printed_stays(tmp_path, monkeypatch, capfd):
    script = tmp_path / "slow_phase.py"
    script.write_text(
        "import json, sys, time\n"
        "print(json.dumps({'phase': sys.argv[1], 'status': 'ok', 'part': 'first'}), flush=True)\n"
        "print('still working', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setattr(gpu_check, "PHASE_SCRIPT", script)
    folder = tmp_path / "run"
    folder.mkdir()
    gpu_check.run_phase("render", folder, 2.0, Namespace(tiny=True, workers=None))
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert lines[0] == {"phase": "render", "status": "ok", "part": "first"}
    assert lines[1]["phase"] == "render" and lines[1]["status"] == "timeout" and lines[1]["seconds"] < 20
    assert "still working" in lines[1]["log_tail"]


def test_phase_budgets_are_shares_of_the_time_left():
    assert gpu_check.phase_budget("env", 500) == 60.0  # capped
    assert gpu_check.phase_budget("render", 210) == pytest.approx(0.35 * 200)
    assert gpu_check.phase_budget("streamed-cpu", 8) == 0.0  # nothing left beyond the margin


@pytest.mark.slow
def test_the_ddp_dry_run_trains_two_gloo_ranks_to_equal_weights(tmp_path):
    result, lines = run_script("--ddp", "--tiny", "--out-root", str(tmp_path), "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    phases = by_phase(lines)
    assert phases["start"][0]["phases"] == ["env", "render", "ddp"]
    ddp = phases["ddp"][0]
    assert ddp["status"] == "ok", ddp
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["weights_equal_across_ranks"]
    assert ddp["batchnorm"] and set(ddp["batchnorm"]) == {"AllReduceBatchNorm2d"}  # on CUDA: SyncBatchNorm
    assert ddp["steps"] == 4 and ddp["pairs_per_s"] > 0
