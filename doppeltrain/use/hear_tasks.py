"""Task folders in HEAR 2021's layout (what ``hearpreprocess`` writes and ``heareval`` reads):
reading one into a checked :class:`HearTask`, its folds, and writing one (:class:`TaskWriter`).

A task folder holds:

- ``task_metadata.json``: ``task_name``, ``version``, ``embedding_type`` (``scene``;
  ``event`` tasks are timestamp tasks, not evaluated here), ``prediction_type``
  (``multiclass`` or ``multilabel``), ``split_mode`` (``trainvaltest``,
  ``presplit_kfold`` or ``new_split_kfold``), ``splits`` (``train``, ``valid``,
  ``test``, or ``fold00``, ``fold01``, ...) and ``evaluation`` (score names, the first
  the one that selects models);
- ``labelvocabulary.csv``: ``idx,label``, the order of the predictor's outputs;
- ``{split}.json``: ``{file name: [label, ...]}`` for each split;
- ``{sample rate}/{split}/{file name}``: the audio, e.g. ``48000/fold00/1-100038-A-14.wav``.

HEAR distributes its tasks at 48 kHz only; any rate folder is read here, the one at the
model's rate first, else the highest, and the audio is resampled to the model's rate.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import soundfile as sf

from doppelgen.console import InputError, one_line
from doppelgen.files import write_atomic
from doppelgen.format import shown
from doppeltrain.use.audio_files import path_text

METADATA_FILE = "task_metadata.json"
VOCABULARY_FILE = "labelvocabulary.csv"
PREDICTION_TYPES = ("multiclass", "multilabel")
SPLIT_MODES = ("trainvaltest", "presplit_kfold", "new_split_kfold")
TRAIN_VALID_TEST = ("train", "valid", "test")
# A task's metadata is a few kB; a split's labels a few MB (FSD50K's train split, 4 MB).
MAX_METADATA_BYTES = 1 << 20
MAX_LABELS_BYTES = 256 << 20


class TaskError(InputError):
    """A task folder that cannot be evaluated; the message is one line naming it."""


@dataclass(frozen=True)
class TaskClip:
    """One labelled audio file of a task."""

    split: str
    name: str  # the file's name as {split}.json gives it
    path: Path
    labels: tuple[str, ...]

    @property
    def key(self) -> str:
        """The clip's identity inside its task: names are unique within a split only."""
        return f"{self.split}/{self.name}"


@dataclass(frozen=True)
class FoldSplit:
    """Which splits train, validate and test one predictor."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def name(self) -> str:
        return "|".join(self.test)  # heareval's key for a fold's test scores


@dataclass(frozen=True)
class HearTask:
    """A scene task, checked: every split's labels name an existing file and a known label."""

    folder: Path
    name: str  # task_name
    version: str
    prediction_type: str
    split_mode: str
    splits: tuple[str, ...]
    scores: tuple[str, ...]  # the metadata's "evaluation"; the first selects models
    labels: tuple[str, ...]  # the vocabulary, in output order
    clips: tuple[TaskClip, ...]  # split by split in metadata order, files in label-file order
    audio_sample_rate: int  # the rate folder the audio is read from
    metadata: dict[str, Any]  # task_metadata.json as read

    @property
    def primary_score(self) -> str:
        return self.scores[0]

    @property
    def title(self) -> str:
        """The folder's name: HEAR names it task-version-mode (esc50-v2.0.0-full)."""
        return self.folder.name

    def clips_of(self, splits: Sequence[str]) -> list[TaskClip]:
        wanted = set(splits)
        return [clip for clip in self.clips if clip.split in wanted]

    def folds(self) -> list[FoldSplit]:
        """heareval's splits (``get_splits_from_metadata``): train/valid/test as given; or,
        for k folds sorted by name, fold i tests, fold i+1 (wrapping) validates and the
        other k-2 train."""
        if self.split_mode == "trainvaltest":
            return [FoldSplit(("train",), ("valid",), ("test",))]
        ordered = sorted(self.splits)
        count = len(ordered)
        return [
            FoldSplit(
                tuple(f for f in ordered if f not in (ordered[i], ordered[(i + 1) % count])),
                (ordered[(i + 1) % count],),
                (ordered[i],),
            )
            for i in range(count)
        ]


# --- reading ---------------------------------------------------------------------------


def read_task(folder: Union[str, Path], sample_rate: Optional[int] = None, known_scores: Sequence[str] = ()) -> HearTask:
    """The scene task in `folder`, its audio read from the ``sample_rate`` folder when there
    is one, else from the highest rate folder. `known_scores`, when given, are the score
    names the caller can compute. TaskError (one line) for anything that would fail later:
    missing or malformed metadata, an event task, a label file naming no file, a label
    outside the vocabulary, a multiclass clip with other than one label."""
    folder = Path(folder)
    name = path_text(folder)
    if not folder.is_dir():
        raise TaskError(f"no such task folder: {name}")
    metadata = _read_json(folder / METADATA_FILE, MAX_METADATA_BYTES, f"{name}: not a HEAR task folder (no {METADATA_FILE})")
    if not isinstance(metadata, dict):
        raise TaskError(f"{name}/{METADATA_FILE}: not a JSON object")
    for key in ("task_name", "embedding_type", "prediction_type", "split_mode", "splits", "evaluation"):
        if key not in metadata:
            raise TaskError(f"{name}/{METADATA_FILE}: no {shown(key)}")
    if metadata["embedding_type"] != "scene":
        raise TaskError(f"{name}: a {shown(metadata['embedding_type'])} task; doppeltrain eval evaluates scene tasks only")
    if metadata["prediction_type"] not in PREDICTION_TYPES:
        raise TaskError(f"{name}: prediction_type {shown(metadata['prediction_type'])}, expected one of {', '.join(PREDICTION_TYPES)}")
    if metadata["split_mode"] not in SPLIT_MODES:
        raise TaskError(f"{name}: split_mode {shown(metadata['split_mode'])}, expected one of {', '.join(SPLIT_MODES)}")
    splits = metadata["splits"]
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) and s for s in splits) or len(set(splits)) != len(splits):
        raise TaskError(f"{name}/{METADATA_FILE}: \"splits\" must be a list of distinct names")
    if metadata["split_mode"] == "trainvaltest" and sorted(splits) != sorted(TRAIN_VALID_TEST):
        raise TaskError(f"{name}: a trainvaltest task has the splits train, valid and test, not {', '.join(splits)}")
    if metadata["split_mode"] != "trainvaltest" and len(splits) < 3:
        raise TaskError(f"{name}: {len(splits)} folds; k-fold evaluation needs at least 3 (one tests, one validates, the rest train)")
    scores = metadata["evaluation"]
    if not isinstance(scores, list) or not scores or not all(isinstance(s, str) for s in scores):
        raise TaskError(f"{name}/{METADATA_FILE}: \"evaluation\" must be a list of score names")
    unknown = [s for s in scores if known_scores and s not in known_scores]
    if unknown:
        raise TaskError(f"{name}: unknown score {shown(unknown[0])} (known: {', '.join(known_scores)})")

    rate = _audio_rate(folder, sample_rate)
    split_labels = {split: _read_split_labels(folder, split) for split in splits}
    vocabulary = _read_vocabulary(folder, split_labels)
    known = set(vocabulary)
    clips = []
    for split in splits:
        audio_dir = folder / str(rate) / split
        for file_name, labels in split_labels[split].items():
            for label in labels:
                if label not in known:
                    raise TaskError(f"{name}/{split}.json: {path_text(file_name)} has the label {shown(label)}, which {VOCABULARY_FILE} lacks")
            if metadata["prediction_type"] == "multiclass" and len(labels) != 1:
                raise TaskError(f"{name}/{split}.json: {path_text(file_name)} has {len(labels)} labels; a multiclass clip has exactly one")
            path = audio_dir / file_name
            if Path(file_name).name != file_name or not _is_file(path):
                raise TaskError(f"{name}/{split}.json names {path_text(file_name)}, which is not in {path_text(audio_dir)}")
            clips.append(TaskClip(split, file_name, path, labels))
    return HearTask(
        folder=folder, name=str(metadata["task_name"]), version=str(metadata.get("version", "")),
        prediction_type=metadata["prediction_type"], split_mode=metadata["split_mode"], splits=tuple(splits),
        scores=tuple(scores), labels=tuple(vocabulary), clips=tuple(clips), audio_sample_rate=rate,
        metadata=metadata,
    )


def _read_json(path: Path, limit: int, missing: str) -> Any:
    if not path.is_file():
        raise TaskError(missing)
    try:
        if path.stat().st_size > limit:
            raise TaskError(f"{path_text(path)}: larger than {limit >> 20} MiB")
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise TaskError(f"{path_text(path)}: unreadable JSON ({one_line(error)[:200]})") from None
    except OSError as error:
        raise TaskError(f"cannot read {path_text(path)}: {one_line(error, path)}") from None


def _audio_rate(folder: Path, preferred: Optional[int]) -> int:
    rates = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)
    if not rates:
        raise TaskError(f"{path_text(folder)}: no audio folder (one named by its sample rate, e.g. 48000/)")
    return preferred if preferred in rates else rates[-1]


def _read_split_labels(folder: Path, split: str) -> dict[str, tuple[str, ...]]:
    path = folder / f"{split}.json"
    data = _read_json(path, MAX_LABELS_BYTES, f"{path_text(folder)}: no {split}.json (the labels of split {shown(split)})")
    if not isinstance(data, dict) or not data:
        raise TaskError(f"{path_text(path)}: expected a non-empty object {{file name: [labels]}}")
    labels = {}
    for file_name, values in data.items():
        if not isinstance(values, list) or not all(isinstance(v, (str, int, float)) for v in values):
            raise TaskError(f"{path_text(path)}: the labels of {path_text(file_name)} are not a list of labels")
        # heareval compares labels as strings (pitches are numbers in NSynth's files).
        labels[file_name] = tuple(str(v) for v in values)
    return labels


def _read_vocabulary(folder: Path, split_labels: dict[str, dict[str, tuple[str, ...]]]) -> list[str]:
    """labelvocabulary.csv's labels by idx; without the file, the sorted labels, as
    hearpreprocess numbers them."""
    path = folder / VOCABULARY_FILE
    if not path.is_file():
        return sorted({label for labels in split_labels.values() for values in labels.values() for label in values})
    try:
        rows = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        raise TaskError(f"{path_text(path)}: not a readable CSV ({one_line(error)})") from None
    if not rows or [cell.strip() for cell in rows[0][:2]] != ["idx", "label"]:
        raise TaskError(f"{path_text(path)}: expected the header idx,label")
    by_index = {}
    for number, row in enumerate(rows[1:], 2):
        if not row:
            continue
        try:
            index = int(row[0])
        except (ValueError, IndexError):
            raise TaskError(f"{path_text(path)}: line {number} is not idx,label") from None
        if len(row) < 2 or index in by_index:
            raise TaskError(f"{path_text(path)}: line {number} is not idx,label with a new idx")
        by_index[index] = row[1]
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise TaskError(f"{path_text(path)}: idx must run 0, 1, ... without gaps")
    return [by_index[i] for i in range(len(by_index))]


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


# --- writing ---------------------------------------------------------------------------

WRITING_MARKER = ".hear-task-writing"  # present while a TaskWriter fills the folder


class TaskWriter:
    """Writes a scene task in HEAR's layout, clip by clip: mono 16-bit PCM WAV at
    `sample_rate`, trimmed or zero-padded at the end to `sample_duration` seconds when
    given (as hearpreprocess does). The label files, the vocabulary and, last,
    ``task_metadata.json`` are written by :meth:`close`: a folder without it is unfinished.

    `out` must be absent, empty, or an unfinished task of a TaskWriter (restarted from
    scratch); a finished task is replaced only with `overwrite`.
    """

    def __init__(
        self,
        out: Union[str, Path],
        task_name: str,
        version: str,
        prediction_type: str,
        split_mode: str,
        splits: Sequence[str],
        evaluation: Sequence[str],
        sample_rate: int,
        sample_duration: Optional[float] = None,
        overwrite: bool = False,
        extra_metadata: Optional[dict[str, Any]] = None,
    ):
        if prediction_type not in PREDICTION_TYPES or split_mode not in SPLIT_MODES:
            raise TaskError(f"unknown prediction type {shown(prediction_type)} or split mode {shown(split_mode)}")
        if sample_rate <= 0 or (sample_duration is not None and sample_duration <= 0):
            raise TaskError("the sample rate and the duration must be positive")
        self.out = Path(out)
        self.sample_rate = int(sample_rate)
        self.sample_duration = sample_duration
        self.splits = list(splits)
        self.metadata = {
            "task_name": task_name, "version": version, "embedding_type": "scene",
            "prediction_type": prediction_type, "split_mode": split_mode, "splits": self.splits,
            "sample_duration": sample_duration, "evaluation": list(evaluation),
            **({"nfolds": len(self.splits)} if split_mode != "trainvaltest" else {}),
            **(extra_metadata or {}),
        }
        self.labels: dict[str, dict[str, list[str]]] = {split: {} for split in self.splits}
        self._prepare(overwrite)

    def _prepare(self, overwrite: bool) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise TaskError(f"{path_text(out)} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()):
            finished = (out / METADATA_FILE).is_file()
            if not (out / WRITING_MARKER).exists() and not (finished and overwrite):
                reason = "holds a finished task: pass --overwrite to replace it" if finished else "is not empty and holds no task"
                raise TaskError(f"{path_text(out)} {reason}")
            for child in out.iterdir():
                if child.name.isdigit() and child.is_dir():
                    shutil.rmtree(child)
                elif child.name == METADATA_FILE or child.name == VOCABULARY_FILE or child.suffix == ".json":
                    child.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / WRITING_MARKER).touch()

    def add(self, split: str, name: str, labels: Sequence[str], audio: np.ndarray) -> Path:
        """Write one clip (mono float audio at the task's rate) and record its labels."""
        if split not in self.labels:
            raise TaskError(f"unknown split {shown(split)}")
        if Path(name).name != name or not name.endswith(".wav"):
            raise TaskError(f"a clip's name must be a plain .wav file name, got {shown(name)}")
        if name in self.labels[split]:
            raise TaskError(f"two clips named {name} in split {split}")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if self.sample_duration is not None:
            length = int(round(self.sample_duration * self.sample_rate))
            audio = np.pad(audio[:length], (0, max(0, length - len(audio))))
        folder = self.out / str(self.sample_rate) / split
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        sf.write(path, np.clip(audio, -1.0, 1.0), self.sample_rate, subtype="PCM_16")
        self.labels[split][name] = [str(label) for label in labels]
        return path

    def close(self) -> Path:
        """Write the label files, the vocabulary and the metadata; returns the folder."""
        empty = [split for split, clips in self.labels.items() if not clips]
        if empty:
            raise TaskError(f"split {shown(empty[0])} of {path_text(self.out)} holds no clip")
        for split, clips in self.labels.items():
            write_atomic(self.out / f"{split}.json", (json.dumps(clips, indent=1) + "\n").encode())
        vocabulary = sorted({label for clips in self.labels.values() for labels in clips.values() for label in labels})
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["idx", "label"])
        writer.writerows(enumerate(vocabulary))
        write_atomic(self.out / VOCABULARY_FILE, text.getvalue().encode())
        write_atomic(self.out / METADATA_FILE, (json.dumps(self.metadata, indent=1) + "\n").encode())
        (self.out / WRITING_MARKER).unlink()
        return self.out
