"""The HEAR 2021 API contract of ``doppeltrain.use.hear``."""

from __future__ import annotations

import inspect

import pytest
import torch
from use_fixtures import EMBEDDING_DIM, SR, write_checkpoint

from doppeltrain.use import hear
from doppeltrain.use.inference import embed


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("hear") / "tiny.pt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return hear.load_model(str(checkpoint))


def _audio(n_sounds: int, seconds: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.3 * torch.randn(n_sounds, int(seconds * SR), generator=generator)


def test_the_module_has_the_hear_functions():
    assert list(inspect.signature(hear.load_model).parameters)[0] == "model_file_path"
    assert list(inspect.signature(hear.get_scene_embeddings).parameters) == ["audio", "model"]
    assert list(inspect.signature(hear.get_timestamp_embeddings).parameters) == ["audio", "model"]


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == SR and isinstance(model.sample_rate, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == EMBEDDING_DIM


def test_scene_embeddings_are_the_embed_api(model):
    audio = _audio(3, 2.3)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, model.scene_embedding_size) and scene.dtype == torch.float32
    torch.testing.assert_close(scene, embed(model.embedder, audio, SR), rtol=1e-5, atol=1e-6)


def test_timestamp_embeddings_every_50_ms_in_milliseconds(model):
    audio = _audio(2, 1.23)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    n = 25  # 0, 50, ..., 1200 ms: every timestamp inside the 1230 ms clip
    assert embeddings.shape == (2, n, model.timestamp_embedding_size) and embeddings.dtype == torch.float32
    assert timestamps.shape == (2, n)
    torch.testing.assert_close(timestamps[0], torch.arange(n, dtype=torch.float32) * 50.0)
    torch.testing.assert_close(timestamps[1], timestamps[0])
    assert not torch.allclose(embeddings[0, 0], embeddings[0, 12])


def test_a_timestamp_embedding_describes_the_audio_around_it(model):
    audio = _audio(1, 2.0)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    k = 20  # 1000 ms
    assert timestamps[0, k].item() == 1000.0
    centre = model.embedder.framing.centre  # 96 frames span 15600 samples: the middle is 7800
    assert centre == 7800
    start = SR - centre
    window = audio[:, start:start + SR]
    torch.testing.assert_close(embeddings[0, k], embed(model.embedder, window, SR)[0], rtol=1e-4, atol=1e-5)


def test_timestamp_hop_is_a_model_option(checkpoint):
    coarse = hear.load_model(str(checkpoint), timestamp_hop_ms=250.0)
    _, timestamps = hear.get_timestamp_embeddings(_audio(1, 1.0), coarse)
    assert timestamps[0].tolist() == [0.0, 250.0, 500.0, 750.0]


def test_the_model_moves_with_to(checkpoint):
    # The kit calls model.to(device): every weight and buffer (the frontend's window and
    # filterbank included) must go, so ask for a device none of them is on.
    moved = hear.load_model(str(checkpoint)).to("meta")
    tensors = dict(moved.named_parameters()) | dict(moved.named_buffers())
    assert "embedder.frontend.filterbank" in tensors and "embedder.encoder.conv1.weight" in tensors
    assert {name: t.device.type for name, t in tensors.items()} == {name: "meta" for name in tensors}
    assert moved.embedder.device.type == "meta"
    doubled = hear.load_model(str(checkpoint)).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in doubled.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_model_embeds_on_the_gpu_as_on_the_cpu(model, checkpoint):
    audio = _audio(2, 1.7)
    on_gpu = hear.load_model(str(checkpoint)).to("cuda")
    scene = hear.get_scene_embeddings(audio.cuda(), on_gpu)
    assert scene.device.type == "cuda"
    torch.testing.assert_close(scene.cpu(), hear.get_scene_embeddings(audio, model), rtol=1e-3, atol=1e-4)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio.cuda(), on_gpu)
    assert embeddings.device.type == timestamps.device.type == "cuda"


def test_bad_calls_fail_clearly(model, tmp_path):
    with pytest.raises(ValueError, match="checkpoint"):
        hear.load_model("")
    with pytest.raises(ValueError, match="no such checkpoint"):
        hear.load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(SR), model)
    with pytest.raises(ValueError, match="no samples"):
        hear.get_timestamp_embeddings(torch.zeros(2, 0), model)
