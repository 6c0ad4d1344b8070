"""The pair-shard format, version 1 (``shared/FORMAT.md``): names, audio coding, samples.

This module is the contract between the writer (``doppelgen``) and the readers
(``doppeltrain``, ``doppelgen verify``). It imports neither JAX nor torch, so a reader
can use it without paying for either.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

FORMAT_VERSION = 1
SUPPORTED_FORMATS = (1,)
MANIFEST_NAME = "manifest.json"
CODECS = ("flac", "wav")
AUDIO_MEMBERS = ("a.flac", "b.flac")
# A fixed member mtime makes a shard's sha256 a fact about its content.
TAR_MTIME = 0
TAR_USER = "doppelgen"
TAR_MODE = 0o444

_SHARD_RE = re.compile(r"^pairs-(\d{6})\.tar$")
_PCM24_SCALE = float(2**23)


class FormatError(ValueError):
    """A dataset, shard or sample does not follow FORMAT.md; the message is one line."""


def shard_name(index: int) -> str:
    return f"pairs-{index:06d}.tar"


def stats_name(index: int) -> str:
    return f"pairs-{index:06d}.stats.json"


def shard_index(name: str) -> int | None:
    """The index of a final shard name (``pairs-000012.tar`` -> 12), None for anything else."""
    match = _SHARD_RE.match(os.path.basename(name))
    return int(match.group(1)) if match else None


def pair_key(index: int) -> str:
    return f"{index:010d}"


def audio_extension(codec: str) -> str:
    if codec not in CODECS:
        raise FormatError(f"unknown codec {codec!r}: expected one of {', '.join(CODECS)}")
    return codec


def member_names(index: int, codec: str = "flac") -> tuple[str, str, str]:
    """The three member names of pair ``index`` in their order in the tar."""
    key, ext = pair_key(index), audio_extension(codec)
    return f"{key}.a.{ext}", f"{key}.b.{ext}", f"{key}.json"


def n_samples(duration: float, sample_rate: int) -> int:
    return int(round(duration * sample_rate))


# --- audio ---------------------------------------------------------------------------


def encode_clip(waveform: np.ndarray, sample_rate: int, codec: str = "flac") -> tuple[bytes, float]:
    """Encode one mono clip; returns ``(bytes, gain)`` with ``waveform ~= decode * gain``.

    FLAC stores 24-bit PCM of ``waveform / peak`` (the synth is not bounded to [-1, 1]),
    so the round-trip error is at most 2**-22 of the peak. WAV stores float32 exactly
    with gain 1.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise FormatError(f"a clip must be mono (1-d), got shape {waveform.shape}")
    if not np.isfinite(waveform).all():
        raise FormatError("refusing to encode a non-finite clip")
    buffer = io.BytesIO()
    if audio_extension(codec) == "wav":
        return float_wav(waveform, sample_rate), 1.0
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    gain = peak if peak > 0.0 else 1.0
    # float32 is enough: |scaled| <= 2**23, so rounding costs at most one 24-bit step.
    scaled = np.rint(waveform * np.float32(_PCM24_SCALE / gain))
    quantized = np.clip(scaled, -_PCM24_SCALE, _PCM24_SCALE - 1).astype(np.int32)
    # libsndfile takes int32 input as full-scale 32-bit and keeps its top 24 bits.
    sf.write(buffer, quantized << 8, sample_rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue(), gain


def float_wav(waveform: np.ndarray, sample_rate: int) -> bytes:
    """A mono 32-bit float WAV. Written by hand because libsndfile adds a PEAK chunk that
    holds the current time, which would make every shard's bytes depend on the clock."""
    data = np.asarray(waveform, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)  # IEEE float, mono
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def decode_clip(data: bytes, gain: float = 1.0, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Decode one stored clip and apply its gain; returns ``(float32 waveform, sample_rate)``.

    ``out``, a C-contiguous 1-d float32 array (a row of a batch, say), receives the clip
    instead of a new array: decoded straight into it, the gain applied in place, no
    temporary arrays or copies. The clip must then be mono and exactly ``len(out)``
    samples long (FormatError otherwise); ``out`` is returned. After an error its content
    is undefined.
    """
    if out is not None:
        return _decode_clip_into(data, gain, out)
    try:
        waveform, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as error:  # soundfile raises several types for damaged bytes
        raise FormatError(f"undecodable audio ({error})") from None
    if waveform.ndim != 1:
        raise FormatError(f"audio must be mono, got {waveform.shape[1]} channels")
    return (waveform * np.float32(gain)).astype(np.float32, copy=False), int(sample_rate)


def _decode_clip_into(data: bytes, gain: float, out: np.ndarray) -> tuple[np.ndarray, int]:
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous):
        raise ValueError("out must be a C-contiguous 1-d float32 array")
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            if sound.channels != 1:
                raise FormatError(f"audio must be mono, got {sound.channels} channels")
            if sound.frames != len(out):
                raise FormatError(f"{sound.frames} samples, expected {len(out)}")
            decoded = len(sound.read(out=out))
            sample_rate = sound.samplerate
    except FormatError:
        raise
    except Exception as error:  # soundfile raises several types for damaged bytes
        raise FormatError(f"undecodable audio ({error})") from None
    if decoded != len(out):
        raise FormatError(f"undecodable audio ({decoded} of {len(out)} samples decoded)")
    out *= np.float32(gain)
    return out, int(sample_rate)


# --- samples -------------------------------------------------------------------------


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


REQUIRED_SAMPLE_FIELDS = ("index", "seed", "gain", "params")


def parse_sample_json(data: bytes) -> dict:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"invalid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise FormatError("sample JSON is not an object")
    missing = [field for field in REQUIRED_SAMPLE_FIELDS if field not in meta]
    if missing:
        raise FormatError(f"sample JSON lacks {', '.join(missing)}")
    gain = meta["gain"]
    if not (isinstance(gain, list) and len(gain) == 2 and all(isinstance(g, (int, float)) for g in gain)):
        raise FormatError("sample JSON gain must be [gain_a, gain_b]")
    return meta


@dataclass
class Pair:
    """One decoded doppelgänger pair."""

    key: str
    a: np.ndarray
    b: np.ndarray
    sample_rate: int
    meta: dict


def decode_pair(key: str, members: dict[str, bytes], out: tuple[np.ndarray, np.ndarray] | None = None) -> Pair:
    """Decode one sample given its members by extension (``a.flac``, ``b.flac``, ``json``).
    ``out``: two rows the views are decoded into (see :func:`decode_clip`)."""
    if "json" not in members:
        raise FormatError(f"{key}: missing {key}.json")
    meta = parse_sample_json(members["json"])
    views = []
    for view, gain, row in zip("ab", meta["gain"], out or (None, None)):
        data = members.get(f"{view}.flac", members.get(f"{view}.wav"))
        if data is None:
            raise FormatError(f"{key}: missing {key}.{view}.flac")
        try:
            views.append(decode_clip(data, gain, out=row))
        except FormatError as error:
            raise FormatError(f"{key}.{view}: {error}") from None
    (a, sr_a), (b, sr_b) = views
    if sr_a != sr_b or a.shape != b.shape:
        raise FormatError(f"{key}: the two views differ in sample rate or length")
    return Pair(key=key, a=a, b=b, sample_rate=sr_a, meta=meta)


def iter_tar_members(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` in tar order; a damaged tar raises FormatError."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise FormatError(f"{os.path.basename(path)}: {info.name} is truncated")
                yield info.name, data
    except (tarfile.TarError, EOFError, OSError) as error:
        raise FormatError(f"{os.path.basename(path)}: unreadable tar ({error})") from None


def split_member_name(name: str) -> tuple[str, str]:
    """``0000000012.a.flac`` -> (``0000000012``, ``a.flac``): the WebDataset key rule."""
    base = os.path.basename(name)
    key, _, extension = base.partition(".")
    return key, extension


def iter_shard_pairs(path: str | os.PathLike) -> Iterator[Pair]:
    """Decode every pair of one local shard, in order."""
    key, members = None, {}
    for name, data in iter_tar_members(path):
        member_key, extension = split_member_name(name)
        if key is not None and member_key != key:
            yield decode_pair(key, members)
            members = {}
        key = member_key
        members[extension] = data
    if key is not None:
        yield decode_pair(key, members)


# --- datasets ------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict:
    """Load and check ``folder/manifest.json``; raises FormatError with one line."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FormatError(f"{folder}: no {MANIFEST_NAME} (not a finished pair dataset)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{path}: unreadable manifest ({error})") from None
    return check_manifest(manifest, str(path))


# The recipe fields every reader relies on, and the kind of value each must hold.
_RECIPE_NUMBERS = {"sample_rate": int, "duration": (int, float), "pairs_per_shard": int, "n_shards": int}


def check_manifest(manifest: Any, where: str) -> dict:
    """Check a parsed manifest's version and the recipe fields readers rely on; raises
    FormatError naming ``where`` and the field."""
    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    if not isinstance(recipe, dict):
        raise FormatError(f"{where}: manifest has no recipe object")
    version = recipe.get("format")
    if version not in SUPPORTED_FORMATS:
        raise FormatError(f"{where}: unknown format version {version!r} (this reader knows {SUPPORTED_FORMATS})")
    for field, kind in _RECIPE_NUMBERS.items():
        value = recipe.get(field)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise FormatError(f"{where}: recipe field {field} must be a positive number, got {value!r}")
    return manifest


def is_packed_recipe(recipe: dict) -> bool:
    """Whether a manifest recipe is a packed one (``doppelgen pack``): a ``source`` in place
    of a ``synth``."""
    return "source" in recipe and "synth" not in recipe


def complete_shards(folder: str | os.PathLike) -> list[int]:
    """Indices of the shards whose tar and stats file both exist under their final names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for entry in os.listdir(folder):
        index = shard_index(entry)
        if index is not None and (folder / stats_name(index)).is_file():
            done.append(index)
    return sorted(done)
