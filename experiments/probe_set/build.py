"""Build the drum probe set: recorded acoustic drum hits, labelled by instrument, split by kit.

``python -m experiments.probe_set OUT`` fetches one pinned Debian package that ships
recorded drum kits (``hydrogen-drumkits``), checks its sha256, and writes under OUT:

- ``<class>/<group>__<kit>__<file>.wav``: one clip per distinct recorded sample, for the
  classes kick, snare, hihat, tom and cymbal; 1 s, mono, 16 kHz, 16-bit PCM.
- ``split.csv`` (``path,split``): the default held-out split for ``doppeltrain probe
  OUT --split OUT/split.csv``. Whole recording groups (a kit, or kits recorded from one
  drum set) are held out, so no drum appears on both sides.
- ``split-<group>.csv``: leave-one-group-out folds; every clip is tested in one of them.
- ``clips.csv`` (``path,label,group``), ``manifest.json`` (recipe, package, every clip
  with its source and sha256) and ``SOURCES.md`` (provenance and licences).

Only kits whose authors document them as recordings of acoustic drum sets are used: the
package's synthesized kits (ElectricEmpireKit, HardElectro1, VariBreaks) and its kits of
mixed or unclear provenance are left out. No tones, General MIDI soundfonts or speech.

``build_probe_set(out)`` is the importable entry point (``experiments/learn.py``); a
second call on a complete set does nothing. The package comes from ``OUT/.downloads``
when it is there, else from ``apt-get download`` (or ``--mirror``, a Debian mirror's
base URL, where apt is not available).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence
from xml.etree import ElementTree

import numpy as np
import soundfile as sf
import torch

from doppelgen.console import EXIT_FAILURE, InputError, one_line
from doppelgen.files import file_sha256, write_atomic
from doppeltrain.use.inference import AudioReadError, load_audio
from experiments.probe_set.debian_package import DebianPackage, PackageError, fetch_package, open_data_archive
from experiments.probe_set.sources import sources_markdown

# Bump when the selection or the conversion changes: a set built by another recipe is rebuilt.
RECIPE_VERSION = 1

SAMPLE_RATE = 16000  # the network's rate: embed reads these clips without resampling
CLIP_SAMPLES = SAMPLE_RATE  # 1 s: exactly one training input, so embed frames one example
PRE_ONSET_SAMPLES = SAMPLE_RATE * 5 // 1000  # keep 5 ms before the onset: the attack stays whole
ONSET_FRACTION = 0.05  # the onset is the first sample at -26 dB of the clip's peak
FADE_SAMPLES = SAMPLE_RATE * 10 // 1000  # a sound cut at 1 s fades out over its last 10 ms
PEAK = 0.9  # clips are peak-normalized, as doppelgen's rendered sounds are
SILENT_PEAK = 1e-4  # a sample whose peak is below this holds no sound and is skipped

CLASSES = ("kick", "snare", "hihat", "tom", "cymbal")

# An instrument's class, from its name in the kit's drumkit.xml. A name matching no
# rule (clap, cowbell, side stick, tambourine, ...) or more than one is left out.
CLASS_RULES: dict[str, re.Pattern] = {
    "kick": re.compile(r"kick|bass ?drum|\bbd\b", re.IGNORECASE),
    "snare": re.compile(r"snare", re.IGNORECASE),
    "hihat": re.compile(r"hi-? ?hat|\bhh\b|\bhat\b", re.IGNORECASE),
    "tom": re.compile(r"\btom", re.IGNORECASE),
    # "\bbell\b" is a ride's bell ("Paiste Bell"); a cowbell is one word and stays out.
    "cymbal": re.compile(r"crash|ride|splash|china|cymbal|\bbell\b", re.IGNORECASE),
}


@dataclass(frozen=True)
class Kit:
    """A kit of the package that the set uses, and what its documentation says of it."""

    folder: str  # its folder in usr/share/hydrogen/data/drumkits
    group: str  # one recording identity: kits recorded from one drum set share a group
    author: str
    license: str  # as the package's debian/copyright names it
    provenance: str  # why it counts as a recording
    overrides: tuple[tuple[str, str], ...] = ()  # (instrument name, class) the rules cannot read


@dataclass(frozen=True)
class DrumkitPackage(DebianPackage):
    """A Debian package of Hydrogen drum kits, and which of its kits the set uses."""

    data_prefix: str  # where the kits lie inside the package's data
    kits: tuple[Kit, ...]
    default_test_groups: tuple[str, ...]


HYDROGEN_DRUMKITS = DrumkitPackage(
    name="hydrogen-drumkits",
    version="2017.09.19~dfsg-1",
    filename="hydrogen-drumkits_2017.09.19~dfsg-1_all.deb",
    pool_path="pool/main/h/hydrogen-drumkits/hydrogen-drumkits_2017.09.19~dfsg-1_all.deb",
    sha256="6ea3c6df9a67762e2362f946c695e619859126b19fbccf32a2e8f07dfd03b2f4",
    size=142675622,
    data_prefix="usr/share/hydrogen/data/drumkits",
    kits=(
        Kit("BJA_Pacific", "bja-pacific", "Luc Tanguay / Bransin James Anderson",
            "CC-BY-SA-3.0-us (Creative Commons Attribution-ShareAlike 3.0 United States)",
            'drumkit.xml: "Pacific set sampled by Bransin James Anderson. Sample files are 44.1K, 16 Bit .AIFF."'),
        Kit("ColomboAcousticDrumkit", "colombo", "Marcos Guglielmetti (2006)",
            "GPL-2+ with composition exception",
            "drumkit.xml and README: wooden toms, snare and bass drum, Sabian and Paiste crashes, with recording details",
            overrides=(("redo super opaco", "snare"),)),  # its one layer is snare-opaque-2mics_normal-shot1.flac
        Kit("ForzeeStereo", "forzee", "Vladimir Sadovnikov, Alexander Belokurov", "GPL-2",
            "drumkit.xml names each recorded instrument: Tama Superstar kick and toms, Pearl maple snare, Paiste and Zagrebin cymbals"),
        Kit("Millo-Drums_v.1", "emillo-ludwig", "Emiliano Grilli (Emillo)", "GPL-2",
            'drumkit.xml: "created recording my ludwig set"'),
        Kit("Millo_MultiLayered2", "emillo-ludwig", "Emiliano Grilli (Emillo)", "GPL-2",
            'drumkit.xml: "Second, multilayered version of a ludwig set"'),
        Kit("Millo_MultiLayered3", "emillo-ludwig", "Emiliano Grilli (Emillo)", "GPL-2",
            'drumkit.xml: "third version of a ludwig drumkit. Recorded at cricketstudios.it"'),
        Kit("The Black Pearl 1.0", "macarthur-pearl", "Glen MacArthur", "GPL-2",
            "drumkit.xml names each recorded instrument: Pearl kick, snare and toms, Sabian hats and crashes, Paiste ride, Zildjian splash"),
    ),
    # Two groups of different size and recording style, together about a third of the
    # clips, with every class present (see SOURCES.md for the counts).
    default_test_groups=("forzee", "colombo"),
)

LEFT_OUT = (
    ("ElectricEmpireKit, HardElectro1, VariBreaks", "synthesized (their drumkit.xml says so)"),
    ("Audiophob", "a collection of freesound clips of mixed provenance, some synthetic (8-bit snare, noise toms)"),
    ("rumpf_kit_z01_h2", '"drum kit from analog samples": whether acoustic or a drum machine is not documented'),
    ("Gimme A Hand 1.0, circAfrique v4", "recorded, but hand percussion and djembes: none of the five classes"),
)


class ProbeSetError(InputError):
    """A refusal or failure, in one line naming its cause."""


# --- the kits --------------------------------------------------------------------------


def extract_kits(deb: Path, package: DrumkitPackage, dest: Path) -> Path:
    """Extract the package's chosen kit folders into `dest`; returns the drumkits folder.
    One streaming pass over the data archive; nothing outside those folders is written."""
    wanted = {kit.folder for kit in package.kits}
    root = dest / "drumkits"
    with open_data_archive(deb) as archive:
        for member in archive:
            parts = Path(member.name.lstrip("./")).parts
            prefix = Path(package.data_prefix).parts
            if not member.isfile() or parts[:len(prefix)] != prefix or len(parts) != len(prefix) + 2:
                continue
            kit, filename = parts[len(prefix)], parts[len(prefix) + 1]
            if kit not in wanted or filename in (".", ".."):
                continue
            target = root / kit / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.extractfile(member) as source, open(target, "wb") as handle_out:
                shutil.copyfileobj(source, handle_out, 1 << 20)
    missing = sorted(kit for kit in wanted if not (root / kit / "drumkit.xml").is_file())
    if missing:
        raise ProbeSetError(f"{deb} lacks the kit(s) {', '.join(missing)}")
    return root


# --- selection -------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectedSample:
    label: str
    group: str
    kit: str
    instrument: str
    source: str  # the file inside the kit folder
    source_sha256: str


def classify(instrument: str, overrides: Sequence[tuple[str, str]] = ()) -> Optional[str]:
    """The class of an instrument name, or None when no rule or more than one matches."""
    for name, label in overrides:
        if name == instrument:
            return label
    matches = [label for label, rule in CLASS_RULES.items() if rule.search(instrument)]
    return matches[0] if len(matches) == 1 else None


def kit_instruments(kit_folder: Path) -> list[tuple[str, list[str]]]:
    """(instrument name, sample files) of a Hydrogen drumkit.xml, in its order. Old kits
    name one file per instrument, newer ones a list of velocity layers; both are read."""
    try:
        root = ElementTree.parse(kit_folder / "drumkit.xml").getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise ProbeSetError(f"cannot read {kit_folder / 'drumkit.xml'}: {one_line(error)}") from None
    for element in root.iter():  # some kits declare a namespace, some do not
        element.tag = element.tag.rpartition("}")[2]
    instruments = []
    for instrument in root.iter("instrument"):
        name = (instrument.findtext("name") or "").strip()
        files = [layer.findtext("filename") for layer in instrument.iter("layer")]
        files = [f.strip() for f in files if f and f.strip()] or [
            f.strip() for f in [instrument.findtext("filename")] if f and f.strip()
        ]
        instruments.append((name, files))
    return instruments


def select_samples(drumkits: Path, kits: Sequence[Kit], log: Callable[[str], None] = print) -> list[SelectedSample]:
    """Every distinct recorded sample of the kits' instruments that fall in one class.

    A sample is one file; a file that several instruments (or kits) share is taken once
    (by content), and dropped when they disagree on its class or its group. Missing and
    silent files are skipped. The order is stable: class, group, kit, file."""
    by_content: dict[str, SelectedSample] = {}
    conflicted: set[str] = set()
    for kit in kits:
        folder = drumkits / kit.folder
        for instrument, files in kit_instruments(folder):
            label = classify(instrument, kit.overrides)
            if label is None:
                continue
            for filename in files:
                path = folder / filename
                if Path(filename).name != filename or not path.is_file():
                    log(f"skipped {kit.folder}/{filename}: no such file in the kit")
                    continue
                digest, _ = file_sha256(path)
                sample = SelectedSample(label, kit.group, kit.folder, instrument, filename, digest)
                seen = by_content.get(digest)
                if seen is None:
                    by_content[digest] = sample
                elif (seen.label, seen.group) != (label, kit.group):
                    conflicted.add(digest)
    for digest in sorted(conflicted):
        seen = by_content.pop(digest)
        log(f"skipped {seen.kit}/{seen.source}: instruments disagree on its class or group")
    return sorted(by_content.values(), key=lambda s: (CLASSES.index(s.label), s.group, s.kit, s.source))


# --- conversion ------------------------------------------------------------------------


def make_clip(audio: torch.Tensor) -> Optional[np.ndarray]:
    """A mono waveform at SAMPLE_RATE -> the 1 s clip: from 5 ms before its onset, cut
    (with a 10 ms fade) or zero-padded to CLIP_SAMPLES, peak-normalized to PEAK. None for
    a silent waveform."""
    audio = audio.double().numpy()
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < SILENT_PEAK:
        return None
    onset = int(np.argmax(np.abs(audio) >= ONSET_FRACTION * peak))
    clip = audio[max(0, onset - PRE_ONSET_SAMPLES):][:CLIP_SAMPLES + 1]
    if len(clip) > CLIP_SAMPLES:  # the sound goes on past 1 s: fade it out, do not click
        clip = clip[:CLIP_SAMPLES].copy()
        clip[-FADE_SAMPLES:] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, FADE_SAMPLES)))
    clip = np.pad(clip, (0, CLIP_SAMPLES - len(clip)))
    return (clip * (PEAK / np.max(np.abs(clip)))).astype(np.float32)


def clip_name(sample: SelectedSample) -> str:
    """The clip's file name: group, kit and source file, in characters any file system takes."""
    stem = Path(sample.source).stem
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{sample.group}__{sample.kit}__{stem}") + ".wav"


# --- the set ---------------------------------------------------------------------------


MANIFEST = "manifest.json"
BUILDING = ".probe-set-building"  # present while a build runs; a build that died leaves it


def recipe(package: DrumkitPackage) -> dict:
    """What determines the set's content: a set with another recipe is rebuilt."""
    return {
        "version": RECIPE_VERSION, "package": package.name, "package_version": package.version,
        "package_sha256": package.sha256, "kits": [asdict(kit) for kit in package.kits],
        "classes": list(CLASSES), "rules": {label: rule.pattern for label, rule in CLASS_RULES.items()},
        "sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES, "pre_onset_samples": PRE_ONSET_SAMPLES,
        "onset_fraction": ONSET_FRACTION, "fade_samples": FADE_SAMPLES, "peak": PEAK,
        "default_test_groups": list(package.default_test_groups),
    }


def is_complete(out: Path, package: DrumkitPackage) -> bool:
    """True when `out` holds a finished set of this recipe with every clip intact."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    # Compared as JSON reads it back (tuples become lists).
    if manifest.get("recipe") != json.loads(json.dumps(recipe(package))) or (out / BUILDING).exists():
        return False
    for clip in manifest.get("clips", []):
        path = out / clip["path"]
        if not path.is_file() or file_sha256(path)[0] != clip["sha256"]:
            return False
    return bool(manifest.get("clips"))


def _prepare(out: Path) -> None:
    """Make `out` ready for a build; refuse a folder that is not a probe set of ours."""
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / MANIFEST).is_file() or (out / BUILDING).exists()
    foreign = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if foreign and not ours:
        raise ProbeSetError(f"{out} is not empty and holds no probe set: choose an empty or new folder")
    (out / BUILDING).touch()
    (out / MANIFEST).unlink(missing_ok=True)
    for label in CLASSES:
        shutil.rmtree(out / label, ignore_errors=True)
    for path in [*out.glob("split*.csv"), out / "clips.csv", out / "SOURCES.md"]:
        path.unlink(missing_ok=True)
    shutil.rmtree(out / ".work", ignore_errors=True)


def write_probe_set(samples: Sequence[SelectedSample], drumkits: Path, out: Path, package: DrumkitPackage,
                    log: Callable[[str], None] = print) -> dict:
    """Convert the selected samples into clips under `out` and write the split files,
    clips.csv, SOURCES.md and (last) the manifest. Returns the manifest."""
    clips = []
    for sample in samples:
        try:
            audio = load_audio(drumkits / sample.kit / sample.source, SAMPLE_RATE)
        except AudioReadError as error:
            log(f"skipped {sample.kit}/{sample.source}: {error}")
            continue
        clip = make_clip(audio)
        if clip is None:
            log(f"skipped {sample.kit}/{sample.source}: silent")
            continue
        relative = f"{sample.label}/{clip_name(sample)}"
        (out / sample.label).mkdir(exist_ok=True)
        sf.write(out / relative, clip, SAMPLE_RATE, subtype="PCM_16")
        clips.append({"path": relative, "sha256": file_sha256(out / relative)[0], **asdict(sample)})
    names = Counter(clip["path"] for clip in clips)
    if any(count > 1 for count in names.values()):
        raise ProbeSetError(f"two samples map to the clip name {max(names, key=names.get)}")
    missing = [label for label in CLASSES if not any(clip["label"] == label for clip in clips)]
    if missing:
        raise ProbeSetError(f"no clip of class {missing[0]}: the package's kits are not what the recipe expects")

    groups = sorted({clip["group"] for clip in clips})
    test_groups = [g for g in package.default_test_groups if g in groups]
    _write_csv(out / "split.csv", ["path", "split"],
               [(c["path"], "test" if c["group"] in test_groups else "train") for c in clips])
    for group in groups:
        _write_csv(out / f"split-{group}.csv", ["path", "split"],
                   [(c["path"], "test" if c["group"] == group else "train") for c in clips])
    _write_csv(out / "clips.csv", ["path", "label", "group"], [(c["path"], c["label"], c["group"]) for c in clips])
    counts = {
        group: {label: sum(1 for c in clips if c["group"] == group and c["label"] == label) for label in CLASSES}
        for group in groups
    }
    manifest = {
        "recipe": recipe(package),
        "counts": counts,
        "default_split": {"test_groups": test_groups, "train_groups": [g for g in groups if g not in test_groups]},
        "clips": clips,
    }
    write_atomic(out / "SOURCES.md", sources_markdown(manifest, package, LEFT_OUT).encode())
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, text.getvalue().encode())


def build_probe_set(out: Path, package: DrumkitPackage = HYDROGEN_DRUMKITS, mirror: Optional[str] = None,
                    log: Callable[[str], None] = print) -> Path:
    """Build the probe set in `out` (a folder per class; see the module's docstring) and
    return `out`. A complete set of the same recipe is left as it is; a partial one, or
    one of another recipe, is rebuilt. The package is cached in ``out/.downloads``.
    ProbeSetError (one line) on a refusal: a folder that is not ours, a package whose
    sha256 differs from the pinned one, a failed download."""
    out = Path(out)
    if is_complete(out, package):
        log(f"probe set in {out} is complete")
        return out
    started = time.monotonic()
    _prepare(out)
    work = out / ".work"
    try:
        deb = fetch_package(package, out / ".downloads", mirror, log)
        drumkits = extract_kits(deb, package, work)
        samples = select_samples(drumkits, package.kits, log)
        manifest = write_probe_set(samples, drumkits, out, package, log)
    except PackageError as error:  # callers catch one error type, the set's
        raise ProbeSetError(str(error)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / BUILDING).unlink()
    log(f"wrote {len(manifest['clips'])} clips of {len(CLASSES)} classes to {out} "
        f"in {time.monotonic() - started:.0f} s")
    return out


# --- command line ----------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to build the set in (empty, new, or an earlier build)")
    parser.add_argument("--mirror", help="a Debian mirror's base URL, to download without apt-get")
    args = parser.parse_args(argv)
    try:
        build_probe_set(args.out, mirror=args.mirror)
    except ProbeSetError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
