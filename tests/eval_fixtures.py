"""Tiny HEAR-layout tasks for the tests of ``doppeltrain eval``, made from short synthetic
signals (no network, no soundfonts, no speech) with the same TaskWriter the converters use.

Classes are easy on purpose: a trained embedding is not needed to separate them, so a test
of the protocol can demand a score well above chance from any feature set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from doppeltrain.use.hear_tasks import TaskWriter

SR = 48000  # HEAR's rate: every test task is resampled to the model's 16 kHz


def _tone(rng, n, sr, low, high):
    t = np.arange(n) / sr
    return 0.4 * np.sin(2 * np.pi * rng.uniform(low, high) * t + rng.uniform(0, 2 * np.pi))


def _noise(rng, n, sr):
    return 0.3 * rng.standard_normal(n) * np.exp(-np.linspace(0, rng.uniform(2, 6), n))


def _clicks(rng, n, sr):
    audio = np.zeros(n)
    period = int(sr / rng.uniform(6, 12))
    audio[rng.integers(0, period)::period] = 0.8
    return audio


SOUNDS = {
    "low": lambda rng, n, sr: _tone(rng, n, sr, 150, 300),
    "high": lambda rng, n, sr: _tone(rng, n, sr, 2500, 4000),
    "noise": _noise,
    "clicks": _clicks,
}


def write_multiclass_task(out: Path, per_class_per_fold: int = 3, folds: int = 3, classes=("low", "high", "noise"),
                          sr: int = SR, seed: int = 0, seconds: float = 0.6) -> Path:
    """A k-fold multiclass task (presplit_kfold) of synthetic clips of varied length."""
    rng = np.random.default_rng(seed)
    splits = [f"fold{i:02d}" for i in range(folds)]
    writer = TaskWriter(out, "tiny_multiclass", "v1", "multiclass", "presplit_kfold", splits,
                        ["top1_acc", "mAP", "d_prime", "aucroc"], sr)
    for split in splits:
        for label in classes:
            for index in range(per_class_per_fold):
                n = int(sr * seconds * rng.uniform(0.7, 1.3))
                writer.add(split, f"{label}-{split}-{index}.wav", [label], SOUNDS[label](rng, n, sr))
    return writer.close()


def write_multilabel_task(out: Path, clips_per_split: int = 10, sr: int = 44100, seed: int = 1, seconds: float = 0.6) -> Path:
    """A train/valid/test multilabel task: each clip mixes one to three of the sounds, or none."""
    rng = np.random.default_rng(seed)
    names = list(SOUNDS)
    writer = TaskWriter(out, "tiny_multilabel", "v1", "multilabel", "trainvaltest", ["train", "valid", "test"],
                        ["mAP", "d_prime", "aucroc", "top1_acc"], sr, sample_duration=seconds)
    n = int(sr * seconds)
    for split in ("train", "valid", "test"):
        for index in range(clips_per_split):
            # Every label present and absent in every split, so AUC is defined everywhere.
            count = 1 + index % 3
            chosen = sorted(rng.choice(names, size=count, replace=False).tolist()) if index % 5 else []
            if index < len(names):
                chosen = sorted(set(chosen) | {names[index]})
            audio = sum((SOUNDS[name](rng, n, sr) for name in chosen), np.zeros(n))
            writer.add(split, f"mix-{split}-{index}.wav", chosen, audio / max(1.0, np.max(np.abs(audio))))
    return writer.close()
