"""Turn the drum probe set (``make probe-set``) into two tiny tasks in HEAR 2021's layout,
for ``make eval``:

- ``drum_kits``: which instrument (kick, snare, hihat, tom, cymbal) a recorded hit is;
  multiclass, one fold per recording group (``presplit_kfold``: each group is tested once,
  with the next one validating), audio at 48 kHz (HEAR's rate);
- ``drum_layers``: which instruments sound in a layered hit, one to three hits of
  different instruments from one group summed; multilabel, scored by mAP, train / valid /
  test by group (``forzee`` tests, ``colombo`` validates: the probe set's held-out kits),
  audio at 44.1 kHz.

Neither rate is the model's 16 kHz, so ``doppeltrain eval`` resamples both. The probe set
holds recorded acoustic drums only (no General MIDI soundfonts, no speech).

``python -m benchmarks.eval_tasks PROBE_SET OUT`` writes ``OUT/drum_kits`` and
``OUT/drum_layers``; a task already built from the same probe set by the same recipe is
left as it is.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from doppelgen.console import EXIT_FAILURE, one_line
from doppelgen.files import file_sha256
from doppeltrain.use.hear_tasks import METADATA_FILE, TaskError, TaskWriter
from doppeltrain.use.inference import AudioReadError, load_audio

RECIPE_VERSION = 1
KITS_RATE, LAYERS_RATE = 48000, 44100
LAYERS_TEST, LAYERS_VALID = "forzee", "colombo"
LAYER_COUNTS, LAYER_WEIGHTS = (1, 2, 3), (0.2, 0.5, 0.3)  # hits per layered clip, and how often
PEAK = 0.9
SEED = 0
MULTICLASS_SCORES = ["top1_acc", "mAP", "d_prime", "aucroc"]
MULTILABEL_SCORES = ["mAP", "d_prime", "aucroc", "top1_acc"]


def read_clips(probe_set: Path) -> list[dict]:
    """clips.csv of a probe set: path, label, group per clip."""
    listing = probe_set / "clips.csv"
    if not listing.is_file():
        raise TaskError(f"{probe_set} holds no probe set (no clips.csv): build one with make probe-set")
    with open(listing, newline="") as handle:
        clips = list(csv.DictReader(handle))
    if not clips or not {"path", "label", "group"} <= set(clips[0]):
        raise TaskError(f"{listing}: expected the columns path,label,group")
    return clips


def _recipe(probe_set: Path) -> dict:
    manifest = probe_set / "manifest.json"
    source = file_sha256(manifest)[0] if manifest.is_file() else file_sha256(probe_set / "clips.csv")[0]
    return {"builder": "benchmarks/eval_tasks.py", "version": RECIPE_VERSION, "probe_set_sha256": source}


def _is_built(out: Path, recipe: dict) -> bool:
    try:
        return json.loads((out / METADATA_FILE).read_text()).get("recipe") == recipe
    except (OSError, ValueError):
        return False


def _load(probe_set: Path, clip: dict, rate: int) -> np.ndarray:
    try:
        return load_audio(probe_set / clip["path"], rate).numpy()
    except AudioReadError as error:
        raise TaskError(str(error)) from None


def build_drum_kits(probe_set: Path, out: Path, clips: list[dict], recipe: dict) -> Path:
    groups = sorted({clip["group"] for clip in clips})
    folds = {group: f"fold{index:02d}" for index, group in enumerate(groups)}
    writer = TaskWriter(out, "drum_kits", f"v{RECIPE_VERSION}", "multiclass", "presplit_kfold", list(folds.values()),
                        MULTICLASS_SCORES, KITS_RATE, overwrite=True,
                        extra_metadata={"recipe": recipe, "folds": {fold: group for group, fold in folds.items()}})
    for clip in clips:
        name = f"{clip['label']}__{Path(clip['path']).name}"
        writer.add(folds[clip["group"]], name, [clip["label"]], _load(probe_set, clip, KITS_RATE))
    return writer.close()


def build_drum_layers(probe_set: Path, out: Path, clips: list[dict], recipe: dict) -> Path:
    """One layered clip per probe clip: it, plus up to two hits of other instruments drawn
    from its own group, summed and peak-normalized."""
    rng = np.random.default_rng(SEED)
    groups = sorted({clip["group"] for clip in clips})
    missing = [g for g in (LAYERS_TEST, LAYERS_VALID) if g not in groups]
    if missing or len(groups) < 3:
        raise TaskError(f"the probe set lacks the group {missing[0] if missing else 'for training'}: drum_layers needs "
                        f"{LAYERS_TEST}, {LAYERS_VALID} and at least one more")
    split_of = {group: "test" if group == LAYERS_TEST else "valid" if group == LAYERS_VALID else "train" for group in groups}
    writer = TaskWriter(out, "drum_layers", f"v{RECIPE_VERSION}", "multilabel", "trainvaltest", ["train", "valid", "test"],
                        MULTILABEL_SCORES, LAYERS_RATE, overwrite=True,
                        extra_metadata={"recipe": recipe, "split_groups": split_of})
    for group in groups:
        members = [clip for clip in clips if clip["group"] == group]
        for index, clip in enumerate(members):
            layers = [clip]
            count = int(rng.choice(LAYER_COUNTS, p=LAYER_WEIGHTS))
            for other in rng.permutation(len(members)):
                if len(layers) == count:
                    break
                if members[other]["label"] not in {layer["label"] for layer in layers}:
                    layers.append(members[other])
            audio = sum(_load(probe_set, layer, LAYERS_RATE) for layer in layers)
            audio = audio * (PEAK / max(float(np.max(np.abs(audio))), 1e-6))
            labels = sorted({layer["label"] for layer in layers})
            writer.add(split_of[group], f"layers-{group}-{index:03d}.wav", labels, audio)
    return writer.close()


def build_eval_tasks(probe_set: Path, out: Path, log=print) -> list[Path]:
    """Both tasks under `out`; each is rebuilt only when missing or of another recipe."""
    probe_set, out = Path(probe_set), Path(out)
    clips = read_clips(probe_set)
    recipe = _recipe(probe_set)
    built = []
    for name, build in (("drum_kits", build_drum_kits), ("drum_layers", build_drum_layers)):
        folder = out / name
        if _is_built(folder, recipe):
            log(f"{folder} is up to date")
        else:
            build(probe_set, folder, clips, recipe)
            log(f"wrote {folder}")
        built.append(folder)
    return built


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe_set", type=Path, help="the drum probe set (make probe-set builds .cache/probe-set)")
    parser.add_argument("out", type=Path, help="the folder to write drum_kits/ and drum_layers/ into")
    args = parser.parse_args(argv)
    try:
        build_eval_tasks(args.probe_set, args.out)
    except TaskError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
