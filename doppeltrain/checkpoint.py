"""Checkpoints: written atomically, read back for resuming or for inference.

A checkpoint is one ``torch.save`` dict with these keys:

- ``model``: state_dict of the bare network (never the DDP wrapper), loadable into
  ``build_model(config.model)``
- ``optimizer``: its state_dict (the learning rate is a function of ``step``)
- ``epoch``: epochs completed; ``step``: optimizer steps taken
- ``rng``: the saving process's RNG states (python, numpy, torch CPU, CUDA)
- ``config``: ``TrainConfig.to_dict()``
- ``manifests``: ``{dataset: sha256 of its manifest.json}``, so a resume can refuse
  data that changed under it

and, from ``fit``, ``world_size`` (processes that trained it; optional when loading).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import torch
from torch import nn

from doppelgen.files import atomic_writer, file_sha256
from doppelgen.format import MANIFEST_NAME, dump_json

from .config import TrainConfig
from .model import build_model

CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "step", "rng", "config", "manifests")
LATEST_NAME = "latest.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not ours; the message is one line."""


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def save_checkpoint(state: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``state`` to ``path`` via a temporary file and ``os.replace``.

    A process killed mid-write leaves the previous file at ``path`` intact, never a
    truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as handle:
        torch.save(state, handle)
    return path


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    try:
        # Our checkpoints hold RNG states (numpy arrays, tuples), not only tensors.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch.load raises many types for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path}: not a doppeltrain checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    return state


def load_model(checkpoint_path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained network (eval mode, on ``device``) and the config it was trained with.

    The network maps log-mel ``(N, 1, 96, 64)`` to unnormalized embeddings; L2-normalize
    them as training did.
    """
    state = load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config.model)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config


# --- what a checkpoint records -------------------------------------------------------


def manifest_digests(datasets: Iterable[tuple[str, dict]]) -> dict[str, str]:
    """``{location: sha256}`` of each dataset's manifest, from ``(location, manifest)`` pairs.

    A local folder's digest is that of its ``manifest.json`` bytes (what ``sha256sum``
    prints); a URL dataset, whose file is not at hand, gets the digest of the manifest's
    canonical JSON (``doppelgen.format.dump_json``).
    """
    digests = {}
    for location, manifest in datasets:
        path = Path(location) / MANIFEST_NAME
        if "://" not in str(location) and path.is_file():
            digests[str(location)] = file_sha256(path)[0]
        else:
            digests[str(location)] = hashlib.sha256(dump_json(manifest)).hexdigest()
    return digests


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
