"""``doppeltrain eval``: HEAR-layout tasks, HEAR's scores and protocol, the embedding cache,
the report, and one-line errors. Tasks are tiny synthetic ones written by the tests
(eval_fixtures), at 48 and 44.1 kHz, so every run resamples to the model's 16 kHz."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from eval_fixtures import write_multiclass_task, write_multilabel_task
from typer.testing import CliRunner
from use_fixtures import write_checkpoint

from doppelgen.console import InputError
from doppeltrain.cli import app
from doppeltrain.use import downstream, evaluation
from doppeltrain.use.downstream import PredictorConfig, ProtocolConfig, SplitData, grid_points, run_protocol, train_predictor
from doppeltrain.use.eval_cache import EmbeddingCache, feature_set_key, task_key
from doppeltrain.use.hear_scores import (
    average_precision,
    chroma_accuracy,
    d_prime,
    macro_auc,
    mean_average_precision,
    roc_auc,
    top1_accuracy,
)
from doppeltrain.use.hear_tasks import METADATA_FILE, FoldSplit, TaskError, read_task
from doppeltrain.use.inference import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A grid small enough for the suite: two points that learn easy classes in a few dozen epochs.
TINY_POINTS = [
    PredictorConfig(hidden_layers=1, lr=1e-2, initialization="xavier_uniform", hidden_dim=32, max_epochs=30, patience=3),
    PredictorConfig(hidden_layers=0, lr=3e-2, initialization="xavier_normal", hidden_dim=32, max_epochs=30, patience=3),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("eval-model") / "tiny.pt")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-tasks")
    return write_multiclass_task(root / "tiny_multiclass"), write_multilabel_task(root / "tiny_multilabel")


def copy_task(task: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(task, tmp_path / task.name))


def config(checkpoint, task_folders, tmp_path, **changes) -> evaluation.EvalConfig:
    cfg = evaluation.EvalConfig(model=str(checkpoint), tasks=tuple(str(t) for t in task_folders), out=str(tmp_path / "out"),
                                cache_dir=str(tmp_path / "cache"), device="cpu", progress=False)
    return replace(cfg, **changes)


# --- the layout ------------------------------------------------------------------------


def test_a_written_task_reads_back_with_its_labels_rate_and_files(tasks):
    multiclass, multilabel = (read_task(folder, 16000) for folder in tasks)
    assert multiclass.audio_sample_rate == 48000 and multilabel.audio_sample_rate == 44100
    assert multiclass.splits == ("fold00", "fold01", "fold02") and multiclass.split_mode == "presplit_kfold"
    assert multiclass.labels == ("high", "low", "noise") and len(multiclass.clips) == 27
    assert all(clip.path.is_file() and len(clip.labels) == 1 for clip in multiclass.clips)
    assert multiclass.primary_score == "top1_acc" and multilabel.primary_score == "mAP"
    assert {len(clip.labels) for clip in multilabel.clips} >= {0, 1, 2}
    info = sf.info(multilabel.clips[0].path)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16") and info.frames == int(0.6 * 44100)


def test_folds_rotate_as_heareval_does(tasks):
    multiclass, multilabel = (read_task(folder, 16000) for folder in tasks)
    assert multiclass.folds() == [
        FoldSplit(("fold02",), ("fold01",), ("fold00",)),
        FoldSplit(("fold00",), ("fold02",), ("fold01",)),
        FoldSplit(("fold01",), ("fold00",), ("fold02",)),
    ]
    assert multilabel.folds() == [FoldSplit(("train",), ("valid",), ("test",))]


def test_the_models_rate_folder_is_read_when_there_is_one(tasks, tmp_path):
    folder = copy_task(tasks[0], tmp_path)
    shutil.copytree(folder / "48000", folder / "16000")
    assert read_task(folder, 16000).audio_sample_rate == 16000
    assert read_task(folder, 22050).audio_sample_rate == 48000  # none at 22.05 kHz: the highest


def _break_metadata(folder: Path, **changes) -> None:
    metadata = json.loads((folder / METADATA_FILE).read_text())
    metadata.update(changes)
    (folder / METADATA_FILE).write_text(json.dumps(metadata))


BROKEN_TASKS = {
    "no metadata": (lambda f: (f / METADATA_FILE).unlink(), "not a HEAR task folder"),
    "labels naming no file": (lambda f: (f / "48000" / "fold01" / "low-fold01-0.wav").unlink(), "names low-fold01-0.wav"),
    "a label outside the vocabulary": (
        lambda f: (f / "fold00.json").write_text(json.dumps({"low-fold00-0.wav": ["bass"]})), "'bass'"),
    "two labels on a multiclass clip": (
        lambda f: (f / "fold00.json").write_text(json.dumps({"low-fold00-0.wav": ["low", "high"]})), "exactly one"),
    "an event task": (lambda f: _break_metadata(f, embedding_type="event"), "scene tasks only"),
    "an unknown score": (lambda f: _break_metadata(f, evaluation=["event_onset_200ms_fms"]), "unknown score"),
    "no split labels": (lambda f: (f / "fold02.json").unlink(), "no fold02.json"),
    "no audio folder": (lambda f: shutil.rmtree(f / "48000"), "no audio folder"),
    "two folds": (lambda f: _break_metadata(f, splits=["fold00", "fold01"]), "at least 3"),
}


@pytest.mark.parametrize("case", BROKEN_TASKS)
def test_a_broken_task_folder_is_refused_in_one_line(tasks, tmp_path, case):
    folder = copy_task(tasks[0], tmp_path)
    damage, fragment = BROKEN_TASKS[case]
    damage(folder)
    with pytest.raises(TaskError, match=None) as caught:
        read_task(folder, 16000, known_scores=("top1_acc", "mAP", "d_prime", "aucroc"))
    message = str(caught.value)
    assert fragment in message and "\n" not in message, message
    assert isinstance(caught.value, InputError)  # what every command line reports in one line


# --- scores ----------------------------------------------------------------------------


def test_average_precision_sums_precision_over_the_recall_each_threshold_adds():
    positive = np.array([True, False, True, False])
    assert average_precision(positive, np.array([0.9, 0.8, 0.7, 0.6])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(positive, np.array([0.9, 0.1, 0.8, 0.2])) == pytest.approx(1.0)
    # A tie is one threshold: both clips count at once, precision 1/2 there.
    assert average_precision(np.array([True, False]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert average_precision(np.array([False, False]), np.array([0.3, 0.5])) == 0.0


def test_map_averages_labels_and_counts_a_label_without_positives_as_zero():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=float)
    predictions = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.6, 0.5]])
    assert mean_average_precision(predictions, targets) == pytest.approx((1 + 1 + 0) / 3)


def test_roc_auc_counts_ties_half_and_is_undefined_for_one_sided_labels():
    assert roc_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([True, False, False]), np.array([0.9, 0.9, 0.1])) == pytest.approx(0.75)
    assert math.isnan(roc_auc(np.array([True, True]), np.array([0.1, 0.2])))
    targets = np.eye(3)[[0, 1, 2, 0]]
    perfect = targets * 0.9 + 0.05
    assert macro_auc(perfect, targets) == 1.0 and math.isinf(d_prime(perfect, targets))
    half = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.7, 0.3]])
    two = np.eye(2)[[0, 1, 1, 0]]
    assert d_prime(half, two) == pytest.approx(math.sqrt(2) * 0.6744897501960817)  # AUC 0.75 for both labels
    assert math.isnan(macro_auc(np.eye(3)[[0, 1]], np.eye(3)[[0, 1]]))  # the third label never occurs


def test_accuracies_compare_the_top_output_with_the_first_target():
    targets = np.eye(24)[[0, 13, 5]]
    predictions = np.eye(24)[[0, 1, 17]]
    assert top1_accuracy(predictions, targets) == pytest.approx(1 / 3)
    assert chroma_accuracy(predictions, targets) == pytest.approx(1.0)  # 13 ~ 1 and 5 ~ 17: octave errors


# --- the predictor and the protocol ----------------------------------------------------


def test_the_grid_is_heareval_default_grid_shuffled_by_seed_42():
    every = grid_points("default", 100)
    assert len(every) == 16 and len(set(every)) == 16
    assert {p.hidden_layers for p in every} == {1, 2} and {p.lr for p in every} == {3.2e-3, 1e-3, 3.2e-4, 1e-4}
    assert all((p.hidden_dim, p.dropout, p.batch_size, p.max_epochs, p.patience, p.check_val_every_n_epoch)
               == (1024, 0.1, 1024, 500, 20, 3) for p in every)
    chosen = grid_points("default", 8)
    assert chosen == every[:8] == grid_points("default", 8, seed=42) != grid_points("default", 8, seed=1)
    assert len(grid_points("faster", 64)) == 64 and {p.max_epochs for p in grid_points("fast", 64)} == {10, 50}


def blobs(n_per_class: int, seed: int, n_labels: int = 3, dim: int = 8) -> SplitData:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_labels, dim, generator=torch.Generator().manual_seed(99)) * 3
    labels = torch.arange(n_labels).repeat_interleave(n_per_class)
    x = centres[labels] + torch.randn(len(labels), dim, generator=generator)
    return SplitData(x, torch.nn.functional.one_hot(labels, n_labels).float())


def test_a_predictor_learns_separable_classes_and_repeats_itself_for_a_seed():
    train, valid = blobs(20, 0), blobs(10, 1)
    fit = train_predictor(train, valid, TINY_POINTS[0], False, "top1_acc", seed=5)
    again = train_predictor(train, valid, TINY_POINTS[0], False, "top1_acc", seed=5)
    other = train_predictor(train, valid, TINY_POINTS[0], False, "top1_acc", seed=6)
    assert fit.validation_score > 0.9
    assert all(torch.equal(a, b) for a, b in zip(fit.model.state_dict().values(), again.model.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(fit.model.state_dict().values(), other.model.state_dict().values()))


def test_early_stopping_keeps_the_first_best_check_and_waits_patience_checks():
    # No hidden layer and no learning: every check scores the same, so the first is kept
    # and training stops after `patience` more checks.
    frozen = PredictorConfig(hidden_layers=0, lr=0.0, initialization="xavier_uniform", max_epochs=100, patience=4)
    fit = train_predictor(blobs(5, 0), blobs(5, 1), frozen, False, "top1_acc", seed=0)
    assert fit.epoch == 2 and fit.epochs_run == 3 * (1 + 4)


def test_a_last_batch_of_one_clip_does_not_stop_batchnorm():
    point = PredictorConfig(hidden_layers=1, lr=1e-2, initialization="xavier_uniform", hidden_dim=16, batch_size=4,
                            max_epochs=3, patience=1)
    fit = train_predictor(blobs(3, 0), blobs(3, 1), point, False, "top1_acc", seed=0)  # 9 clips: batches 4, 4, 1
    assert fit.epochs_run == 3


def test_the_protocol_selects_on_the_first_fold_and_averages_test_scores_over_folds():
    data = {f"fold{i:02d}": blobs(6, i) for i in range(4)}

    def splits_of(names):
        return SplitData(torch.cat([data[n].x for n in names]), torch.cat([data[n].y for n in names]))

    folds = [FoldSplit(tuple(f for f in sorted(data) if f not in (a, b)), (b,), (a,))
             for a, b in zip(sorted(data), sorted(data)[1:] + sorted(data)[:1])]
    result = run_protocol(splits_of, folds, ["top1_acc", "mAP"], False, ProtocolConfig(seed=3), TINY_POINTS)
    assert [fold.test for fold in result.folds] == ["fold00", "fold01", "fold02", "fold03"]
    assert result.mean["top1_acc"] == pytest.approx(np.mean([f.scores["top1_acc"] for f in result.folds]))
    assert result.mean["top1_acc"] > 0.9
    best = max(result.grid, key=lambda point: point["validation_score"])
    assert result.best["validation_score"] == best["validation_score"] and len(result.grid) == 2
    again = run_protocol(splits_of, folds, ["top1_acc", "mAP"], False, ProtocolConfig(seed=3), TINY_POINTS)
    assert again.mean == result.mean


# --- the command -----------------------------------------------------------------------


def test_eval_scores_model_and_baselines_on_every_task_and_writes_the_report(checkpoint, tasks, tmp_path):
    report = evaluation.run_eval(config(checkpoint, tasks, tmp_path), TINY_POINTS)
    assert [t["task"] for t in report["tasks"]] == ["tiny_multiclass", "tiny_multilabel"]
    for task in report["tasks"]:
        assert set(task["results"]) == {"model", "logmel", "random"}
        for result in task["results"].values():
            assert set(result["mean"]) >= {"top1_acc", "mAP", "aucroc"}
            assert result["score"] == result["mean"][task["metric"]]
    multiclass = report["tasks"][0]
    assert multiclass["folds"] == 3 and len(multiclass["results"]["logmel"]["folds"]) == 3
    # Low and high tones and noise: log-mel statistics tell them apart (chance is 1/3).
    assert multiclass["results"]["logmel"]["score"] > 0.8
    assert report["tasks"][1]["results"]["logmel"]["score"] > 0.6  # mAP of the mixtures
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written["tasks"][0]["results"]["model"]["score"] == pytest.approx(multiclass["results"]["model"]["score"])
    table = (tmp_path / "out" / "eval.md").read_text()
    assert "| tiny_multiclass | top1_acc (%) |" in table and "untrained" in table
    assert "tiny_multilabel" in evaluation.format_table(report)


def count_embedded(monkeypatch, fail_at=None):
    """Count the files embedded (and optionally raise Ctrl-C on the `fail_at`-th)."""
    calls = []
    real = evaluation.file_examples

    def counting(path, model):
        calls.append(path)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(path, model)

    monkeypatch.setattr(evaluation, "file_examples", counting)
    return calls


def test_embeddings_are_cached_by_model_and_task_and_a_changed_file_is_embedded_again(checkpoint, tasks, tmp_path, monkeypatch):
    folder = copy_task(tasks[0], tmp_path)
    model = load_model(checkpoint, "cpu")
    task = read_task(folder, model.sample_rate)
    calls = count_embedded(monkeypatch)
    first = evaluation.task_embeddings(model, task, tmp_path / "cache")
    assert len(calls) == len(task.clips)
    again = evaluation.task_embeddings(model, task, tmp_path / "cache")
    assert len(calls) == len(task.clips) and np.array_equal(first, again)
    changed = task.clips[4].path
    audio, sr = sf.read(changed)
    sf.write(changed, np.roll(audio, 100), sr, subtype="PCM_16")
    third = evaluation.task_embeddings(model, task, tmp_path / "cache")
    assert calls[len(task.clips):] == [changed]
    assert not np.allclose(third[4], first[4]) and np.array_equal(np.delete(third, 4, 0), np.delete(first, 4, 0))
    untrained = evaluation.feature_sets(model, ["random"], seed=0)["random"]
    assert feature_set_key(untrained) != feature_set_key(model)
    assert EmbeddingCache(tmp_path / "cache", feature_set_key(untrained), task_key(task)).load(task.clips) == {}


def test_after_ctrl_c_the_same_run_embeds_only_what_was_left(checkpoint, tasks, tmp_path, monkeypatch):
    folder = copy_task(tasks[0], tmp_path)
    model = load_model(checkpoint, "cpu")
    task = read_task(folder, model.sample_rate)
    count_embedded(monkeypatch, fail_at=6)
    with pytest.raises(KeyboardInterrupt):
        evaluation.task_embeddings(model, task, tmp_path / "cache", batch_size=1)
    calls = count_embedded(monkeypatch)
    resumed = evaluation.task_embeddings(model, task, tmp_path / "cache", batch_size=1)
    assert len(calls) == len(task.clips) - 5  # the five finished before Ctrl-C were kept
    fresh = evaluation.task_embeddings(model, task, tmp_path / "fresh-cache")
    np.testing.assert_allclose(resumed, fresh, rtol=1e-5, atol=1e-6)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(downstream.ProtocolConfig, "points", lambda self: list(TINY_POINTS))
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def test_the_eval_command_prints_the_table(cli, checkpoint, tasks, tmp_path):
    result = cli("eval", checkpoint, tasks[0], "--baseline", "logmel", "--no-progress", "--device", "cpu",
                 "--cache-dir", tmp_path / "cache", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["task", "metric", "model", "log-mel", "stats"]
    assert lines[2].startswith("tiny_multiclass  top1_acc (%)")
    assert (tmp_path / "report" / "eval.json").is_file() and (tmp_path / "report" / "eval.md").is_file()


def test_bad_input_is_one_line_and_keeps_what_was_cached(cli, checkpoint, tasks, tmp_path):
    good = copy_task(tasks[1], tmp_path)
    bad = copy_task(tasks[0], tmp_path)
    (bad / "48000" / "fold01" / "noise-fold01-2.wav").write_bytes(b"not audio at all" * 64)
    args = ["--baseline", "none", "--no-progress", "--device", "cpu", "--cache-dir", tmp_path / "cache"]
    result = cli("eval", checkpoint, good, bad, *args)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "noise-fold01-2.wav" in result.output and "Traceback" not in result.output
    # The broken file is found before any work; embed the good task, then break the run again.
    assert cli("eval", checkpoint, good, *args).exit_code == 0
    cached = list((tmp_path / "cache").rglob("part-*.npz"))
    assert cached
    result = cli("eval", checkpoint, good, bad, *args)
    assert result.exit_code == 2 and list((tmp_path / "cache").rglob("part-*.npz")) == cached

    (bad / "48000" / "fold01" / "noise-fold01-2.wav").unlink()
    result = cli("eval", checkpoint, bad, *args)
    assert result.exit_code == 2 and "names noise-fold01-2.wav" in result.output and len(result.output.strip().splitlines()) == 1
    assert cli("eval", checkpoint, tmp_path / "nowhere", *args).output.count("\n") == 1

    model_folder = tmp_path / "model"
    model_folder.mkdir()
    (model_folder / "config.json").write_text("{not json")
    result = cli("eval", model_folder, good, *args)
    assert result.exit_code == 2 and "config.json" in result.output and len(result.output.strip().splitlines()) == 1
    result = cli("eval", checkpoint, good, "--grid", "huge", *args)
    assert result.exit_code == 2 and "unknown grid" in result.output
