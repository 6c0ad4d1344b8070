"""Converters into HEAR 2021's task layout for the paper's two tasks that HEAR does not ship.

- ``urbansound8k``: UrbanSound8K (Salamon, Jacoby & Bello 2014) as distributed: a folder
  holding ``metadata/UrbanSound8K.csv`` (``slice_file_name``, ``fold``, ``class``, ...)
  and ``audio/fold1/`` ... ``audio/fold10/``. Its ten predefined folds become
  ``fold00`` ... ``fold09`` (``presplit_kfold``: each fold tests once, the next
  validates, eight train); the label is ``class``. Clips are padded or trimmed to 4 s,
  the dataset's longest, as hearpreprocess pads its tasks.
- ``vivae``: VIVAE (Holz, Larrouy-Maestri & Poeppel 2022) as distributed: a folder holding
  ``full_set/`` (and ``core_set/``) of ``S<speaker>_<emotion>_<intensity>_<item>.wav``.
  The label is the emotion (achievement, anger, fear, pain, pleasure, surprise); each
  speaker is a fold (``presplit_kfold``, speakers sorted: S01 -> fold00), so no speaker is
  both trained and tested on, as in ARCH's speaker-wise cross-validation. Clips keep
  their length unless a duration is asked for.

Either way the audio is written mono, 16-bit, at ``--sample-rate`` (48 kHz by default,
as HEAR distributes its tasks), and the evaluation scores are HEAR's for a multiclass
scene task (accuracy first). A converter is one function with the signature of
:data:`CONVERTERS`' values; adding a dataset is adding one.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from doppelgen.format import shown
from doppeltrain.use.audio_files import AudioReadError, load_audio, path_text
from doppeltrain.use.hear_tasks import TaskError, TaskWriter

MULTICLASS_SCORES = ["top1_acc", "mAP", "d_prime", "aucroc"]
CONVERTER_VERSION = "v1"  # the task's version: the conversion's, the datasets have none
URBANSOUND8K_DURATION = 4.0  # seconds: the longest clip; HEAR pads a task's clips to one length
VIVAE_SUBSETS = ("full", "core")
VIVAE_NAME = re.compile(r"^(S\d+)_([A-Za-z]+)_([A-Za-z]+)_(\d+)$")


@dataclass(frozen=True)
class ConvertOptions:
    sample_rate: int = 48000  # of the written audio: HEAR's
    duration: Optional[float] = None  # seconds to pad or trim every clip to; None: the dataset's default
    subset: Optional[str] = None  # VIVAE: full (default) or core
    overwrite: bool = False  # replace a finished task in OUT
    progress: bool = True


def _check(options: ConvertOptions) -> None:
    if options.sample_rate <= 0:
        raise TaskError(f"--sample-rate must be positive, got {options.sample_rate}")
    if options.duration is not None and options.duration <= 0:
        raise TaskError(f"--duration must be positive, got {options.duration}")


def _write_clip(writer: TaskWriter, split: str, source: Path, label: str, options: ConvertOptions) -> None:
    try:
        audio = load_audio(source, options.sample_rate)
    except AudioReadError as error:
        raise TaskError(str(error)) from None
    writer.add(split, source.with_suffix(".wav").name, [label], audio.numpy())


# --- UrbanSound8K ----------------------------------------------------------------------


def convert_urbansound8k(source: Path, out: Path, options: ConvertOptions = ConvertOptions()) -> Path:
    """UrbanSound8K in `source` -> a HEAR task in `out` (see the module's docstring)."""
    _check(options)
    if options.subset is not None:
        raise TaskError("--subset is VIVAE's option; UrbanSound8K has none")
    source = Path(source)
    listing = source / "metadata" / "UrbanSound8K.csv"
    if not listing.is_file():
        raise TaskError(f"{path_text(source)}: not an UrbanSound8K folder (no metadata/UrbanSound8K.csv)")
    try:
        rows = list(csv.DictReader(io.StringIO(listing.read_text(encoding="utf-8-sig"), newline="")))
    except (UnicodeDecodeError, csv.Error, OSError) as error:
        raise TaskError(f"{path_text(listing)}: not a readable CSV ({error})") from None
    needed = {"slice_file_name", "fold", "class"}
    if not rows or not needed <= set(rows[0]):
        raise TaskError(f"{path_text(listing)}: expected the columns {', '.join(sorted(needed))}")
    clips = []
    for number, row in enumerate(rows, 2):
        fold = row["fold"].strip()
        if not fold.isdigit() or not 1 <= int(fold) <= 10:
            raise TaskError(f"{path_text(listing)}: line {number} has fold {shown(fold)}, expected 1 to 10")
        path = source / "audio" / f"fold{int(fold)}" / row["slice_file_name"].strip()
        if not path.is_file():
            raise TaskError(f"{path_text(listing)}: line {number} names {path_text(path)}, which does not exist")
        clips.append((f"fold{int(fold) - 1:02d}", path, row["class"].strip()))
    splits = sorted({split for split, _, _ in clips})
    if len(splits) < 3:
        raise TaskError(f"{path_text(listing)} uses {len(splits)} folds; k-fold evaluation needs at least 3")
    duration = options.duration if options.duration is not None else URBANSOUND8K_DURATION
    writer = TaskWriter(out, "urbansound8k", CONVERTER_VERSION, "multiclass", "presplit_kfold", splits,
                        MULTICLASS_SCORES, options.sample_rate, duration, options.overwrite,
                        {"source": "UrbanSound8K (metadata/UrbanSound8K.csv folds 1-10 -> fold00-fold09)"})
    for split, path, label in tqdm(clips, unit="clip", desc="urbansound8k", disable=not options.progress):
        _write_clip(writer, split, path, label, options)
    return writer.close()


# --- VIVAE -----------------------------------------------------------------------------


def convert_vivae(source: Path, out: Path, options: ConvertOptions = ConvertOptions()) -> Path:
    """VIVAE in `source` -> a HEAR task in `out` (see the module's docstring)."""
    _check(options)
    subset = options.subset or "full"
    if subset not in VIVAE_SUBSETS:
        raise TaskError(f"--subset must be one of {', '.join(VIVAE_SUBSETS)}, got {shown(subset)}")
    folder = Path(source) / f"{subset}_set"
    if not folder.is_dir():
        raise TaskError(f"{path_text(source)}: not a VIVAE folder (no {subset}_set/)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav")
    if not files:
        raise TaskError(f"{path_text(folder)} holds no .wav files")
    clips = []
    for path in files:
        match = VIVAE_NAME.match(path.stem)
        if match is None:
            raise TaskError(f"{path_text(path)}: not a VIVAE file name (S<speaker>_<emotion>_<intensity>_<item>.wav)")
        clips.append((match.group(1), path, match.group(2).lower()))
    speakers = sorted({speaker for speaker, _, _ in clips})
    if len(speakers) < 3:
        raise TaskError(f"{path_text(folder)} holds {len(speakers)} speakers; speaker-wise folds need at least 3")
    fold_of = {speaker: f"fold{index:02d}" for index, speaker in enumerate(speakers)}
    writer = TaskWriter(out, f"vivae_{subset}", CONVERTER_VERSION, "multiclass", "presplit_kfold", list(fold_of.values()),
                        MULTICLASS_SCORES, options.sample_rate, options.duration, options.overwrite,
                        {"source": f"VIVAE {subset}_set, one fold per speaker", "folds": {f: s for s, f in fold_of.items()}})
    for speaker, path, label in tqdm(clips, unit="clip", desc=f"vivae {subset}", disable=not options.progress):
        _write_clip(writer, fold_of[speaker], path, label, options)
    return writer.close()


Converter = Callable[[Path, Path, ConvertOptions], Path]
CONVERTERS: dict[str, Converter] = {"urbansound8k": convert_urbansound8k, "vivae": convert_vivae}


def convert(dataset: str, source: Path, out: Path, options: ConvertOptions = ConvertOptions()) -> Path:
    """What ``doppeltrain eval-convert DATASET SOURCE OUT`` does."""
    if dataset not in CONVERTERS:
        raise TaskError(f"unknown dataset {shown(dataset)}: expected one of {', '.join(CONVERTERS)}")
    if not Path(source).is_dir():
        raise TaskError(f"no such folder: {path_text(source)}")
    return CONVERTERS[dataset](Path(source), Path(out), options)
