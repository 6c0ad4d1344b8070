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
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from doppelgen.console import InputError, one_line
from doppelgen.files import TEMP_MARK, atomic_writer, remove_dead_temporaries, temporary_path
from doppelgen.format import shown
from doppeltrain.config import TrainConfig
from doppeltrain.model import build_model
from doppeltrain.model_limits import inference_config_problem, weights_problem

CHECKPOINT_KEYS = ("model", "optimizer", "epoch", "step", "rng", "config", "manifests")
LATEST_NAME = "latest.pt"
# Of a file that is not a zip, this much is scanned for what its pickle would import.
MAX_PICKLE_SCAN_BYTES = 64 << 20
# What zipfile raises for damaged archives besides BadZipFile: a name flagged UTF-8 that is
# not (UnicodeDecodeError, a ValueError; found by the fuzzer), an encrypted member
# (RuntimeError), an unknown compression method (NotImplementedError), a short read.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError)


class CheckpointError(InputError):
    """A checkpoint is missing, unreadable, unsafe or not ours; the message is one line."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk): the run failed, its input was fine. One
    line; the checkpoint there before is kept."""


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def save_checkpoint(state: dict[str, Any], path: Union[str, Path]) -> Path:
    """Write ``state`` to ``path`` via a temporary file and ``os.replace``.

    A process killed mid-write leaves the previous file at ``path`` intact, never a
    truncated one; the temporaries of writers killed earlier in that folder are removed
    first. The written file is read back with ``weights_only=True`` before it replaces
    ``path``: a state holding anything but tensors and plain data is refused here
    (CheckpointError), not at the resume that would need it. A write that fails (a full
    disk) is CheckpointWriteError in one line saying why.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(path.parent)
        with atomic_writer(path) as handle:
            writer = _WriteRecorder(handle)
            try:
                torch.save(state, writer)
            except RuntimeError:
                # torch's zip writer reports a failed write as "unexpected pos ..."; the
                # OSError underneath says what happened (e.g. no space left on device).
                if writer.error is not None:
                    raise writer.error from None
                raise
            handle.flush()
            try:
                _safe_load(temporary_path(path), "cpu", mmap=True)
            except CheckpointError as error:
                raise CheckpointError(f"refusing to write {path}: {error}") from None
    except OSError as error:
        raise CheckpointWriteError(f"writing {path} failed: {error.strerror or one_line(error)}; "
                                   "the checkpoint there before is kept") from None
    return path


class _WriteRecorder:
    """A binary handle that remembers the OSError of a failed write."""

    def __init__(self, handle):
        self.handle = handle
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _safe_load(path: Path, map_location: Union[str, torch.device], mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` of an archive :func:`_archive_problem` accepts;
    CheckpointError in one line if it fails."""
    problem = _archive_problem(path)
    if problem:
        raise CheckpointError(problem)
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


def _archive_problem(path: Path) -> str:
    """Why `path` is not a zip of uncompressed records as ``torch.save`` writes ('' if it is).

    Anything else could make ``torch.load`` allocate more than the file holds: a deflated
    record inflates about a thousandfold, and the legacy (pre-zip) format allocates each
    storage at the size its pickle claims before reading it. A stored record's size is
    bounded by the file's, and torch checks each tensor against its record.
    """
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except ZIP_ERRORS:
        imported = _first_import(path)
        if imported:
            return (f"it holds Python objects ({shown(imported)}) that only arbitrary unpickling could load, "
                    "which can run code from the file; only tensors and plain data are read")
        return "unreadable checkpoint (not a zip archive as torch.save writes; the legacy format is not read)"
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED or member.compress_size != member.file_size or member.file_size > size:
            return f"unreadable checkpoint (record {shown(member.filename)} is compressed or larger than the file; torch.save stores records uncompressed)"
    return ""


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
            # A file object's read(n) allocates n bytes before reading: garbage read as a
            # pickle opcode can ask for terabytes. BytesIO gives what is there.
            return _scan_pickle(io.BytesIO(raw.read(min(os.fstat(raw.fileno()).st_size, MAX_PICKLE_SCAN_BYTES))))
    except ZIP_ERRORS:
        return ""


def _scan_pickle(stream) -> str:
    strings: list[str] = []
    allowed = _weights_only_globals()
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            name = ""
            if opcode.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL":  # module and name were pushed as strings
                name = ".".join(strings[-2:]) if len(strings) >= 2 else "a global"
            # torch's own rebuild functions and storages are what every checkpoint imports:
            # naming one would blame a file that failed for another reason (an opcode the
            # restricted unpickler lacks, such as LONG4 for an integer of 256 bytes).
            if name and name not in allowed:
                return name
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:
        return ""
    return ""


def _weights_only_globals() -> frozenset:
    """The names torch.load(weights_only=True) may import (its private list; empty if gone)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except Exception:
        return frozenset()


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``;
    CheckpointError (one line) if it is missing, damaged, not ours, or needs arbitrary
    unpickling (refused before anything in the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(_missing_message(path))
    try:
        # Memory-mapped: the tensors are read when used, after the config and their
        # shapes have been checked, not while the file is parsed.
        state = _safe_load(path, map_location, mmap=True)
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
        raise CheckpointError(f"{source}: bad config ({one_line(error)[:200]})") from None
    problem = inference_config_problem(cfg)
    if problem:
        raise CheckpointError(f"{source}: bad config ({problem})")
    return cfg


def network_with_weights(config: TrainConfig, weights: Any, source: Union[str, Path]) -> nn.Module:
    """``build_model(config.model)`` holding `weights` (a state_dict); CheckpointError in
    one line when they do not fit the configured network, found by name and shape before
    the network is allocated (:mod:`doppeltrain.model_limits`)."""
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{source}: its weights are not a mapping of tensors")
    problem = weights_problem(config.model, {name: tuple(tensor.shape) for name, tensor in weights.items()})
    if problem:
        raise CheckpointError(f"{source}: its weights do not fit the configured model ({problem})")
    for name, tensor in weights.items():
        # A NaN weight makes every embedding NaN; a complex one would be cast silently.
        if tensor.is_complex() or (tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())):
            raise CheckpointError(f"{source}: its tensor {shown(name)} holds non-finite or complex values")
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
