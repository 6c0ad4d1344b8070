"""Embeddings of a task's clips, cached on disk so that ``doppeltrain eval`` computes each once.

The cache of one feature set (a model, or a baseline) on one task is a folder
``ROOT/<feature set key>/<task key>/`` of parts, ``part-NNNNNN.npz``, each written
atomically as embedding goes on (every `PART_CLIPS` clips and when the run stops, for any
reason), so an interrupted run keeps all but the clips in flight. A part holds, per clip,
its key (``split/name``), the size and modification time of its audio file, and its
vector; a clip whose file has changed since is embedded again.

- The feature set's key is the sha256 of what makes its vectors: the encoder's weights
  (or the name of a weightless one), the log-mel frontend's settings and whether vectors
  are L2-normalized.
- The task's key is the sha256 of its name, version, folder name and the rate folder the
  audio is read from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from doppelgen.files import atomic_writer
from doppeltrain.checkpoint import state_dict_sha256
from doppeltrain.use.hear_tasks import HearTask, TaskClip
from doppeltrain.use.inference import AudioEmbedder

PART_CLIPS = 256  # clips per part: a part is written at most every this many clips
KEY_CHARS = 24  # of a sha256's hex digits in a folder name: collisions are not a concern
PART_NAME = re.compile(r"^part-(\d{6})\.npz$")


def _sha256_json(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def weights_sha256(model: AudioEmbedder) -> Optional[str]:
    """sha256 of the encoder's weights; None for a weightless encoder (log-mel statistics)."""
    state = model.encoder.state_dict()
    return state_dict_sha256(state) if state else None


def feature_set_key(model: AudioEmbedder) -> str:
    """What makes `model`'s vectors, hashed: its weights, frontend and normalisation."""
    return _sha256_json({
        "encoder": weights_sha256(model) or type(model.encoder).__name__,
        "features": asdict(model.config.features),
        "normalize": bool(model.normalize),
        "embedding_dim": int(model.embedding_dim),
    })


def task_key(task: HearTask) -> str:
    return _sha256_json({"task": task.name, "version": task.version, "folder": task.folder.name,
                         "audio_sample_rate": task.audio_sample_rate})


def file_signature(path: Path) -> tuple[int, int]:
    """(size, mtime in ns) of an audio file: a changed file is embedded again."""
    info = os.stat(path)
    return int(info.st_size), int(info.st_mtime_ns)


class EmbeddingCache:
    """The cached vectors of one feature set on one task."""

    def __init__(self, root: Path, feature_key: str, task_key_: str):
        self.folder = Path(root) / feature_key[:KEY_CHARS] / task_key_[:KEY_CHARS]

    def load(self, clips: Iterable[TaskClip]) -> dict[str, np.ndarray]:
        """The cached vectors of `clips` whose files have not changed, by clip key. A part
        that cannot be read (a disk filled mid-write, a foreign file) is ignored."""
        wanted = {clip.key: file_signature(clip.path) for clip in clips}
        found: dict[str, np.ndarray] = {}
        for part in self._parts():
            try:
                with np.load(part, allow_pickle=False) as data:
                    keys, sizes, mtimes, vectors = data["keys"], data["sizes"], data["mtimes"], data["vectors"]
            except (OSError, ValueError, KeyError):
                continue
            for key, size, mtime, vector in zip(keys.tolist(), sizes.tolist(), mtimes.tolist(), vectors):
                if wanted.get(key) == (size, mtime):
                    found[key] = vector
        return found

    def _parts(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if PART_NAME.match(p.name))

    def writer(self) -> "PartWriter":
        return PartWriter(self)


class PartWriter:
    """Collects vectors and writes them as parts; use as a context manager, whose exit
    (normal, an error, or Ctrl-C) writes what is pending."""

    def __init__(self, cache: EmbeddingCache):
        self.cache = cache
        self.pending: list[tuple[str, tuple[int, int], np.ndarray]] = []
        existing = [int(PART_NAME.match(p.name).group(1)) for p in cache._parts()]
        self.next_part = max(existing, default=-1) + 1

    def add(self, clip: TaskClip, signature: tuple[int, int], vector: np.ndarray) -> None:
        self.pending.append((clip.key, signature, np.asarray(vector, dtype=np.float32)))
        if len(self.pending) >= PART_CLIPS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.cache.folder.mkdir(parents=True, exist_ok=True)
        path = self.cache.folder / f"part-{self.next_part:06d}.npz"
        with atomic_writer(path) as handle:
            np.savez(
                handle,
                keys=np.array([key for key, _, _ in self.pending]),
                sizes=np.array([s for _, (s, _), _ in self.pending], dtype=np.int64),
                mtimes=np.array([m for _, (_, m), _ in self.pending], dtype=np.int64),
                vectors=np.stack([v for _, _, v in self.pending]),
            )
        self.next_part += 1
        self.pending = []

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
