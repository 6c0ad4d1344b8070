"""Builders shared by the tests of using a trained model (embed, probe, HEAR).

Plain functions, not fixtures, so each test module decides the scope it needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from doppeltrain.checkpoint import save_checkpoint
from doppeltrain.config import ModelConfig, TrainConfig
from doppeltrain.model import build_model
from doppeltrain.rng_state import rng_state

SR = 16000
EMBEDDING_DIM = 32


def tiny_config() -> TrainConfig:
    return TrainConfig(model=ModelConfig(model="small", width=8, embedding_dim=EMBEDDING_DIM))


def write_checkpoint(path: Path, seed: int = 1) -> Path:
    """A checkpoint in the training loop's format holding a freshly initialised small network."""
    config = tiny_config()
    torch.manual_seed(seed)
    model = build_model(config.model)
    state = {
        "model": model.state_dict(), "optimizer": {}, "epoch": 0, "step": 0,
        "rng": rng_state(), "config": config.to_dict(), "manifests": {},
    }
    return save_checkpoint(state, path)


def tone(rng: np.random.Generator, seconds: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * rng.uniform(300, 3000) * t)).astype(np.float32)


def noise_burst(rng: np.random.Generator, seconds: float, sr: int = SR) -> np.ndarray:
    n = int(seconds * sr)
    envelope = np.exp(-np.linspace(0, rng.uniform(2, 6), n))
    return (0.5 * rng.standard_normal(n) * envelope).astype(np.float32)


def clicks(rng: np.random.Generator, seconds: float, sr: int = SR) -> np.ndarray:
    audio = np.zeros(int(seconds * sr), np.float32)
    period = int(sr / rng.uniform(4, 12))
    audio[rng.integers(0, period)::period] = 0.9
    return audio


CLASSES = {"clicks": clicks, "noise": noise_burst, "tone": tone}


def write_labelled_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """One folder per class of easy sounds, of varied lengths and sample rates, some stereo."""
    rng = np.random.default_rng(seed)
    for name, make in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            sr = (16000, 22050)[index % 2]
            audio = make(rng, rng.uniform(0.5, 2.0), sr)
            if index % 3 == 0:
                audio = np.stack([audio, audio], axis=1)
            sf.write(root / name / f"{name}-{index:02d}.wav", audio, sr)
    return root
