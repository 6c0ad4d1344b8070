"""Options that used to give a traceback, a wrong message or a silent acceptance
(issue 17): Ray's infinite resources, ``card --license``, HEAR's timestamp hop."""

from __future__ import annotations

import math
import shutil

import pytest
from publish_helpers import run_cli
from typer.testing import CliRunner
from use_fixtures import write_checkpoint

from doppelgen.cli import app
from doppelgen.hub import license_problem
from doppelgen.render.distributors import DistributorError, RayOptions
from doppeltrain.use import hear
from doppeltrain.use.model_folder import ModelFolderError, export_model


@pytest.mark.parametrize("field", ["cpus_per_task", "gpus_per_task"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_ray_resources_must_be_finite(field, value):
    with pytest.raises(DistributorError, match="must be a fraction of 1 or a whole number") as caught:
        RayOptions(**{field: value}).validate()
    assert "\n" not in str(caught.value)


def test_ray_inf_resources_are_one_line_on_the_command_line(tmp_path):
    for option in ("--gpus-per-task", "--cpus-per-task"):
        result = CliRunner().invoke(app, ["render", str(tmp_path / "ray1"), "--synth", "voice", "--shards", "2",
                                          "--pairs-per-shard", "4", "--distributor", "ray", option, "inf"])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.output, result.output
        assert option in result.stderr
        assert not (tmp_path / "ray1").exists()


@pytest.mark.parametrize("license", ["a b", "mit\nconfigs: evil", "", "x" * 200, "-mit", "mit:"])
def test_card_and_export_refuse_the_same_licenses(voice_shards, tmp_path, license):
    dataset = shutil.copytree(voice_shards, tmp_path / "data")
    result = run_cli("card", dataset, "--license", license)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--license must be a license id" in result.stderr
    assert not (dataset / "README.md").exists()
    with pytest.raises(ModelFolderError, match="--license must be a license id"):
        export_model(write_checkpoint(tmp_path / "c.pt"), tmp_path / "model", license=license)
    assert license_problem(license)


@pytest.mark.parametrize("license", ["cc-by-4.0", "mit", "apache-2.0", "other", "cc-by-nc-sa-4.0", "lgpl-2.1+"])
def test_hub_license_ids_are_accepted(license):
    assert license_problem(license) == ""


@pytest.mark.parametrize("hop", [math.nan, math.inf, -1.0, 0.0, "50", True, 10**400, 1e300])
def test_hear_refuses_a_bad_timestamp_hop_before_loading(tmp_path, hop):
    with pytest.raises(ValueError, match="timestamp_hop_ms must be a positive finite number") as caught:
        hear.load_model(tmp_path / "does-not-matter.pt", timestamp_hop_ms=hop)
    assert "\n" not in str(caught.value)
