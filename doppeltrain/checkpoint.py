"""Checkpoints: written atomically, read back for resuming or for inference, never unpickled.

A checkpoint is one ``torch.save`` dict holding only tensors and plain data (dicts,
lists, tuples, str, numbers, bool, None), so it loads with
``torch.load(weights_only=True)``: a file that would need arbitrary unpickling, and so
could run code, is refused before anything in it runs. Keys:

- ``model``: state_dict of the bare network (never the DDP wrapper), loadable into
  ``build_model(config.model)``
- ``optimizer``: its state_dict (the learning rate is a function of ``step``)
- ``epoch``: epochs completed; ``step``: optimizer steps taken
- ``rng``: the saving process's RNG states, as tensors (:mod:`doppeltrain.rng_state`)
- ``config``: ``TrainConfig.to_dict()``
- ``manifests``: ``{dataset: sha256 of its manifest.json}``, so a resume can refuse
  data that changed under it

and optionally ``world_size`` (processes that trained it), which loading does not
require.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from doppelgen.console import InputError, one_line
from doppelgen.files import TEMP_MARK, atomic_writer, remove_dead_temporaries, temporary_path
from doppelgen.format import is_number, is_whole_number

from doppeltrain.config import FeatureConfig, ModelConfig, TrainConfig
from doppeltrain.model import MODEL_BLOCKS, build_model

CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "step", "rng", "config", "manifests")
LATEST_NAME = "latest.pt"

# What a model read from a file may ask for: generous for any real network and
# frontend, small enough that a crafted config cannot make loading allocate without bound.
MAX_WIDTH = 4096
MAX_EMBEDDING_DIM = 65536
MAX_SAMPLE_RATE = 384_000
MAX_N_FFT = 65536
MAX_EXAMPLE_FRAMES = 10_000


class CheckpointError(InputError):
    """A checkpoint is missing, unreadable, unsafe or not ours; the message is one line."""


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def save_checkpoint(state: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``state`` to ``path`` via a temporary file and ``os.replace``.

    A process killed mid-write leaves the previous file at ``path`` intact, never a
    truncated one; the temporaries of writers killed earlier in that folder are removed
    first. The written file is read back with ``weights_only=True`` before it replaces
    ``path``: a state holding anything but tensors and plain data is refused here
    (CheckpointError), not at the resume that would need it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path.parent)
    with atomic_writer(path) as handle:
        torch.save(state, handle)
        handle.flush()
        try:
            _safe_load(temporary_path(path), "cpu", mmap=True)
        except CheckpointError as error:
            raise CheckpointError(f"refusing to write {path}: {error}") from None
    return path


def _safe_load(path: Path, map_location: Union[str, torch.device], mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)``; CheckpointError in one line if it fails."""
    try:
        # torch warns (on stderr, several lines) about the pickle protocol of legacy files.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        # A class or function to import (a GLOBAL) is what could run code; the restricted
        # unpickler may stop earlier (at an opcode it lacks), so the stream is also read
        # with pickletools, which parses without running anything.
        text = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        imported = found.group(1) if found else _first_import(path)
        if imported:
            raise CheckpointError(
                f"it holds Python objects ({imported}) that only arbitrary unpickling could load, which "
                "can run code from the file; only tensors and plain data are read"
            ) from None
        detail = re.search(r"WeightsUnpickler error: (.+?)(?:\n\n|$)", text, re.DOTALL)
        reason = " ".join(detail.group(1).split()) if detail else one_line(error)
        raise CheckpointError(f"unreadable checkpoint ({reason[:200]})") from None
    except Exception as error:  # torch.load raises many types for damaged files
        raise CheckpointError(f"unreadable checkpoint ({type(error).__name__})") from None


def _first_import(path: Path) -> str:
    """The first class or function the pickle stream of `path` (a torch.save zip's
    ``data.pkl``, or the whole file) would import; '' if none or unreadable."""
    try:
        with open(path, "rb") as raw:
            if zipfile.is_zipfile(raw):
                with zipfile.ZipFile(raw) as archive:
                    names = [name for name in archive.namelist() if name.endswith("data.pkl")]
                    return _scan_pickle(archive.open(names[0])) if names else ""
            raw.seek(0)
            return _scan_pickle(raw)
    except (OSError, zipfile.BadZipFile):
        return ""


def _scan_pickle(stream) -> str:
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".")
            if opcode.name == "STACK_GLOBAL":  # module and name were pushed as strings
                return ".".join(strings[-2:]) if len(strings) >= 2 else "a global"
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - malformed opcodes: nothing importable was found before them
        return ""
    return ""


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``;
    CheckpointError (one line) if it is missing, damaged, not ours, or needs arbitrary
    unpickling (refused before anything in the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(_missing_message(path))
    try:
        state = _safe_load(path, map_location)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    if not isinstance(state, dict) or any(key not in state for key in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path}: not a doppeltrain checkpoint (expected keys {', '.join(CHECKPOINT_KEYS)})")
    return state


def _missing_message(path: Path) -> str:
    run_dir = path.parent.parent
    if path.name == LATEST_NAME and path.parent.name == "checkpoints" and run_dir.is_dir():
        # A run's folder is made before training; latest.pt only when an epoch ends.
        partial = path.parent.is_dir() and any(path.parent.glob(f".{path.name}{TEMP_MARK}*"))
        how = "its first checkpoint was being written when it was killed" if partial else "it stopped before its first checkpoint"
        return f"no such checkpoint: {path} ({how}); start the run again without --resume"
    return f"no such checkpoint: {path}"


def config_from_state(config: Any, source: Union[str, Path]) -> TrainConfig:
    """The TrainConfig of a checkpoint's (or model folder's) plain-data config, with the
    fields inference builds from checked; CheckpointError naming `source` otherwise."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: its config is not a mapping")
    try:
        cfg = TrainConfig.from_dict(config)
    except (ValueError, TypeError, RecursionError) as error:
        raise CheckpointError(f"{source}: bad config ({one_line(error)})") from None
    problem = inference_config_problem(cfg)
    if problem:
        raise CheckpointError(f"{source}: bad config ({problem})")
    return cfg


def inference_config_problem(cfg: TrainConfig) -> str:
    """What is wrong with the model and frontend fields of a config read from a file
    ('' if nothing): types, and bounds that keep loading from allocating without limit."""
    model, features = cfg.model, cfg.features
    if not isinstance(model, ModelConfig) or not isinstance(features, FeatureConfig):
        return "model and features must be mappings"
    if not isinstance(model.model, str) or model.model not in MODEL_BLOCKS:
        return f"model.model must be one of {', '.join(MODEL_BLOCKS)}"
    int_bounds = {
        "model.width": (model.width, MAX_WIDTH),
        "model.embedding_dim": (model.embedding_dim, MAX_EMBEDDING_DIM),
        "features.sample_rate": (features.sample_rate, MAX_SAMPLE_RATE),
        "features.n_fft": (features.n_fft, MAX_N_FFT),
        "features.window_length": (features.window_length, features.n_fft),
        "features.hop_length": (features.hop_length, MAX_N_FFT),
        "features.n_mels": (features.n_mels, features.n_fft // 2 + 1 if isinstance(features.n_fft, int) else 0),
        "features.example_frames": (features.example_frames, MAX_EXAMPLE_FRAMES),
    }
    for name, (value, upper) in int_bounds.items():
        if not is_whole_number(value) or not 1 <= value <= upper:
            return f"{name} must be an integer in 1..{upper}, got {value!r}"
    for name in ("f_min", "f_max", "log_offset"):
        value = getattr(features, name)
        if not is_number(value) or not math.isfinite(value):
            return f"features.{name} must be a finite number, got {value!r}"
    if not 0 <= features.f_min < features.f_max <= features.sample_rate / 2:
        return "features need 0 <= f_min < f_max <= sample_rate / 2"
    if features.log_offset <= 0:
        return "features.log_offset must be positive"
    return ""


def network_with_weights(config: TrainConfig, weights: Any, source: Union[str, Path]) -> nn.Module:
    """``build_model(config.model)`` holding `weights` (a state_dict); CheckpointError in
    one line when they do not fit the configured network."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{source}: its weights are not a mapping of tensors")
    model = build_model(config.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{source}: its weights do not fit the configured model ({one_line(error)[:300]})") from None
    return model


def load_checkpoint_network(checkpoint_path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained network (eval mode, on ``device``) and the config it was trained with.

    The network maps log-mel ``(N, 1, 96, 64)`` to unnormalized embeddings; L2-normalize
    them as training did.
    """
    state = load_checkpoint(checkpoint_path)
    config = config_from_state(state["config"], checkpoint_path)
    model = network_with_weights(config, state["model"], checkpoint_path)
    return model.to(device).eval(), config


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over a state_dict's names and tensor bytes, in key order: which weights
    these are, wherever they were loaded from (the definition of fit's weights digest)."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
