"""The process's RNG states as checkpoint data: captured at a checkpoint, restored on
resume, so a resumed run draws what an uninterrupted one would have."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from doppelgen.console import one_line
from doppeltrain.checkpoint import CheckpointError


def rng_state() -> dict[str, Any]:
    """The process's RNG states as tensors and plain data, so a checkpoint holding them
    loads with ``weights_only=True``; :func:`set_rng_state` restores them exactly.

    - ``python``: ``{"version": int, "state": int64 tensor (625,), "gauss_next": float or None}``,
      from ``random.getstate()`` (Mersenne Twister words and position)
    - ``numpy``: ``{"algorithm": "MT19937", "key": int64 tensor (624,), "pos": int,
      "has_gauss": int, "cached_gaussian": float}``, from ``np.random.get_state()``
    - ``torch``: ``torch.get_rng_state()`` (uint8 tensor)
    - ``cuda``: ``torch.cuda.get_rng_state_all()`` (list of uint8 tensors), when CUDA is available
    """
    version, words, gauss_next = random.getstate()
    algorithm, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "algorithm": str(algorithm), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded; CheckpointError if it is malformed. CUDA
    states are restored when the process sees as many devices as the saver did."""
    try:
        python, numpy_state = state["python"], state["numpy"]
        words = tuple(int(word) for word in python["state"].tolist())
        gauss_next = python["gauss_next"]
        python_state = (int(python["version"]), words, None if gauss_next is None else float(gauss_next))
        key = numpy_state["key"]
        if not isinstance(key, torch.Tensor) or key.shape != (624,) or key.min() < 0 or key.max() >= 2**32:
            raise ValueError("numpy key must be 624 unsigned 32-bit words")
        numpy_tuple = (str(numpy_state["algorithm"]), key.numpy().astype(np.uint32), int(numpy_state["pos"]),
                       int(numpy_state["has_gauss"]), float(numpy_state["cached_gaussian"]))
        torch_state = state["torch"]
        if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != torch.uint8:
            raise ValueError("torch state must be a uint8 tensor")
        random.setstate(python_state)
        np.random.set_state(numpy_tuple)
        torch.set_rng_state(torch_state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"the checkpoint's RNG states are malformed ({one_line(error)})") from None
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
