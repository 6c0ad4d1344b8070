"""Shared fixtures: small datasets rendered once per test session."""

import os
from pathlib import Path

import pytest

# Compiled synth kernels are kept between test runs (JAX compiles each synth for seconds).
os.environ.setdefault("DOPPELGANGERS_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))

from doppelgen.config import make_recipe  # noqa: E402
from doppelgen.dataset import render_dataset  # noqa: E402


@pytest.fixture(scope="session")
def voice_recipe():
    """The paper's voice synth at its defaults, 4 shards of 8 pairs."""
    return make_recipe("voice", n_shards=4, pairs_per_shard=8)


@pytest.fixture(scope="session")
def voice_shards(tmp_path_factory, voice_recipe) -> Path:
    """A finished dataset of ``voice_recipe``. Read-only: copy it before changing anything."""
    out = tmp_path_factory.mktemp("voice-shards")
    render_dataset(voice_recipe, out, batch_size=8, workers=0, progress=False)
    return out
