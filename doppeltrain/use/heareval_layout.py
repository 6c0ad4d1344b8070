"""Embeddings in the on-disk layout of heareval's embedding step, so that heareval's own
prediction step (``python -m heareval.predictions.runner``) runs on them unchanged.

heareval's embedding runner imports TensorFlow and its pinned numpy; its prediction runner
needs only torch, PyTorch Lightning 1.x, pandas and scikit-learn (docs/eval.md gives the
environment). Writing its layout from ``doppeltrain eval`` leaves only the prediction step
to the old stack, and both sides then train on the very same vectors.

Per task, the folder :func:`write_task_embeddings` fills holds what
``heareval.embeddings.task_embeddings`` leaves there: ``task_metadata.json``,
``labelvocabulary.csv`` and each ``{split}.json``, copied; ``{split}.embedding-dimensions.json``
(``[clips, dim]``); ``{split}.embeddings.npy`` (raw float32 rows, as ``np.memmap`` writes
them, despite the name); ``{split}.target-labels.pkl`` (a pickled list of label lists, row
by row). Rows are in the order heareval writes them: each split's files in label-file
order, shuffled by ``random.Random(0)``, one generator running through the splits in
metadata order.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Optional, Union

import numpy as np

from doppelgen.console import InputError
from doppelgen.files import write_atomic
from doppeltrain.use.audio_files import path_text
from doppeltrain.use.hear_tasks import METADATA_FILE, VOCABULARY_FILE, HearTask


class LayoutError(InputError):
    """A folder for heareval's layout that holds something else; the message is one line."""


SCORES_FILE = "test.predicted-scores.json"  # what heareval's prediction runner writes
EMBEDDING_SHUFFLE_SEED = 0  # heareval's task_embeddings: prng.seed(0)


def write_task_embeddings(task: HearTask, embeddings: np.ndarray, out: Union[str, Path]) -> Path:
    """Write `embeddings` (one row per clip of `task`, in ``task.clips`` order) into
    `out` in heareval's layout. A folder that already holds such a task (and perhaps
    heareval's results on it) is cleared first; any other non-empty folder is refused."""
    out = Path(out)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[0] != len(task.clips):
        raise ValueError(f"{len(task.clips)} clips but {embeddings.shape[0]} embeddings")
    if out.exists():
        if not (out / METADATA_FILE).is_file() and any(out.iterdir()):
            raise LayoutError(f"{path_text(out)} is not empty and holds no heareval task: choose a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_atomic(out / METADATA_FILE, (json.dumps(task.metadata, indent=1) + "\n").encode())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["idx", "label"])
    writer.writerows(enumerate(task.labels))
    write_atomic(out / VOCABULARY_FILE, text.getvalue().encode())
    row_of = {clip.key: row for row, clip in enumerate(task.clips)}
    prng = random.Random(EMBEDDING_SHUFFLE_SEED)
    for split in task.splits:
        clips = task.clips_of([split])
        labels = {clip.name: list(clip.labels) for clip in clips}
        write_atomic(out / f"{split}.json", (json.dumps(labels, indent=1) + "\n").encode())
        prng.shuffle(clips)
        rows = embeddings[[row_of[clip.key] for clip in clips]]
        write_atomic(out / f"{split}.embedding-dimensions.json", json.dumps([len(clips), int(embeddings.shape[1])]).encode())
        write_atomic(out / f"{split}.embeddings.npy", np.ascontiguousarray(rows).tobytes())
        write_atomic(out / f"{split}.target-labels.pkl", pickle.dumps([list(clip.labels) for clip in clips], protocol=4))
    return out


def read_heareval_scores(task_folder: Union[str, Path], scores: list[str]) -> Optional[dict[str, float]]:
    """The test scores heareval's prediction runner wrote in `task_folder` (averaged over
    folds for a k-fold task), by score name; None before it has run."""
    path = Path(task_folder) / SCORES_FILE
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    if "aggregated_scores" in results:
        aggregated = results["aggregated_scores"]
        return {name: float(aggregated[f"test_{name}_mean"]) for name in scores}
    test = results["test"]
    return {name: float(test[f"test_{name}"]) for name in scores}
