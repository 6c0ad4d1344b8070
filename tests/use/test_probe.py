"""The linear probe: splits, the torch classifier, baselines, ``doppeltrain probe``."""

from __future__ import annotations

import hashlib
import json
import os
import tracemalloc
from dataclasses import asdict

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from use_fixtures import CLASSES, EMBEDDING_DIM, write_checkpoint, write_labelled_folder

from doppeltrain.cli import app
from doppeltrain.config import TrainConfig
from doppeltrain.model import build_model
from doppeltrain.train import fit
from doppeltrain.use import hear
from doppeltrain.use.inference import embed_files, load_model
from doppeltrain.use.probe import (
    LogMelStatistics,
    ProbeConfig,
    Standardizer,
    baseline_model,
    fit_logistic_regression,
    linear_probe,
    read_labelled_data,
    read_split_file,
    run_probe,
    stratified_split,
)

# Inputs per fuzz test: a short run in the suite; `DOPPELGANGERS_FUZZ_EXAMPLES=20000` for a long one.
FUZZ_EXAMPLES = int(os.environ.get("DOPPELGANGERS_FUZZ_EXAMPLES", "200"))


def weights_sha256(state_dict) -> str:
    """The digest the probe reports, computed here from the weights as a file holds them."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        digest.update(key.encode())
        digest.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

PER_CLASS = 10


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("probe") / "tiny.pt")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_labelled_folder(tmp_path_factory.mktemp("labelled"), per_class=PER_CLASS)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def test_stratified_split_holds_out_each_class_in_proportion():
    labels = ["a"] * 10 + ["b"] * 5 + ["c"] * 2
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(17))
    assert [labels[i] for i in held].count("a") == 2
    assert [labels[i] for i in held].count("b") == 1
    assert [labels[i] for i in held].count("c") == 1  # at least one, never the last
    again, _ = stratified_split(labels, 0.2, seed=0)
    other, _ = stratified_split(labels, 0.2, seed=1)
    assert again.tolist() == kept.tolist() and other.tolist() != kept.tolist()


def test_logistic_regression_separates_blobs_and_l2_shrinks_it():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.arange(3).repeat_interleave(30)
    x = centres[y] + torch.randn(90, 2, generator=generator)
    loose = fit_logistic_regression(x, y, 3, l2=1e-4)
    tight = fit_logistic_regression(x, y, 3, l2=1.0)
    assert (loose(x.double()).argmax(1) == y).double().mean() > 0.95
    assert tight.weight.norm() < 0.5 * loose.weight.norm()


def test_standardizer_uses_the_fit_data_and_survives_constant_features():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    scaler = Standardizer.fit(train)
    assert scaler(train).tolist() == [[-1.0, 0.0], [1.0, 0.0]]
    assert scaler(torch.tensor([[5.0, 5.0]])).tolist() == [[3.0, 0.0]]


def test_linear_probe_chooses_l2_on_validation_and_scores_held_out_files():
    rng = np.random.default_rng(0)
    labels = ["x"] * 40 + ["y"] * 40
    features = rng.standard_normal((80, 20))
    features[40:, 0] += 4.0  # one informative dimension among noise
    train, test = stratified_split(labels, 0.25, seed=0)
    result = linear_probe(features, labels, train, test, l2_grid=(1e-4, 1e-2, 1.0))
    assert set(result.val_accuracy) == {"0.0001", "0.01", "1.0"}
    assert result.best_l2 in (1e-4, 1e-2, 1.0)
    assert result.test_accuracy >= 0.9 and set(result.per_class_test_accuracy) == {"x", "y"}


def test_labelled_data_from_folders_csv_and_split_file(labelled, tmp_path):
    items = read_labelled_data(labelled)
    assert len(items) == 3 * PER_CLASS and sorted({i.label for i in items}) == sorted(CLASSES)
    assert items[0].key == "clicks/clicks-00.wav"
    csv_path = tmp_path / "set.csv"
    csv_path.write_text("path,label\n" + "".join(f"{i.path},{i.label}\n" for i in items[::7]))
    from_csv = read_labelled_data(csv_path)
    assert [(i.path, i.label) for i in from_csv] == [(i.path, i.label) for i in items[::7]]
    split = tmp_path / "split.csv"
    split.write_text("".join(f"{i.key},{'test' if n % 5 == 0 else 'train'}\n" for n, i in enumerate(items)))
    train, test = read_split_file(split, items)
    assert test.tolist() == list(range(0, 30, 5)) and len(train) == 24
    split.write_text("clicks/clicks-00.wav,train\n")
    with pytest.raises(ValueError, match="does not assign 29"):
        read_split_file(split, items)


def test_logmel_statistics_are_band_means_and_stds():
    logmel = torch.randn(2, 1, 96, 64)
    stats = LogMelStatistics()(logmel)
    assert stats.shape == (2, 128)
    torch.testing.assert_close(stats[:, :64], logmel[:, 0].mean(dim=1))
    torch.testing.assert_close(stats[:, 64:], logmel[:, 0].std(dim=1, unbiased=False))


def test_random_baseline_is_the_same_architecture_untrained(checkpoint):
    trained = load_model(checkpoint, device="cpu")
    random_a = baseline_model("random", trained, seed=0)
    random_b = baseline_model("random", trained, seed=0)
    assert random_a.embedding_dim == EMBEDDING_DIM
    names = [name for name, _ in trained.encoder.named_parameters()]
    assert names == [name for name, _ in random_a.encoder.named_parameters()]
    for (_, a), (_, b), (_, t) in zip(random_a.encoder.named_parameters(), random_b.encoder.named_parameters(), trained.encoder.named_parameters()):
        assert torch.equal(a, b)  # seeded: the same baseline every time
    assert not torch.equal(random_a.encoder.conv1.weight, trained.encoder.conv1.weight)


@pytest.mark.slow
def test_probe_separates_easy_classes_far_above_chance(checkpoint, labelled, tmp_path):
    cfg = ProbeConfig(checkpoint=str(checkpoint), data=str(labelled), test_fraction=0.3,
                      baselines=("logmel", "random"), device="cpu", out=str(tmp_path / "report.json"))
    report = run_probe(cfg)
    assert report == json.loads((tmp_path / "report.json").read_text())
    assert report["n_test"] == 9 and report["n_train"] == 21
    assert report["chance_accuracy"] == pytest.approx(1 / 3)
    assert set(report["results"]) == {"checkpoint", "logmel", "random"}
    assert report["results"]["checkpoint"]["dimensions"] == EMBEDDING_DIM
    assert report["results"]["logmel"]["dimensions"] == 128
    for name, result in report["results"].items():
        assert result["test_accuracy"] >= 0.8, (name, result)
    # Every feature set passes on easy classes, so the row must be shown to come from the
    # given checkpoint: its weights, and the probe of exactly their embeddings.
    row = report["results"]["checkpoint"]
    assert row["weights_sha256"] == weights_sha256(torch.load(checkpoint, weights_only=True)["model"])
    assert report["results"]["random"]["weights_sha256"] != row["weights_sha256"]
    assert report["results"]["logmel"]["weights_sha256"] is None
    items = read_labelled_data(labelled)
    features = embed_files(load_model(checkpoint, device="cpu"), [item.path for item in items])
    labels = [item.label for item in items]
    train, test = stratified_split(labels, 0.3, seed=0)
    expected = asdict(linear_probe(features, labels, train, test))
    assert row["test_log_loss"] == pytest.approx(expected.pop("test_log_loss"), rel=1e-6)
    assert {key: row[key] for key in expected} == expected
    assert row["test_log_loss"] != pytest.approx(report["results"]["random"]["test_log_loss"], rel=1e-3)


def test_probe_from_a_csv_with_a_given_split(checkpoint, labelled, tmp_path):
    items = read_labelled_data(labelled)
    (tmp_path / "set.csv").write_text("".join(f"{i.path},{i.label}\n" for i in items))
    # The first three files of each class are the test set.
    (tmp_path / "split.csv").write_text("path,split\n" + "".join(
        f"{i.path},{'test' if i.path.stem.endswith(('00', '01', '02')) else 'train'}\n" for i in items))
    report = run_probe(ProbeConfig(checkpoint=str(checkpoint), data=str(tmp_path / "set.csv"),
                                   split_file=str(tmp_path / "split.csv"), device="cpu", out=str(tmp_path / "r.json")))
    assert (report["n_train"], report["n_test"]) == (3 * (PER_CLASS - 3), 9)
    assert report["split"] == str(tmp_path / "split.csv")
    assert set(report["results"]["checkpoint"]["per_class_test_accuracy"]) == set(CLASSES)
    assert report["results"]["checkpoint"]["test_accuracy"] > report["chance_accuracy"]


def test_cli_probe_prints_accuracy_and_writes_the_report(cli, checkpoint, labelled, tmp_path):
    result = cli("probe", checkpoint, labelled, "--baseline", "logmel", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "checkpoint  test accuracy" in result.output and "logmel" in result.output
    report = json.loads((tmp_path / "probe.json").read_text())
    assert set(report["results"]) == {"checkpoint", "logmel"}


@pytest.mark.parametrize("case", ["one-class", "tiny-class", "baseline", "fraction", "no-data", "wav-as-data", "wav-as-split"])
def test_cli_probe_bad_inputs_fail_in_one_line(cli, checkpoint, labelled, tmp_path, case):
    one_class = tmp_path / "one"
    (one_class / "only").mkdir(parents=True)
    for name in ("a.wav", "b.wav", "c.wav"):
        (one_class / "only" / name).write_bytes((labelled / "tone" / "tone-00.wav").read_bytes())
    tiny = tmp_path / "tiny"
    (tiny / "few").mkdir(parents=True)
    (tiny / "few" / "a.wav").write_bytes((labelled / "tone" / "tone-00.wav").read_bytes())
    (tiny / "many").mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        (tiny / "many" / name).write_bytes((labelled / "noise" / "noise-00.wav").read_bytes())
    args, named = {
        "one-class": ((one_class,), "at least two classes"),
        "tiny-class": ((tiny,), "'few'"),
        "baseline": ((labelled, "--baseline", "mfcc"), "mfcc"),
        "fraction": ((labelled, "--test-fraction", "1.5"), "--test-fraction"),
        "no-data": ((tmp_path / "nowhere",), "nowhere"),
        "wav-as-data": ((labelled / "tone" / "tone-00.wav",), "tone-00.wav: not a UTF-8 text file"),
        "wav-as-split": ((labelled, "--split", labelled / "tone" / "tone-01.wav"), "tone-01.wav: not a UTF-8 text file"),
    }[case]
    result = cli("probe", checkpoint, *args, "--device", "cpu", "--no-progress")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.output
    assert not (tmp_path / "probe.json").exists()


# --- with a checkpoint the training loop wrote ------------------------------------------


@pytest.fixture(scope="module")
def fitted_checkpoint(voice_shards, tmp_path_factory):
    """A few steps of ``fit`` on the rendered voice shards: the real checkpoint format."""
    cfg = TrainConfig()
    cfg.data.datasets = [str(voice_shards)]
    cfg.data.batch_size, cfg.data.workers, cfg.data.val_shards = 4, 0, 1
    cfg.model.model, cfg.model.width, cfg.model.embedding_dim = "small", 8, EMBEDDING_DIM
    cfg.epochs, cfg.steps_per_epoch, cfg.val_every, cfg.val_audio_pairs = 1, 3, 0, 0
    cfg.device, cfg.progress = "cpu", False
    cfg.runs_dir, cfg.run = str(tmp_path_factory.mktemp("runs")), "probe"
    summary = fit(cfg)
    assert summary["step"] == 3
    return summary["checkpoint"]


def test_probe_with_a_fit_checkpoint_reads_the_trained_weights(fitted_checkpoint, labelled, tmp_path):
    # The random baseline with the fit's seed is exactly the network fit started from.
    cfg = ProbeConfig(checkpoint=str(fitted_checkpoint), data=str(labelled), test_fraction=0.3, baselines=("random",),
                      seed=TrainConfig().seed, device="cpu", out=str(tmp_path / "report.json"))
    report = run_probe(cfg)
    trained, untrained = report["results"]["checkpoint"], report["results"]["random"]
    assert trained["test_accuracy"] >= 0.8 > 2 * report["chance_accuracy"]
    assert trained["weights_sha256"] == weights_sha256(torch.load(fitted_checkpoint, weights_only=True)["model"])
    torch.manual_seed(TrainConfig().seed)
    start = build_model(TrainConfig.from_dict(torch.load(fitted_checkpoint, weights_only=True)["config"]).model)
    assert untrained["weights_sha256"] == weights_sha256(start.state_dict())
    # Three steps moved the weights, and the probe sees it.
    assert trained["weights_sha256"] != untrained["weights_sha256"]
    assert trained["test_log_loss"] != pytest.approx(untrained["test_log_loss"], rel=1e-4)


def test_a_fit_checkpoint_serves_embed_and_hear(fitted_checkpoint, labelled):
    model = load_model(fitted_checkpoint, device="cpu")
    items = read_labelled_data(labelled)[:4]
    rows = embed_files(model, [item.path for item in items])
    assert rows.shape == (4, EMBEDDING_DIM) and np.isfinite(rows).all()
    hear_model = hear.load_model(str(fitted_checkpoint))
    scene = hear.get_scene_embeddings(torch.zeros(2, 8000), hear_model)
    assert scene.shape == (2, hear_model.scene_embedding_size)


# --- fuzzing the CSV readers -------------------------------------------------------------

CELLS = st.one_of(
    st.sampled_from(["tone/tone-00.wav", "noise/noise-01.wav", "clicks/clicks-02.wav", "missing.wav", "/no/such.wav",
                     "path", "label", "split", "train", "test", "", " ", '"', '""', "a,b", "\x00", "\r", "..", "/"]),
    st.text(max_size=12),
)
FILES = st.sampled_from(["tone/tone-00.wav", "noise/noise-01.wav", "clicks/clicks-02.wav", " tone/tone-03.wav "])
WELL_FORMED = st.tuples(FILES, st.one_of(st.sampled_from(["tone", "noise", "train", "test"]), st.text(max_size=8))).map(",".join)
ROWS = st.one_of(WELL_FORMED, st.lists(CELLS, max_size=4).map(",".join))
CSV_TEXT = st.tuples(st.sampled_from(["", "path,label\n", "path,split\n", "\ufeff"]), st.lists(ROWS, max_size=12).map("\n".join)).map("".join)


@pytest.fixture(scope="module")
def fuzz_dir(labelled, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    for name in ("tone", "noise", "clicks"):
        (folder / name).symlink_to(labelled / name)
    return folder


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=3000), CSV_TEXT.map(str.encode)))
@example(data=b'"' + b"a" * 140_000)  # one field over csv's limit
@example(data=b"tone/tone-00.wav,x\x00y\n")
@example(data=b"RIFF\x80\x00\x00\x00WAVEfmt ")
def test_fuzz_the_probe_csv_readers(fuzz_dir, labelled, data):
    """Any bytes as a probe set's or split's CSV: files and labels, or a one-line
    ValueError naming the CSV; never another exception, and memory bounded by the input."""
    csv_path = fuzz_dir / "set.csv"
    csv_path.write_bytes(data)
    tracemalloc.start()
    try:
        for read in (lambda: read_labelled_data(csv_path), lambda: read_split_file(csv_path, read_labelled_data(labelled))):
            try:
                result = read()
            except ValueError as error:
                message = str(error)
                assert "\n" not in message and "set.csv" in message, message
                event(f"refused: {message.split(': ', 1)[-1].split(' (')[0].split(',')[0][:40]}")
            else:
                assert result is not None
                event("read")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000 + 50 * len(data), peak
