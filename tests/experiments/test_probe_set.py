"""The drum probe set builder (experiments/probe_set/) on tiny fake kits packed in a fake
.deb, built inside each test: selection, conversion, splits, the sha256 refusal and
idempotence. One test fetches the real pinned package and needs the network."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tarfile
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from doppelgen.files import file_sha256
from experiments.probe_set import build as probe_set
from experiments.probe_set import debian_package

REPO = Path(__file__).resolve().parents[2]

SR = 44100
PREFIX = "usr/share/hydrogen/data/drumkits"


# --- fake kits and a fake package --------------------------------------------------------


def hit(seed: int, seconds: float = 0.3, delay: float = 0.0, sr: int = SR, stereo: bool = False) -> np.ndarray:
    """A decaying noise burst after `delay` s of silence: a stand-in for a drum hit."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    burst = rng.standard_normal(n) * np.exp(-np.linspace(0, 6, n)) * 0.5
    audio = np.concatenate([np.zeros(int(delay * sr)), burst]).astype(np.float32)
    return np.stack([audio, audio * 0.5], axis=1) if stereo else audio


def kit_xml(name: str, instruments: list[tuple[str, list[str]]], namespace: bool = False, old_style: bool = False) -> str:
    body = []
    for instrument, files in instruments:
        if old_style:  # Hydrogen's old format: one <filename> per instrument, no layers
            sound = "".join(f"<filename>{f}</filename>" for f in files[:1])
        else:
            sound = "".join(f"<layer><filename>{f}</filename><min>0</min><max>1</max></layer>" for f in files)
        body.append(f"<instrument><id>0</id><name>{instrument}</name>{sound}</instrument>")
    xmlns = ' xmlns="http://www.hydrogen-music.org/drumkit"' if namespace else ""
    return f"<drumkit_info{xmlns}><name>{name}</name><instrumentList>{''.join(body)}</instrumentList></drumkit_info>"


def write_kits(root: Path) -> list:
    """Three fake kits in `root`; two share a recording group. Returns their Kit records."""
    kits = {
        "Kit A": ("group-a", [("Kick", ["kick-soft.wav", "kick-hard.wav"]), ("Snare Rock", ["snare.flac"]),
                              ("Closed HH", ["hh.wav"]), ("Tom Hi", ["tom.wav"]), ("Tom Mid", ["tom.wav"]),
                              ("Crash", ["crash.wav"]), ("Cowbell", ["cowbell.wav"]), ("Ride", ["missing.wav"])], True),
        "Kit B": ("group-a", [("BassDrum", ["bd.wav"]), ("Snare", ["sn.wav"]), ("Hi-Hat Open", ["oh.wav"]),
                              ("Floor Tom", ["ft.wav"]), ("Paiste Bell", ["bell.wav"]), ("mystery", ["odd.wav"])], False),
        "Kit C": ("group-c", [("Kick", ["k.wav"]), ("Snare", ["s.wav"]), ("Hat Pedal", ["hp.wav"]), ("Tom 1", ["t.wav"]),
                              ("Splash", ["sp.wav"]), ("Snare Ghost", ["silent.wav"]), ("Kick 2", ["k2.wav"])], False),
    }
    seed = 0
    records = []
    for folder, (group, instruments, namespace) in kits.items():
        kit_dir = root / folder
        kit_dir.mkdir(parents=True)
        (kit_dir / "drumkit.xml").write_text(kit_xml(folder, instruments, namespace))
        for _, files in instruments:
            for name in files:
                if name == "missing.wav" or (kit_dir / name).exists():
                    continue
                seed += 1
                audio = np.zeros(SR // 2, np.float32) if name == "silent.wav" else hit(seed, delay=0.1, stereo=seed % 2 == 0)
                sf.write(kit_dir / name, audio, SR)
        overrides = (("mystery", "tom"),) if folder == "Kit B" else ()
        records.append(probe_set.Kit(folder, group, "someone", "GPL-2", "a test", overrides))
    # Kit C's "Kick 2" is a copy of Kit A's snare: two groups disagree, so it is dropped.
    shutil.copy(root / "Kit A" / "snare.flac", root / "Kit C" / "k2.wav")
    return records


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def write_deb(path: Path, kits_root: Path) -> None:
    """A Debian package (ar of debian-binary, control.tar.xz, data.tar.xz) holding the kits."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as archive:
        archive.add(kits_root, arcname=f"./{PREFIX}")
        extra = tarfile.TarInfo("./usr/share/doc/readme")
        archive.addfile(extra, io.BytesIO(b""))
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:xz"):
        pass
    path.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n")
                     + ar_member("control.tar.xz", control.getvalue()) + ar_member("data.tar.xz", data.getvalue()))


@pytest.fixture
def fake_package(tmp_path):
    """(package spec, path of its .deb) for three fake kits."""
    kits_root = tmp_path / "kits"
    kits = write_kits(kits_root)
    deb = tmp_path / "fake-drumkits_1_all.deb"
    write_deb(deb, kits_root)
    digest, size = file_sha256(deb)
    package = replace(probe_set.HYDROGEN_DRUMKITS, name="fake-drumkits", version="1", filename=deb.name,
                      pool_path=f"pool/main/f/fake-drumkits/{deb.name}", sha256=digest, size=size,
                      kits=tuple(kits), default_test_groups=("group-c",))
    return package, deb


def build(out: Path, package, deb: Path) -> list[str]:
    """Build with the package already in the cache; returns what the builder logged."""
    (out / ".downloads").mkdir(parents=True, exist_ok=True)
    if not (out / ".downloads" / deb.name).exists():
        shutil.copy(deb, out / ".downloads" / deb.name)
    messages: list[str] = []
    probe_set.build_probe_set(out, package, log=messages.append)
    return messages


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- selection ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, label", [
    ("Kick (Tama Superstar 22\")", "kick"), ("BassDrum", "kick"), ("c3 - bass drum 1", "kick"),
    ("Snare Rimshot", "snare"), ("Hi-Hat Closed (Paiste)", "hihat"), ("Closed HH", "hihat"),
    ("Sabian Hat Choke", "hihat"), ("Hi Hat Free", "hihat"), ("Floor Tom", "tom"), ("tomhi2", "tom"),
    ("Crash/Ride Bell", "cymbal"), ("Paiste Bell", "cymbal"), ("China (Paiste Alpha 18\")", "cymbal"),
    ("Cowbell", None), ("Hand Clap", None), ("Stick", None), ("Kick Stomp", "kick"), ("Snare Tom", None), ("", None),
])
def test_instrument_names_map_to_one_class_or_none(name, label):
    assert probe_set.classify(name) == label


def test_an_override_names_the_class_the_rules_cannot_read():
    assert probe_set.classify("redo super opaco") is None
    assert probe_set.classify("redo super opaco", (("redo super opaco", "snare"),)) == "snare"


def test_drumkit_xml_is_read_with_or_without_namespace_and_in_the_old_format(tmp_path):
    instruments = [("Kick", ["a.wav", "b.wav"]), ("Snare", ["c.wav"])]
    for variant, options in {"ns": {"namespace": True}, "plain": {}, "old": {"old_style": True}}.items():
        (tmp_path / variant).mkdir()
        (tmp_path / variant / "drumkit.xml").write_text(kit_xml(variant, instruments, **options))
    assert probe_set.kit_instruments(tmp_path / "ns") == instruments
    assert probe_set.kit_instruments(tmp_path / "plain") == instruments
    assert probe_set.kit_instruments(tmp_path / "old") == [("Kick", ["a.wav"]), ("Snare", ["c.wav"])]


def test_selection_takes_each_recording_once_and_drops_what_is_ambiguous(tmp_path):
    kits = write_kits(tmp_path)
    messages: list[str] = []
    samples = probe_set.select_samples(tmp_path, kits, log=messages.append)
    chosen = {(s.kit, s.source): s.label for s in samples}
    assert chosen[("Kit A", "tom.wav")] == "tom"  # two instruments share it: taken once
    assert sum(1 for s in samples if s.source == "tom.wav") == 1
    assert chosen[("Kit B", "bell.wav")] == "cymbal" and chosen[("Kit B", "odd.wav")] == "tom"  # override
    assert ("Kit A", "cowbell.wav") not in chosen  # no class
    assert ("Kit C", "k2.wav") not in chosen and ("Kit A", "snare.flac") not in chosen  # groups disagree
    assert any("missing.wav" in m for m in messages)
    assert [s.label for s in samples] == sorted((s.label for s in samples), key=probe_set.CLASSES.index)
    assert {s.group for s in samples if s.kit == "Kit B"} == {"group-a"}


# --- conversion --------------------------------------------------------------------------


def test_a_clip_starts_at_the_onset_and_is_one_second_at_the_peak():
    sr = probe_set.SAMPLE_RATE
    audio = np.zeros(3 * sr)
    onset = sr // 2
    audio[onset:onset + sr // 4] = np.sin(np.arange(sr // 4) / 3) * 0.2
    clip = probe_set.make_clip(torch.from_numpy(audio))
    assert clip.shape == (probe_set.CLIP_SAMPLES,) and clip.dtype == np.float32
    assert np.max(np.abs(clip)) == pytest.approx(probe_set.PEAK, rel=1e-6)
    first = int(np.argmax(np.abs(clip) > 0))
    assert first <= probe_set.PRE_ONSET_SAMPLES + 2 and first >= probe_set.PRE_ONSET_SAMPLES - 2
    assert np.all(clip[probe_set.PRE_ONSET_SAMPLES + sr // 4 + 1:] == 0)  # zero-padded after the sound


def test_a_long_sound_is_cut_with_a_fade_and_a_silent_one_is_refused():
    sr = probe_set.SAMPLE_RATE
    long = torch.ones(3 * sr) * 0.5
    clip = probe_set.make_clip(long)
    assert clip.shape == (probe_set.CLIP_SAMPLES,)
    assert abs(clip[-1]) < 1e-3 and clip[-probe_set.FADE_SAMPLES - 1] == pytest.approx(probe_set.PEAK)
    assert probe_set.make_clip(torch.zeros(sr)) is None
    assert probe_set.make_clip(torch.zeros(0)) is None


# --- the whole build -----------------------------------------------------------------------


def test_build_writes_labelled_clips_and_splits_that_never_share_a_group(tmp_path, fake_package):
    package, deb = fake_package
    out = tmp_path / "set"
    build(out, package, deb)
    manifest = json.loads((out / "manifest.json").read_text())
    clips = read_csv(out / "clips.csv")
    assert len(clips) == len(manifest["clips"]) == 16
    assert {c["label"] for c in clips} == set(probe_set.CLASSES)
    for clip in clips:
        audio, sr = sf.read(out / clip["path"])
        assert sr == probe_set.SAMPLE_RATE and audio.shape == (probe_set.CLIP_SAMPLES,)
        assert clip["path"].startswith(clip["label"] + "/")
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(probe_set.CLASSES)
    group_of = {c["path"]: c["group"] for c in clips}
    split_files = sorted(out.glob("split*.csv"))
    assert [p.name for p in split_files] == ["split-group-a.csv", "split-group-c.csv", "split.csv"]
    for split_file in split_files:
        rows = read_csv(split_file)
        assert {r["path"] for r in rows} == set(group_of)
        sides = {side: {group_of[r["path"]] for r in rows if r["split"] == side} for side in ("train", "test")}
        assert sides["train"] and sides["test"] and not sides["train"] & sides["test"]
    assert {group_of[r["path"]] for r in read_csv(out / "split.csv") if r["split"] == "test"} == {"group-c"}
    sources = (out / "SOURCES.md").read_text()
    assert package.sha256 in sources and "GPL-2" in sources and "| group-a | 3 | 1 | 2 | 3 | 2 | 11 |" in sources
    assert not (out / ".work").exists() and not (out / probe_set.BUILDING).exists()


def test_the_built_set_is_what_doppeltrain_probe_reads(tmp_path, fake_package):
    from doppeltrain.use import probe

    package, deb = fake_package
    out = tmp_path / "set"
    build(out, package, deb)
    items = probe.read_labelled_data(out)
    train, test = probe.read_split_file(out / "split.csv", items)
    assert len(train) + len(test) == len(items) == 16 and len(test) == 5


def test_a_second_build_does_nothing_and_a_damaged_set_is_rebuilt(tmp_path, fake_package):
    package, deb = fake_package
    out = tmp_path / "set"
    build(out, package, deb)
    clip = out / read_csv(out / "clips.csv")[0]["path"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    messages = build(out, package, deb)
    assert messages == [f"probe set in {out} is complete"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    original = clip.read_bytes()
    clip.write_bytes(original[:-100])
    messages = build(out, package, deb)
    assert messages[-1].startswith("wrote 16 clips") and clip.read_bytes() == original


def test_a_package_with_another_sha256_is_refused_in_one_line(tmp_path, fake_package, capsys):
    package, deb = fake_package
    out = tmp_path / "set"
    (out / ".downloads").mkdir(parents=True)
    tampered = bytearray(deb.read_bytes())
    tampered[-1] ^= 1
    (out / ".downloads" / deb.name).write_bytes(bytes(tampered))
    with pytest.raises(probe_set.ProbeSetError, match="sha256 .* expected " + package.sha256):
        probe_set.build_probe_set(out, package, log=lambda _: None)
    assert not any((out / label).exists() for label in probe_set.CLASSES)
    # The command line says it in one line and exits 1 (the real package's pin is checked).
    (out / ".downloads" / probe_set.HYDROGEN_DRUMKITS.filename).write_bytes(b"not the package")
    assert probe_set.main([str(out)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "sha256" in error


def test_a_folder_that_is_not_a_probe_set_is_refused(tmp_path, fake_package):
    package, deb = fake_package
    out = tmp_path / "mine"
    (out / "kick").mkdir(parents=True)
    (out / "kick" / "precious.wav").write_bytes(b"keep me")
    with pytest.raises(probe_set.ProbeSetError, match="not empty"):
        build(out, package, deb)
    assert (out / "kick" / "precious.wav").read_bytes() == b"keep me"


def test_the_package_downloads_from_a_mirror_and_is_checked(tmp_path, fake_package):
    package, deb = fake_package
    mirror = tmp_path / "mirror"
    (mirror / Path(package.pool_path).parent).mkdir(parents=True)
    shutil.copy(deb, mirror / package.pool_path)
    downloads = tmp_path / "downloads"
    fetched = debian_package.fetch_package(package, downloads, mirror=mirror.as_uri(), log=lambda _: None)
    assert fetched.read_bytes() == deb.read_bytes()
    (mirror / package.pool_path).write_bytes(b"corrupt")
    fetched.unlink()
    with pytest.raises(debian_package.PackageError, match="sha256"):
        debian_package.fetch_package(package, downloads, mirror=mirror.as_uri(), log=lambda _: None)
    assert list(downloads.iterdir()) == []  # nothing half-fetched is left under any name


def test_a_file_that_is_not_a_debian_package_is_refused(tmp_path):
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"hello")
    with pytest.raises(debian_package.PackageError, match="not a Debian package"):
        debian_package.deb_data_member(junk)


# --- the real package (network) ------------------------------------------------------------


def _real_package_reachable() -> str:
    """Why the real package cannot be fetched here, or "" when it can."""
    package = probe_set.HYDROGEN_DRUMKITS
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    result = subprocess.run(["apt-get", "download", "--print-uris", f"{package.name}={package.version}"],
                            capture_output=True, text=True, check=False)
    uris = [word.strip("'") for word in result.stdout.split() if word.startswith("'")]
    if result.returncode != 0 or not uris:
        return f"apt does not know {package.name} {package.version}"
    try:
        urllib.request.urlopen(urllib.request.Request(uris[0], method="HEAD"), timeout=10).close()
    except OSError as error:
        return f"offline: {error}"
    return ""


@pytest.mark.slow
def test_the_pinned_package_holds_the_documented_kits(tmp_path):
    reason = _real_package_reachable()
    if reason:
        pytest.skip(reason)
    package = probe_set.HYDROGEN_DRUMKITS
    deb = debian_package.fetch_package(package, tmp_path / "downloads", log=lambda _: None)
    drumkits = probe_set.extract_kits(deb, package, tmp_path / "work")
    samples = probe_set.select_samples(drumkits, package.kits, log=lambda _: None)
    counts = {label: sum(1 for s in samples if s.label == label) for label in probe_set.CLASSES}
    assert counts == {"kick": 31, "snare": 77, "hihat": 100, "tom": 69, "cymbal": 118}
    assert {s.group for s in samples} == {"bja-pacific", "colombo", "emillo-ludwig", "forzee", "macarthur-pearl"}
