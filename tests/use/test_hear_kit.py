"""The real HEAR kit side by side: ``doppeltrain.use.hear`` declaring HEAR's 48 kHz, our embeddings
in heareval's on-disk layout, and (where heareval's environment exists: docs/eval.md)
heareval's own code: its scores, its grid, its embedding layout and its prediction runner
on the same embeddings as ``doppeltrain eval``.

heareval's environment is ``$DOPPELGANGERS_HEAREVAL_PYTHON``, else ``../heareval-env/bin/python``
beside the repository; the tests that need it are skipped without it (CI has none)."""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import textwrap

import numpy as np
import pytest
import torch
from eval_fixtures import write_multiclass_task, write_multilabel_task
from use_fixtures import write_checkpoint

from benchmarks import heareval_crosscheck
from doppeltrain.use import hear
from doppeltrain.use.downstream import grid_points
from doppeltrain.use.hear_scores import SCORES
from doppeltrain.use.hear_tasks import read_task
from doppeltrain.use.heareval_layout import read_heareval_scores, write_task_embeddings
from doppeltrain.use.inference import embed, resample

HEAREVAL_PYTHON = heareval_crosscheck.heareval_python()
# heareval's environment takes seconds to import torch and Lightning: every test that uses it is slow.
needs_heareval = pytest.mark.skipif(HEAREVAL_PYTHON is None, reason="no heareval environment (docs/eval.md)")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("kit-model") / "tiny.pt")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit-tasks")
    return write_multiclass_task(root / "tiny_multiclass"), write_multilabel_task(root / "tiny_multilabel")


def run_in_heareval(script: str, *args: str) -> str:
    done = subprocess.run([str(HEAREVAL_PYTHON), "-W", "ignore", "-c", textwrap.dedent(script), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# --- doppeltrain.use.hear at HEAR's 48 kHz ---------------------------------------------------


def test_the_model_declares_48k_and_embeds_as_if_given_its_own_rate(checkpoint):
    native = hear.load_model(str(checkpoint))
    declared = hear.load_model(str(checkpoint), input_sample_rate=48000)
    assert declared.sample_rate == 48000 and native.sample_rate == 16000
    assert declared.scene_embedding_size == native.scene_embedding_size
    audio = 0.3 * torch.randn(2, int(1.7 * 48000), generator=torch.Generator().manual_seed(0))
    at_16k = resample(audio, 48000, 16000)
    scene = hear.get_scene_embeddings(audio, declared)
    torch.testing.assert_close(scene, hear.get_scene_embeddings(at_16k, native), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scene, embed(declared.embedder, audio, 48000), rtol=1e-5, atol=1e-6)
    stamped, times = hear.get_timestamp_embeddings(audio, declared)
    native_stamped, native_times = hear.get_timestamp_embeddings(at_16k, native)
    assert stamped.shape == native_stamped.shape == (2, 34, declared.timestamp_embedding_size)  # 0..1650 ms every 50
    torch.testing.assert_close(times, native_times)
    torch.testing.assert_close(stamped, native_stamped, rtol=1e-5, atol=1e-6)


def test_the_kit_passes_the_rate_as_a_model_option(checkpoint):
    # heareval's runner: module.load_model(path, **json.loads(--model-options)).
    model = hear.load_model(str(checkpoint), **json.loads('{"input_sample_rate": 44100, "timestamp_hop_ms": 100}'))
    assert model.sample_rate == 44100 and model.timestamp_hop == 1600
    for bad in (0, -16000, 44100.5, "48k", True):
        with pytest.raises(ValueError, match="input_sample_rate"):
            hear.load_model(str(checkpoint), input_sample_rate=bad)


# --- heareval's on-disk layout -----------------------------------------------------------


def test_embeddings_are_written_in_heareval_layout_and_order(tasks, tmp_path):
    task = read_task(tasks[0], 16000)
    vectors = np.arange(len(task.clips) * 3, dtype=np.float32).reshape(-1, 3)
    folder = write_task_embeddings(task, vectors, tmp_path / "model" / task.title)
    prng = random.Random(0)  # heareval's order: each split's label-file order, shuffled by one Random(0)
    for split in task.splits:
        clips = task.clips_of([split])
        count, dim = json.loads((folder / f"{split}.embedding-dimensions.json").read_text())
        rows = np.fromfile(folder / f"{split}.embeddings.npy", dtype=np.float32).reshape(count, dim)
        labels = pickle.loads((folder / f"{split}.target-labels.pkl").read_bytes())
        order = list(range(len(clips)))
        prng.shuffle(order)
        index = {clip.key: i for i, clip in enumerate(task.clips)}
        assert (count, dim) == (len(clips), 3)
        assert rows.tolist() == vectors[[index[clips[i].key] for i in order]].tolist()
        assert labels == [list(clips[i].labels) for i in order]
    assert (folder / "labelvocabulary.csv").read_text().splitlines()[:2] == ["idx,label", "0,high"]
    assert json.loads((folder / "task_metadata.json").read_text()) == task.metadata
    (folder / "test.predicted-scores.json").write_text(json.dumps({"aggregated_scores": {"test_top1_acc_mean": 0.5}}))
    assert read_heareval_scores(folder, ["top1_acc"]) == {"top1_acc": 0.5}
    write_task_embeddings(task, vectors, folder)  # rewriting clears heareval's old results
    assert read_heareval_scores(folder, ["top1_acc"]) is None
    with pytest.raises(ValueError, match="holds no heareval task"):
        write_task_embeddings(task, vectors, tmp_path)


@needs_heareval
@pytest.mark.slow
def test_the_layout_is_byte_for_byte_what_heareval_embedding_step_writes(tasks, tmp_path):
    # heareval's memmap_embeddings on per-file embeddings, as its embedding step leaves them;
    # its module imports TensorFlow only to recognise TF models, so a stub stands in.
    task = read_task(tasks[1], 16000)
    vectors = np.random.default_rng(0).standard_normal((len(task.clips), 5)).astype(np.float32)
    ours = write_task_embeddings(task, vectors, tmp_path / "ours")
    theirs = tmp_path / "theirs"
    for split in task.splits:
        (theirs / split).mkdir(parents=True)
    for row, clip in enumerate(task.clips):
        np.save(theirs / clip.split / f"{clip.name}.embedding.npy", vectors[row])
        (theirs / clip.split / f"{clip.name}.target-labels.json").write_text(json.dumps(list(clip.labels)))
    run_in_heareval("""
        import json, random, sys, types
        from pathlib import Path
        sys.modules["tensorflow"] = types.ModuleType("tensorflow")
        from heareval.embeddings.task_embeddings import memmap_embeddings
        task, out = Path(sys.argv[1]), Path(sys.argv[2])
        metadata = json.load(open(task / "task_metadata.json"))
        prng = random.Random(); prng.seed(0)
        for split in metadata["splits"]:
            memmap_embeddings(out / split, prng, metadata, split, out, json.load(open(task / f"{split}.json")))
    """, str(tasks[1]), str(theirs))
    for split in task.splits:
        for suffix in (".embeddings.npy", ".embedding-dimensions.json"):
            assert (ours / f"{split}{suffix}").read_bytes() == (theirs / f"{split}{suffix}").read_bytes()
        assert pickle.loads((ours / f"{split}.target-labels.pkl").read_bytes()) == \
            pickle.loads((theirs / f"{split}.target-labels.pkl").read_bytes())


# --- heareval's code: scores, grid, runner ---------------------------------------------


@needs_heareval
@pytest.mark.slow
def test_our_scores_are_heareval_scores(tmp_path):
    rng = np.random.default_rng(3)
    cases = {
        "multiclass": (rng.dirichlet(np.ones(6), 40), np.eye(6)[rng.integers(0, 6, 40)]),
        "multiclass, a class never occurs": (rng.dirichlet(np.ones(4), 20), np.eye(4)[rng.integers(0, 3, 20)]),
        "multilabel, ties": (np.round(rng.random((30, 5)), 1), (rng.random((30, 5)) < 0.3).astype(float)),
        "multilabel, a label without positives": (rng.random((25, 4)), np.c_[(rng.random((25, 3)) < 0.4), np.zeros(25)]),
        "chroma": (rng.dirichlet(np.ones(30), 50), np.eye(30)[rng.integers(0, 30, 50)]),
    }
    np.savez(tmp_path / "cases.npz", **{f"{i}_p": p for i, (p, _) in enumerate(cases.values())},
             **{f"{i}_t": t for i, (_, t) in enumerate(cases.values())})
    names = ["top1_acc", "pitch_acc", "chroma_acc", "mAP", "d_prime", "aucroc"]
    output = run_in_heareval("""
        import json, sys, numpy as np
        from heareval.score import available_scores
        data = np.load(sys.argv[1]); names = sys.argv[3].split(",")
        results = []
        for i in range(int(sys.argv[2])):
            p, t = data[f"{i}_p"], data[f"{i}_t"]
            results.append({n: float(available_scores[n](label_to_idx={})(p, t)) for n in names})
        print(json.dumps(results))
    """, str(tmp_path / "cases.npz"), str(len(cases)), ",".join(names))
    theirs = json.loads(output.strip().splitlines()[-1], parse_constant=float)
    for (case, (predictions, targets)), expected in zip(cases.items(), theirs):
        for name in names:
            ours = SCORES[name].compute(predictions, targets)
            assert ours == pytest.approx(expected[name], rel=1e-9, abs=1e-12, nan_ok=True), (case, name)


@needs_heareval
@pytest.mark.slow
def test_we_try_the_grid_points_heareval_tries():
    output = run_in_heareval("""
        import copy, random
        from pytorch_lightning import seed_everything
        from sklearn.model_selection import ParameterGrid
        from heareval.predictions.task_predictions import PARAM_GRID
        seed_everything(42, workers=False)
        confs = list(ParameterGrid(copy.copy(PARAM_GRID)))
        random.shuffle(confs)
        for c in confs[:8]:
            print(c["hidden_layers"], c["lr"], c["initialization"].__name__.rstrip("_"), c["hidden_dim"], c["max_epochs"])
    """)
    theirs = [line.split() for line in output.strip().splitlines()[-8:]]
    ours = [[str(p.hidden_layers), str(p.lr), p.initialization, str(p.hidden_dim), str(p.max_epochs)] for p in grid_points("default", 8)]
    assert ours == theirs


@needs_heareval
@pytest.mark.slow
def test_doppeltrain_eval_and_heareval_agree_on_the_same_embeddings(checkpoint, tasks, tmp_path):
    # The easy multiclass task on log-mel statistics, heareval's default grid cut to its
    # first two points, heareval at its seed 42, ours at 42, 0 and 1: the means must agree
    # within the stated margin (python -m benchmarks.heareval_crosscheck).
    report = heareval_crosscheck.crosscheck(str(checkpoint), [str(tasks[0])], tmp_path, HEAREVAL_PYTHON, grid="default",
                                            grid_points=2, seeds=(42, 0, 1), heareval_seeds=(42,), rows=("logmel",),
                                            progress=False)
    [logmel] = report["rows"]
    assert logmel["feature_set"] == "logmel" and logmel["heareval_mean"] > 0.8 and logmel["ours_mean"] > 0.8, logmel
    assert set(logmel["ours"]) == {"42", "0", "1"} and set(logmel["heareval"]) == {"42"}
    assert logmel["agrees"] and abs(logmel["difference"]) <= heareval_crosscheck.DEFAULT_MARGIN, logmel
    assert (tmp_path / "crosscheck.md").read_text().count("| tiny_multiclass | logmel |") == 1
