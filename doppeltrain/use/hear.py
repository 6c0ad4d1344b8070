"""The HEAR 2021 API, so the HEAR evaluation kit runs a doppeltrain model unchanged:

    python -m heareval.embeddings.runner doppeltrain.use.hear --model runs/NAME/checkpoints/latest.pt

``--model`` is a checkpoint or a model folder written by ``doppeltrain export``.

HEAR's tasks are distributed at 48 kHz only, and the kit reads the audio of
``TASK/{model.sample_rate}/``. ``--model-options '{"input_sample_rate": 48000}'`` makes
the model declare 48 kHz to the kit and resample to its own rate inside, for scene and
timestamp embeddings alike (timestamps stay in milliseconds of the audio given).

Scene embeddings are what ``doppeltrain embed`` computes: the mean over the clip's
0.96 s examples. Timestamp embeddings are one example (a 1 s window) centred on each
timestamp, every `timestamp_hop_ms` (50 ms by default, the HEAR recommendation for
event detection, rather than the network's native 0.96 s), from 0 ms to the clip's end;
the audio outside the clip reads as silence. Timestamps are in milliseconds.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import Tensor, nn

from doppelgen.format.limits import shown
from doppeltrain.use import inference

TIMESTAMP_HOP_MS = 50.0
# A hop longer than any clip gives one timestamp; past this its sample count would overflow.
MAX_TIMESTAMP_HOP_MS = 1e9
# The fastest rate the format allows (doppelgen.format.limits): HEAR declares 48 kHz.
MAX_INPUT_SAMPLE_RATE = 192_000


class HearModel(nn.Module):
    """A frozen embedder with the attributes the HEAR API asks for."""

    def __init__(self, embedder: inference.AudioEmbedder, timestamp_hop_ms: float = TIMESTAMP_HOP_MS, batch_size: int = 256,
                 input_sample_rate: Optional[int] = None):
        super().__init__()
        check_options(timestamp_hop_ms, batch_size, input_sample_rate)
        self.embedder = embedder
        # What the kit reads audio at; the embedder's own rate is embedder.sample_rate.
        self.sample_rate = int(input_sample_rate) if input_sample_rate is not None else embedder.sample_rate
        self.scene_embedding_size = embedder.embedding_dim
        self.timestamp_embedding_size = embedder.embedding_dim
        # Whole samples at the embedder's rate, so the reported milliseconds are exact for the windows taken.
        self.timestamp_hop = max(1, round(timestamp_hop_ms * embedder.sample_rate / 1000.0))
        self.batch_size = batch_size


def check_options(timestamp_hop_ms: float, batch_size: int, input_sample_rate: Optional[int] = None) -> None:
    """ValueError in one line unless the kit's model options are usable."""
    if isinstance(timestamp_hop_ms, bool) or not isinstance(timestamp_hop_ms, (int, float)) or not (
        0 < timestamp_hop_ms <= MAX_TIMESTAMP_HOP_MS  # False for NaN, without converting a huge int
    ):
        raise ValueError(f"timestamp_hop_ms must be a positive finite number, at most {MAX_TIMESTAMP_HOP_MS:g}, "
                         f"got {shown(timestamp_hop_ms)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number, at least 1, got {shown(batch_size)}")
    if input_sample_rate is not None and (
        isinstance(input_sample_rate, bool) or not isinstance(input_sample_rate, (int, float))
        or not 0 < input_sample_rate <= MAX_INPUT_SAMPLE_RATE or input_sample_rate != int(input_sample_rate)
    ):
        raise ValueError(f"input_sample_rate must be a positive whole number of Hz, at most {MAX_INPUT_SAMPLE_RATE}, got {shown(input_sample_rate)}")


def load_model(model_file_path: Union[str, os.PathLike] = "", timestamp_hop_ms: float = TIMESTAMP_HOP_MS, batch_size: int = 256,
               input_sample_rate: Optional[int] = None) -> HearModel:
    """The checkpoint (or exported model folder) at `model_file_path` as a HEAR model, on
    the CPU (the kit moves it with ``.to(device)``). Extra keyword arguments are the
    kit's ``model_options``; with `input_sample_rate` the model declares that rate as its
    ``sample_rate`` and resamples the audio it is given to the network's rate.
    CheckpointError (a ValueError) in one line for a file that is not a doppeltrain
    model, including one that would need arbitrary unpickling."""
    if not str(model_file_path):
        raise ValueError("doppeltrain.use.hear.load_model needs the path of a doppeltrain checkpoint or model folder")
    check_options(timestamp_hop_ms, batch_size, input_sample_rate)
    return HearModel(inference.load_model(model_file_path, device="cpu"), timestamp_hop_ms, batch_size, input_sample_rate)


def _check_audio(audio: Tensor, model: HearModel) -> None:
    if not isinstance(audio, Tensor) or audio.dim() != 2:
        raise ValueError(f"audio must be a (n_sounds, n_samples) tensor at {model.sample_rate} Hz, got {getattr(audio, 'shape', type(audio))}")
    if audio.shape[1] == 0:
        raise ValueError("audio holds no samples")
    if not torch.isfinite(audio).all():
        raise ValueError("audio holds non-finite samples (NaN or infinity)")


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """(n_sounds, n_samples) at ``model.sample_rate`` -> (n_sounds, scene_embedding_size)."""
    _check_audio(audio, model)
    if audio.shape[0] == 0:
        return torch.zeros(0, model.scene_embedding_size, device=audio.device)
    vectors = inference.embed(model.embedder, audio, model.sample_rate, model.batch_size)
    return vectors.to(audio.device)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_timestamps, timestamp_embedding_size)
    and their times (n_sounds, n_timestamps) in milliseconds: 0, hop, ... before the end."""
    _check_audio(audio, model)
    audio = inference.resample(audio.float(), model.sample_rate, model.embedder.sample_rate)
    framing = model.embedder.framing
    hop = model.timestamp_hop
    count = -(-audio.shape[1] // hop)
    windows = inference.frame(audio.float(), -framing.centre, hop, count, framing.window)
    embeddings = [inference.encode_examples(model.embedder, sound, model.batch_size) for sound in windows]
    if embeddings:
        stacked = torch.stack(embeddings)
    else:
        stacked = torch.zeros(0, count, model.timestamp_embedding_size)
    times = torch.arange(count, dtype=torch.float32) * (hop * 1000.0 / model.embedder.sample_rate)
    return stacked.to(audio.device), times.expand(audio.shape[0], count).contiguous().to(audio.device)
