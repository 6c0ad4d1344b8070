"""Shared fixtures: small datasets rendered once per test session; torch on one thread."""

import os
from pathlib import Path

import pytest
import torch

# Compiled synth kernels are kept between test runs (JAX compiles each synth for seconds).
os.environ.setdefault("DOPPELGANGERS_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))

from doppelgen.recipe import make_recipe
from doppelgen.render.loop import render_dataset


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module's tests: the tiny networks run faster on one thread
    than on two contended ones (CI has two cores, shared with loader workers and jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def starts_a_ray_cluster(item: pytest.Item) -> bool:
    return item.module.__name__.endswith("test_ray_render") or "ray_render" in item.name


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (make test), two local Ray clusters started at once by two
    # workers contend for the same default ports: keep them on one worker.
    for item in items:
        if starts_a_ray_cluster(item):
            item.add_marker(pytest.mark.xdist_group("ray"))
