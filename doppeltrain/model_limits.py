"""What a model read from a file may ask for, checked before anything is allocated.

A checkpoint or a model folder is data from whoever published it. Its config decides the
network that is built and the frontend's arrays, so a 19 KB file asking for width 4096
made loading allocate 178 GiB (the network was built before its tensors were compared
with the file's), and frontend values inside each field's range made the mel filterbank
ask for tens of GiB. Every loader (checkpoint, model folder, ``embed``, ``probe``,
``export``, HEAR, a resumed ``fit``) therefore checks, in this order and in one line:

1. each field's type and range (:func:`inference_config_problem`);
2. the sizes they imply: the network's parameter count, read from a build on torch's
   ``meta`` device (shapes without memory), and the frontend's filterbank, one
   example's spectrogram and its image, and that one 1 s window holds one example;
3. the file's tensors, by name and shape, against that network
   (:func:`weights_problem`), before any weight is allocated.

So what loading allocates is bounded by these constants and by the size of the file.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import torch

from doppelgen.format import is_number, is_whole_number, shown, unfit_number
from doppeltrain.config import FeatureConfig, ModelConfig, TrainConfig
from doppeltrain.model import MODEL_BLOCKS, build_model

# Generous for any real network and frontend (the paper's: width 64, 512 dimensions,
# 16 kHz, n_fft 512, 64 mels, 96 frames), small enough that loading stays bounded.
MAX_WIDTH = 4096
MAX_EMBEDDING_DIM = 65536
MAX_SAMPLE_RATE = 384_000
MAX_N_FFT = 65536
MAX_EXAMPLE_FRAMES = 10_000
# Parameters of the network: 1 GiB as float32. The paper's resnet18 has 11.4 M; resnet18
# at width 256 has 180 M; at width 4096 it would have 45.7 G (170 GiB).
MAX_PARAMETERS = 2**28
# (n_fft // 2 + 1) x n_mels weights, built in float64 with a few temporaries of that size:
# 32 MiB each. The paper's is 257 x 64; 48 kHz with n_fft 4096 and 256 mels fits.
MAX_FILTERBANK_ENTRIES = 2**22
# One example's STFT (frames x bins, complex64) and log-mel image (frames x mels): a batch
# of examples holds these per example. The paper's are 96 x 257 and 96 x 64.
MAX_EXAMPLE_BINS = 2**20
MAX_EXAMPLE_PIXELS = 2**17


def inference_config_problem(cfg: TrainConfig) -> str:
    """What is wrong with the model and frontend fields of a config read from a file
    ('' if nothing): types and ranges, then the sizes they imply."""
    model, features = cfg.model, cfg.features
    if not isinstance(model, ModelConfig) or not isinstance(features, FeatureConfig):
        return "model and features must be mappings"
    if not isinstance(model.model, str) or model.model not in MODEL_BLOCKS:
        return f"model.model must be one of {', '.join(MODEL_BLOCKS)}, got {shown(model.model)}"
    int_bounds = {
        "model.width": (model.width, MAX_WIDTH),
        "model.embedding_dim": (model.embedding_dim, MAX_EMBEDDING_DIM),
        "features.sample_rate": (features.sample_rate, MAX_SAMPLE_RATE),
        "features.n_fft": (features.n_fft, MAX_N_FFT),
        "features.window_length": (features.window_length, features.n_fft),
        "features.hop_length": (features.hop_length, MAX_N_FFT),
        "features.n_mels": (features.n_mels, features.n_fft // 2 + 1 if is_whole_number(features.n_fft) else 0),
        "features.example_frames": (features.example_frames, MAX_EXAMPLE_FRAMES),
    }
    for name, (value, upper) in int_bounds.items():
        if not is_whole_number(value) or not 1 <= value <= upper:
            return f"{name} must be an integer in 1..{upper}, got {shown(value)}"
    for name in ("f_min", "f_max", "log_offset"):
        value = getattr(features, name)
        if not is_number(value) or unfit_number(value, name) is not None:  # 10**400: no float holds it
            return f"features.{name} must be a finite number, got {shown(value)}"
    if not 0 <= features.f_min < features.f_max <= features.sample_rate / 2:
        return "features need 0 <= f_min < f_max <= sample_rate / 2"
    if features.log_offset <= 0:
        return "features.log_offset must be positive"
    return frontend_size_problem(features) or network_size_problem(model)


def frontend_size_problem(features: FeatureConfig) -> str:
    """Why the frontend of `features` (fields already in range) is too large to build, or
    cannot fit one example in the 1 s window a clip is cut into; '' if it is fine."""
    bins = features.n_fft // 2 + 1
    sizes = {
        "mel filterbank ((n_fft // 2 + 1) x n_mels)": (bins * features.n_mels, MAX_FILTERBANK_ENTRIES),
        "spectrogram of one example (example_frames x (n_fft // 2 + 1))": (features.example_frames * bins, MAX_EXAMPLE_BINS),
        "log-mel image of one example (example_frames x n_mels)": (features.example_frames * features.n_mels, MAX_EXAMPLE_PIXELS),
    }
    for what, (size, bound) in sizes.items():
        if size > bound:
            return f"the frontend's {what} would hold {size} values, more than the {bound} allowed"
    # Inference cuts clips into windows of one second (sample_rate samples) and feeds
    # each window's first example to the network: a longer example fits no window.
    needed = features.window_length + (features.example_frames - 1) * features.hop_length
    if needed > features.sample_rate:
        return (f"one example reads {needed} samples (window_length + (example_frames - 1) x hop_length), "
                f"more than the {features.sample_rate} of the 1 s window a clip is cut into")
    return ""


@functools.lru_cache(maxsize=8)
def network_shapes(model: str, width: int, embedding_dim: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the state_dict of ``build_model``, read from a build
    on the meta device: no memory is allocated and no random number drawn."""
    with torch.device("meta"):
        network = build_model(ModelConfig(model=model, width=width, embedding_dim=embedding_dim))
    return {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}


def network_size_problem(model: ModelConfig) -> str:
    """Why the network of `model` (fields already in range) is too large; '' if not."""
    shapes = network_shapes(model.model, model.width, model.embedding_dim)
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > MAX_PARAMETERS:
        return (f"the network ({model.model}, width {model.width}, {model.embedding_dim} dimensions) would hold "
                f"{count} values, more than the {MAX_PARAMETERS} allowed")
    return ""


def weights_problem(model: ModelConfig, found: Mapping[str, Any]) -> str:
    """Why tensors with the names and shapes in `found` (name -> shape) do not fit the
    network of `model`; '' if they are exactly its state_dict's."""
    expected = network_shapes(model.model, model.width, model.embedding_dim)
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    if missing:
        return f"{len(missing)} tensor(s) of the network are missing, first {shown(missing[0])}"
    if unexpected:
        return f"{len(unexpected)} tensor(s) are not the network's, first {shown(unexpected[0])}"
    for name, shape in expected.items():
        if tuple(found[name]) != shape:
            return f"tensor {shown(name)} has shape {shown(tuple(found[name]))}, the network's is {shape}"
    return ""
