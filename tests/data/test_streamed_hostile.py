"""Streamed recipes from strangers (issue 17's classes of defect in ``doppeltrain fit RECIPE.json``):
a recipe that is not a regular file, huge or non-finite numbers, synth arguments out of the
registry's bounds (in the file and through ``doppelgen render --synth-arg``), stream options
without bounds, and clips too short for the network. Each is one line and exit 2, refused
before anything is rendered.
"""

import json
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from doppelgen.cli import app as doppelgen_app
from doppelgen.paper_recipes import recipe_text
from doppeltrain.cli import main

TINY = ["--model", "small", "--width", "8", "--embedding-dim", "32", "--batch-size", "8", "--workers", "0",
        "--steps-per-epoch", "1", "--epochs", "1", "--val-every", "0", "--augment", "none", "--no-progress",
        "--device", "cpu"]


@pytest.fixture
def recipe(voice_recipe) -> dict:
    return json.loads(recipe_text(voice_recipe))


def within(seconds: int) -> None:
    """Fail the test instead of hanging the suite (a FIFO opened for reading blocks)."""
    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")
    signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)


def fit_error(capsys, tmp_path: Path, source: str, *options: str) -> str:
    """Run ``doppeltrain fit`` and return its one error line; fail on anything else."""
    within(120)
    try:
        status = main(["fit", source, "--runs-dir", str(tmp_path / "runs"), "--run", "r", *TINY, *options])
    finally:
        signal.alarm(0)
    error = capsys.readouterr().err
    lines = [line for line in error.strip().splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in error, error
    assert len(lines[0]) < 300, lines[0]
    return lines[0]


def test_a_fifo_given_as_a_recipe_is_refused_not_waited_on(tmp_path, capsys):
    os.mkfifo(tmp_path / "voice.json")  # opening it for reading would block until a writer comes
    line = fit_error(capsys, tmp_path, str(tmp_path / "voice.json"))
    assert "not a regular file (a FIFO)" in line


@pytest.mark.parametrize("field, value, words", [
    ("n_shards", 10**400, "n_shards must lie in [1, 100000], got an integer of"),
    ("pairs_per_shard", 2**63, "pairs_per_shard must lie in [1, 100000]"),
    ("delta", 1e308, "delta must lie in [0, 4], got 1e+308"),
    ("duration", 1e300, "duration must lie in"),
    ("seed", -1, "seed must lie in"),
])
def test_huge_numbers_in_a_recipe_are_one_line(recipe, tmp_path, capsys, field, value, words):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**recipe, field: value}))
    assert words in fit_error(capsys, tmp_path, str(path))


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_in_a_recipe_are_one_line(recipe, tmp_path, capsys, number):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe).replace('"delta": 0.25', f'"delta": {number}'))
    assert "unreadable recipe (invalid JSON" in fit_error(capsys, tmp_path, str(path))


@pytest.mark.parametrize("args", [{"sine": 10**400}, {"sine": 1e300}, {"sine": -1}, {"sine": 17}, {"sine": True}])
def test_synth_arguments_out_of_the_registrys_bounds_in_a_recipe_are_one_line(recipe, tmp_path, capsys, args):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({**recipe, "synth": {"name": "parametric", "args": args}}))
    line = fit_error(capsys, tmp_path, str(path))
    assert ("parametric oscillator counts must be whole numbers in [0, 16], got sine=" in line
            or "synth.args.sine must be int, got True" in line), line


@pytest.mark.parametrize("value", ["9" * 5000, "-1", "17", "99999999999999999999", "nan", "1e3"])
def test_synth_args_out_of_bounds_on_the_render_command_line_are_one_line(tmp_path, value):
    result = CliRunner().invoke(doppelgen_app, ["render", str(tmp_path / "out"), "--synth", "parametric",
                                                "--synth-arg", f"sine={value}"])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "sine" in lines[0] and len(lines[0]) < 300
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_fifo_given_to_render_as_its_recipe_is_refused(tmp_path):
    os.mkfifo(tmp_path / "recipe.json")
    within(120)
    try:
        result = CliRunner().invoke(doppelgen_app, ["render", str(tmp_path / "out"), "--manifest", str(tmp_path / "recipe.json")])
    finally:
        signal.alarm(0)
    assert result.exit_code == 2 and "not a regular file (a FIFO)" in result.stderr


@pytest.mark.parametrize("option, value, words", [
    ("--delta-from", "nan", "--delta-from must lie in [0, 4], got nan"),
    ("--delta-from", "inf", "--delta-from must lie in [0, 4], got inf"),
    ("--delta-from", "1e400", "--delta-from must lie in [0, 4]"),
    ("--delta-from", "-0.5", "--delta-from must lie in [0, 4]"),
    ("--delta-ramp", "nan", "--delta-ramp must be a fraction of the run's steps in (0, 1], got nan"),
    ("--delta-ramp", "inf", "--delta-ramp must be a fraction"),
    ("--delta-ramp", "-1", "--delta-ramp must be a fraction"),
    ("--render-on", "x" * 5000, "unknown --render-on 'xxxx"),
])
def test_stream_options_without_bounds_are_one_line(recipe, tmp_path, capsys, option, value, words):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    extra = ["--delta-from", "0.05"] if option == "--delta-ramp" else []
    assert words in fit_error(capsys, tmp_path, str(path), option, value, *extra)


def test_a_run_longer_than_a_recipe_addresses_is_one_line(recipe, tmp_path, capsys):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    line = fit_error(capsys, tmp_path, str(path), "--epochs", "100000000", "--steps-per-epoch", "100000000")
    assert f"more than the {2**32} a recipe addresses" in line


def test_clips_shorter_than_one_example_are_refused_before_training(recipe, tmp_path, capsys):
    path = tmp_path / "short.json"  # 0.25 s: 4,000 samples, and one example reads 15,600
    path.write_text(json.dumps({**recipe, "duration": 0.25}))
    line = fit_error(capsys, tmp_path, str(path))
    assert "clips of 4000 samples are shorter than one example" in line and "15600" in line
