"""The converters of UrbanSound8K and VIVAE into HEAR's layout (``doppeltrain eval-convert``),
on tiny replicas of the datasets' own layouts made here, and the builder of ``make eval``'s
drum tasks (benchmarks/eval_tasks.py) on a tiny fake probe set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from benchmarks import eval_tasks
from doppeltrain.cli import app
from doppeltrain.use.hear_tasks import TaskError, read_task
from doppeltrain.use.task_converters import ConvertOptions, convert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

URBAN_CLASSES = ("dog_bark", "siren")
# UrbanSound8K's files come at many rates, depths and channel counts: a few of each here.
URBAN_FORMATS = [(44100, 2, "PCM_24"), (22050, 1, "PCM_16"), (8000, 1, "PCM_U8"), (96000, 1, "FLOAT"), (48000, 2, "PCM_16")]


def noise(rng, seconds, sr, channels):
    audio = 0.3 * rng.standard_normal((int(seconds * sr), channels))
    return audio[:, 0] if channels == 1 else audio


def write_urbansound8k(root: Path, folds: int = 10) -> Path:
    """UrbanSound8K's layout: metadata/UrbanSound8K.csv and audio/fold1..fold10, one clip
    per class and fold, of varied length, rate, depth and channels."""
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(1, folds + 1):
        (root / "audio" / f"fold{fold}").mkdir(parents=True)
        for class_id, name in enumerate(URBAN_CLASSES):
            sr, channels, subtype = URBAN_FORMATS[(fold + class_id) % len(URBAN_FORMATS)]
            file_name = f"{100 + fold}-{class_id}-0-{fold}.wav"
            seconds = 1.5 + fold * 0.3  # up to 4.5 s: the longer ones are trimmed to 4 s
            sf.write(root / "audio" / f"fold{fold}" / file_name, noise(rng, seconds, sr, channels), sr, subtype=subtype)
            rows.append([file_name, 100 + fold, 0.0, seconds, 1, fold, class_id, name])
    (root / "metadata").mkdir()
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        writer.writerows(rows)
    return root


def write_vivae(root: Path, speakers: int = 3) -> Path:
    """VIVAE's layout: full_set/S<speaker>_<emotion>_<intensity>_<item>.wav (and core_set/)."""
    rng = np.random.default_rng(1)
    for subset in ("full_set", "core_set"):
        (root / subset).mkdir(parents=True)
    for speaker in range(1, speakers + 1):
        for emotion in ("anger", "pleasure"):
            for intensity in ("low", "peak"):
                name = f"S{speaker:02d}_{emotion}_{intensity}_01.wav"
                audio = noise(rng, rng.uniform(0.4, 1.2), 44100, 1)
                sf.write(root / "full_set" / name, audio, 44100, subtype="PCM_16")
                if intensity == "peak":
                    sf.write(root / "core_set" / name, audio, 44100, subtype="PCM_16")
    return root


def test_urbansound8k_keeps_its_ten_folds_and_classes_at_one_rate_and_length(tmp_path):
    source = write_urbansound8k(tmp_path / "UrbanSound8K")
    folder = convert("urbansound8k", source, tmp_path / "urbansound8k", ConvertOptions(progress=False))
    task = read_task(folder, 16000)
    assert task.splits == tuple(f"fold{i:02d}" for i in range(10)) and task.split_mode == "presplit_kfold"
    assert task.labels == URBAN_CLASSES and task.audio_sample_rate == 48000 and len(task.clips) == 20
    assert {clip.name: clip.split for clip in task.clips}["101-0-0-1.wav"] == "fold00"
    assert {clip.name: clip.labels for clip in task.clips}["110-1-0-10.wav"] == ("siren",)
    for clip in task.clips:
        info = sf.info(clip.path)
        assert (info.samplerate, info.channels, info.frames) == (48000, 1, 4 * 48000)
    assert len(task.folds()) == 10 and task.folds()[9].valid == ("fold00",)


def test_vivae_labels_come_from_file_names_and_each_speaker_is_a_fold(tmp_path):
    source = write_vivae(tmp_path / "VIVAE")
    folder = convert("vivae", source, tmp_path / "vivae", ConvertOptions(sample_rate=16000, progress=False))
    task = read_task(folder, 16000)
    assert task.labels == ("anger", "pleasure") and task.splits == ("fold00", "fold01", "fold02")
    assert task.metadata["folds"] == {"fold00": "S01", "fold01": "S02", "fold02": "S03"}
    assert {(clip.split, clip.labels[0]) for clip in task.clips if clip.name.startswith("S02_")} == {("fold01", "anger"), ("fold01", "pleasure")}
    lengths = {sf.info(clip.path).frames for clip in task.clips}
    assert len(lengths) > 1 and task.audio_sample_rate == 16000  # lengths kept
    core = read_task(convert("vivae", source, tmp_path / "core", ConvertOptions(subset="core", duration=1.0, progress=False)))
    assert len(core.clips) == 6 and {sf.info(clip.path).frames for clip in core.clips} == {48000}


def test_converters_refuse_bad_sources_in_one_line(tmp_path):
    source = write_urbansound8k(tmp_path / "UrbanSound8K", folds=3)
    (source / "audio" / "fold2" / "102-1-0-2.wav").unlink()
    with pytest.raises(TaskError, match=r"line \d+ names .*102-1-0-2.wav, which does not exist"):
        convert("urbansound8k", source, tmp_path / "a", ConvertOptions(progress=False))
    with pytest.raises(TaskError, match="not an UrbanSound8K folder"):
        convert("urbansound8k", tmp_path, tmp_path / "b", ConvertOptions(progress=False))
    vivae = write_vivae(tmp_path / "VIVAE")
    (vivae / "full_set" / "S01_anger_low_01.wav").rename(vivae / "full_set" / "angry-take-3.wav")
    with pytest.raises(TaskError, match="not a VIVAE file name"):
        convert("vivae", vivae, tmp_path / "c", ConvertOptions(progress=False))
    (vivae / "full_set" / "angry-take-3.wav").write_bytes(b"RIFF nonsense")
    (vivae / "full_set" / "angry-take-3.wav").rename(vivae / "full_set" / "S01_anger_low_01.wav")
    with pytest.raises(TaskError, match="cannot read audio file .*S01_anger_low_01.wav"):
        convert("vivae", vivae, tmp_path / "d", ConvertOptions(progress=False))
    with pytest.raises(TaskError, match="unknown dataset"):
        convert("esc50", vivae, tmp_path / "e")


def test_the_convert_command_writes_a_task_and_keeps_a_finished_one(tmp_path):
    source = write_vivae(tmp_path / "VIVAE")
    runner = CliRunner()
    out = tmp_path / "vivae"
    result = runner.invoke(app, ["eval-convert", "vivae", str(source), str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_task(out).name == "vivae_full"
    again = runner.invoke(app, ["eval-convert", "vivae", str(source), str(out), "--no-progress"])
    assert again.exit_code == 2 and "--overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    replaced = runner.invoke(app, ["eval-convert", "vivae", str(source), str(out), "--no-progress", "--overwrite",
                                   "--sample-rate", "22050"])
    assert replaced.exit_code == 0 and read_task(out).audio_sample_rate == 22050 and not (out / "48000").exists()


# --- make eval's drum tasks --------------------------------------------------------------


def write_fake_probe_set(root: Path) -> Path:
    """The part of a probe set the builder reads: clips.csv and 16 kHz clips, four per
    class in each of four groups (two of them the real set's held-out groups)."""
    rng = np.random.default_rng(2)
    rows = []
    for group in ("bja-pacific", "colombo", "emillo-ludwig", "forzee"):
        for label in ("kick", "snare", "hihat"):
            (root / label).mkdir(parents=True, exist_ok=True)
            for index in range(4):
                path = f"{label}/{group}__kit__{index}.wav"
                sf.write(root / path, noise(rng, 1.0, 16000, 1), 16000, subtype="PCM_16")
                rows.append([path, label, group])
    with open(root / "clips.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)
    return root


def test_the_drum_tasks_are_kits_as_folds_and_layered_hits_at_rates_other_than_16k(tmp_path):
    probe_set = write_fake_probe_set(tmp_path / "probe-set")
    kits_folder, layers_folder = eval_tasks.build_eval_tasks(probe_set, tmp_path / "tasks", log=lambda _: None)
    kits, layers = read_task(kits_folder), read_task(layers_folder)
    assert kits.audio_sample_rate == 48000 and layers.audio_sample_rate == 44100
    assert kits.prediction_type == "multiclass" and len(kits.splits) == 4 and len(kits.clips) == 48
    assert kits.metadata["folds"]["fold03"] == "forzee"
    assert all(clip.path.name.startswith(clip.labels[0]) for clip in kits.clips)
    assert layers.prediction_type == "multilabel" and layers.primary_score == "mAP"
    assert {clip.split for clip in layers.clips if "forzee" in clip.name} == {"test"}
    assert {clip.split for clip in layers.clips if "colombo" in clip.name} == {"valid"}
    counts = {len(clip.labels) for clip in layers.clips}
    assert counts == {1, 2, 3}
    stamp = (kits_folder / "task_metadata.json").stat().st_mtime_ns
    eval_tasks.build_eval_tasks(probe_set, tmp_path / "tasks", log=lambda _: None)  # up to date: left alone
    assert (kits_folder / "task_metadata.json").stat().st_mtime_ns == stamp
    assert json.loads((layers_folder / "task_metadata.json").read_text())["recipe"]["version"] == eval_tasks.RECIPE_VERSION
