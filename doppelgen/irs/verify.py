"""``doppelgen verify`` on an impulse-response set: every file against its manifest."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from doppelgen.format.limits import shown
from doppelgen.irs.sets import IR_KIND, MANIFEST_NAME, IrError, is_ir_manifest, read_json_or_none


@dataclass
class IrVerifyReport:
    """What :func:`verify_ir_set` found: one line per problem, each naming its file."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    files_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def read_ir_manifest(folder: str | os.PathLike) -> dict:
    """``folder/manifest.json`` of an impulse-response set; IrError (one line) if there is
    none, it does not parse, or it describes something else."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise IrError(f"{folder}: no {MANIFEST_NAME} (not a finished impulse-response set)")
    manifest = read_json_or_none(path)
    if not is_ir_manifest(manifest):
        raise IrError(f"{path}: not an impulse-response manifest (recipe kind {IR_KIND!r} expected)")
    return manifest


def is_ir_set(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an impulse-response manifest (``doppelgen verify`` uses it
    to choose its checks)."""
    return is_ir_manifest(read_json_or_none(Path(folder) / MANIFEST_NAME))


UNIT_ENERGY_TOLERANCE = 1e-4  # 24-bit rounding moves a unit-energy response's energy by ~1e-6


def verify_ir_set(folder: str | os.PathLike) -> IrVerifyReport:
    """Check every file of a set against its manifest: present, size and sha256, decodes,
    mono at the recipe's rate, the recorded length, finite, unit energy; and no audio in
    the folder that the manifest does not list (the trainer would load it)."""
    from doppelgen.files import file_sha256

    folder = Path(folder)
    manifest = read_ir_manifest(folder)
    report = IrVerifyReport(folder)
    recipe, entries = manifest["recipe"], manifest.get("files")
    if not isinstance(entries, list):
        report.problems.append(f"{MANIFEST_NAME}: no list of files")
        return report
    if entries and len(entries) != recipe.get("count"):
        report.problems.append(f"{MANIFEST_NAME}: lists {len(entries)} files, the recipe's count is {shown(recipe.get('count'))}")
    listed: set[str] = set()
    for position, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            report.problems.append(f"{MANIFEST_NAME}: file entry {position} has no plain file name")
            continue
        if name in listed:
            report.problems.append(f"{name}: listed twice in {MANIFEST_NAME}")
            continue
        listed.add(name)
        path = folder / name
        if not path.is_file():
            report.problems.append(f"{name}: missing")
            continue
        report.files_checked += 1
        digest, size = file_sha256(path)
        if size != entry.get("size"):
            report.problems.append(f"{name}: {size} bytes, the manifest says {shown(entry.get('size'))}")
        if digest != entry.get("sha256"):
            report.problems.append(f"{name}: sha256 differs from the manifest")
        report.problems.extend(f"{name}: {problem}" for problem in _check_audio(path, recipe, entry))
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.suffix.lower() in (".wav", ".flac") and path.is_file() and relative not in listed:
            report.problems.append(f"{relative}: not in the manifest (the trainer would load it too)")
    return report


def _check_audio(path: Path, recipe: dict, entry: dict) -> list[str]:
    try:
        # The header's frame count sizes the read: a file that holds more than its entry
        # lists (a small FLAC can declare hours of silence) is reported, not decoded.
        info = sf.info(str(path))
        listed = entry.get("samples")
        if not isinstance(listed, int) or info.frames > listed or info.channels > 2:
            return [f"{info.frames} samples in {info.channels} channel(s), the manifest lists {shown(listed)} mono; not decoded"]
        audio, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as error:  # soundfile raises several types for damaged files
        return [f"undecodable ({' '.join(str(error).split())})"]
    problems = []
    if rate != recipe.get("sample_rate"):
        problems.append(f"sample rate {rate} Hz, the recipe says {shown(recipe.get('sample_rate'))}")
    if audio.shape[1] != 1:
        problems.append(f"{audio.shape[1]} channels, expected mono")
    if audio.shape[0] != entry.get("samples"):
        problems.append(f"{audio.shape[0]} samples, the manifest says {shown(entry.get('samples'))}")
    if not np.isfinite(audio).all():
        problems.append("non-finite samples")
    elif abs(float(np.sum(audio**2)) - 1.0) > UNIT_ENERGY_TOLERANCE:
        problems.append(f"energy {float(np.sum(audio ** 2)):.6f}, expected 1 (unit energy)")
    return problems
