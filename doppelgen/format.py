"""The pair-shard format, version 1 (``shared/FORMAT.md``): names, audio coding, samples.

This module is the contract between the writer (``doppelgen``) and the readers
(``doppeltrain``, ``doppelgen verify``). It imports neither JAX nor torch, so a reader
can use it without paying for either.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from .console import one_line

FORMAT_VERSION = 1
SUPPORTED_FORMATS = (1,)
MANIFEST_NAME = "manifest.json"
CODECS = ("flac", "wav")
AUDIO_MEMBERS = ("a.flac", "b.flac")
# A fixed member mtime makes a shard's sha256 a fact about its content.
TAR_MTIME = 0
TAR_USER = "doppelgen"
TAR_MODE = 0o444

# Whole names only (fullmatch, ASCII digits): no folder, no "../", no trailing newline.
_SHARD_RE = re.compile(r"pairs-([0-9]{6})\.tar")
_KEY_RE = re.compile(r"[0-9]{10}")
_PCM24_SCALE = float(2**23)


class FormatError(ValueError):
    """A dataset, shard or sample does not follow FORMAT.md; the message is one line."""


def shard_name(index: int) -> str:
    return f"pairs-{index:06d}.tar"


def stats_name(index: int) -> str:
    return f"pairs-{index:06d}.stats.json"


def shard_index(name: Any) -> int | None:
    """The index of a final shard name (``pairs-000012.tar`` -> 12), None for anything
    else. The name must be exactly that: no folder, no ``../``, no absolute path, so a
    name read from a manifest can never point a reader outside its dataset."""
    match = _SHARD_RE.fullmatch(name) if isinstance(name, str) else None
    return int(match.group(1)) if match else None


def pair_index(key: Any) -> int | None:
    """The global pair index of a WebDataset key (``0000000012`` -> 12), None for anything else."""
    return int(key) if isinstance(key, str) and _KEY_RE.fullmatch(key) else None


def printable(text: str, limit: int = 120) -> str:
    """``text`` safe to print on one line: control characters, newlines and undecodable
    bytes escaped, cut to ``limit`` characters (member names and keys come from the data)."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    from .config import MAX_CLIP_SAMPLES

    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            # A header may claim any length: check it before allocating for it.
            if sound.channels != 1:
                raise FormatError(f"audio must be mono, got {sound.channels} channels")
            if not 0 <= sound.frames <= MAX_CLIP_SAMPLES:
                raise FormatError(f"audio claims {sound.frames} samples, more than a clip may hold ({MAX_CLIP_SAMPLES})")
            waveform = sound.read(dtype="float32")
            sample_rate = sound.samplerate
    except FormatError:
        raise
    except Exception as error:  # soundfile raises several types for damaged bytes
        raise FormatError(f"undecodable audio ({one_line(error)[:200]})") from None
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
        raise FormatError(f"undecodable audio ({one_line(error)[:200]})") from None
    if decoded != len(out):
        raise FormatError(f"undecodable audio ({decoded} of {len(out)} samples decoded)")
    out *= np.float32(gain)
    return out, int(sample_rate)


# --- samples -------------------------------------------------------------------------


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


# Limits on JSON read from a dataset, so that hostile input costs bounded memory and no
# recursion: the deepest object we write (a multi-layer sample, a manifest's record) is 4
# levels deep; a sample's JSON is a few kB (16 layers of ~100 parameters: about 100 kB);
# a manifest holds about 300 bytes a shard.
MAX_JSON_DEPTH = 32
MAX_SAMPLE_JSON_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_STATS_BYTES = 1 << 20
# A stored clip's gain is its peak: a synth's is of order 1, a recording's at most 1.
MAX_GAIN = 1e6


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def parse_json(data: bytes | str, max_bytes: int, finite_floats: bool = True) -> Any:
    """Parse JSON read from a dataset; FormatError (one line) unless it is UTF-8 JSON of at
    most ``max_bytes`` bytes, nested at most ``MAX_JSON_DEPTH`` deep, without NaN or
    Infinity (and, with ``finite_floats``, without numbers that overflow to infinity)."""
    if len(data) > max_bytes:
        raise FormatError(f"JSON of {len(data)} bytes, more than the {max_bytes} allowed")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float if finite_floats else None)
    except RecursionError:
        raise FormatError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, refused numbers, int digit limit
        raise FormatError(f"invalid JSON ({one_line(error)[:200]})") from None
    # Depth can exceed the limit only with more opening brackets than the limit, so the
    # walk below is skipped for every sample we write.
    if isinstance(value, (dict, list)) and text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > MAX_JSON_DEPTH:
                raise FormatError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, (dict, list)):
                    stack.append((child, depth + 1))
    return value


def read_json_file(path: str | os.PathLike, max_bytes: int) -> Any:
    """:func:`parse_json` of a file, read in blocks: a file over ``max_bytes`` is refused
    having cost at most that much memory. OSError passes through."""
    blocks, size = [], 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            size += len(block)
            if size > max_bytes:
                raise FormatError(f"JSON of more than the {max_bytes} bytes allowed")
            blocks.append(block)
    return parse_json(b"".join(blocks), max_bytes)


REQUIRED_SAMPLE_FIELDS = ("index", "seed", "gain", "params")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_sample_json(data: bytes) -> dict:
    """A sample's ``.json`` member as a dict; FormatError (one line) unless it is a JSON
    object (within :func:`parse_json`'s limits) with FORMAT.md's fields, a whole
    non-negative ``index`` and ``seed``, and two gains in (0, ``MAX_GAIN``]."""
    meta = parse_json(data, MAX_SAMPLE_JSON_BYTES, finite_floats=False)
    if not isinstance(meta, dict):
        raise FormatError("sample JSON is not an object")
    missing = [field for field in REQUIRED_SAMPLE_FIELDS if field not in meta]
    if missing:
        raise FormatError(f"sample JSON lacks {', '.join(missing)}")
    for field in ("index", "seed"):
        value = meta[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise FormatError(f"sample JSON {field} must be a whole number >= 0, got {_shown(value)}")
    gain = meta["gain"]
    if not (isinstance(gain, list) and len(gain) == 2 and all(_is_number(g) and 0 < g <= MAX_GAIN for g in gain)):
        raise FormatError(f"sample JSON gain must be [gain_a, gain_b], two numbers in (0, {MAX_GAIN:g}], got {_shown(gain)}")
    return meta


def _shown(value: Any) -> str:
    from .config import shown

    return shown(value)


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
    ``out``: two rows the views are decoded into (see :func:`decode_clip`). Any problem
    with the sample (a member missing, bad JSON or gain, undecodable audio) is a one-line
    FormatError naming the key, so a reader can skip the sample and count it."""
    name = printable(key)
    if "json" not in members:
        raise FormatError(f"{name}: missing {name}.json")
    try:
        meta = parse_sample_json(members["json"])
    except FormatError as error:
        raise FormatError(f"{name}.json: {error}") from None
    views = []
    for view, gain, row in zip("ab", meta["gain"], out or (None, None)):
        data = members.get(f"{view}.flac", members.get(f"{view}.wav"))
        if data is None:
            raise FormatError(f"{name}: missing {name}.{view}.flac")
        try:
            views.append(decode_clip(data, gain, out=row))
        except FormatError as error:
            raise FormatError(f"{name}.{view}: {error}") from None
    (a, sr_a), (b, sr_b) = views
    if sr_a != sr_b or a.shape != b.shape:
        raise FormatError(f"{name}: the two views differ in sample rate or length")
    return Pair(key=key, a=a, b=b, sample_rate=sr_a, meta=meta)


# A member of a pair shard is a clip (at most MAX_CLIP_SAMPLES float32 samples, with
# headers) or a sample's JSON; anything larger is refused before it is read.
MAX_MEMBER_BYTES = 64 << 20


class _FileWithinItsSize:
    """A binary file that never reads or seeks past its end. tarfile reads a header's
    claimed size in one ``read(n)``, and Python allocates ``n`` bytes before reading: a
    hostile size field cost 24 GB of address space, or an OverflowError in seek."""

    mode = "rb"

    def __init__(self, handle, size: int):
        self.handle, self.size, self.name = handle, size, getattr(handle, "name", None)

    def read(self, n: int | None = -1) -> bytes:
        remaining = max(0, self.size - self.handle.tell())
        return self.handle.read(remaining if n is None or n < 0 else min(n, remaining))

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            offset = min(max(offset, 0), self.size)
        elif whence == os.SEEK_CUR:
            offset, whence = min(max(self.handle.tell() + offset, 0), self.size), os.SEEK_SET
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


def iter_tar_members(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """``(member name, bytes)`` of the regular files of a tar, in tar order; links,
    folders and other kinds are passed over. A damaged tar, a member past the end of
    the file, a sparse member or one over ``MAX_MEMBER_BYTES`` raises FormatError, so
    memory is bounded by what is on disk."""
    shard = printable(os.path.basename(path))
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            archive = tarfile.open(fileobj=_FileWithinItsSize(handle, file_size), mode="r:")
            for info in archive:
                if not info.isfile():
                    continue
                name = printable(info.name)
                if info.issparse() or info.size > MAX_MEMBER_BYTES:
                    raise FormatError(f"{shard}: {name} claims {info.size} bytes (sparse or over {MAX_MEMBER_BYTES})")
                if info.offset_data + info.size > file_size:
                    raise FormatError(f"{shard}: {name} is truncated")
                extracted = archive.extractfile(info)
                data = extracted.read() if extracted is not None else b""
                if len(data) != info.size:
                    raise FormatError(f"{shard}: {name} is truncated")
                yield info.name, data
    except (tarfile.TarError, EOFError, OSError) as error:
        raise FormatError(f"{shard}: unreadable tar ({one_line(error)[:200]})") from None


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
    """Load and check ``folder/manifest.json`` (:func:`check_manifest`); raises
    FormatError with one line."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise FormatError(f"{folder}: no {MANIFEST_NAME} (not a finished pair dataset)")
    try:
        manifest = read_json_file(path, MAX_MANIFEST_BYTES)
    except OSError as error:
        raise FormatError(f"{path}: unreadable manifest ({error.strerror or error})") from None
    except FormatError as error:
        raise FormatError(f"{path}: unreadable manifest ({error})") from None
    return check_manifest(manifest, str(path))


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest's bytes (read from a URL, say) parsed and checked: FormatError naming
    ``where`` unless :func:`parse_json` and :func:`check_manifest` accept them."""
    try:
        manifest = parse_json(data, MAX_MANIFEST_BYTES)
    except FormatError as error:
        raise FormatError(f"{where}: unreadable manifest ({error})") from None
    return check_manifest(manifest, where)


def check_manifest(manifest: Any, where: str) -> dict:
    """Check a parsed manifest before anyone relies on it; raises FormatError naming
    ``where`` and the field. Checked: the format version; every recipe number present
    lies in its range (``config.RECIPE_BOUNDS``; ``sample_rate``, ``duration``,
    ``pairs_per_shard`` and ``n_shards`` are required) and the sizes fit the limits;
    the codec; and, when the record lists shards, each entry's ``name`` is exactly
    ``pairs-NNNNNN.tar`` for an index below ``n_shards``, listed once, with a whole
    ``n_pairs`` in [0, pairs_per_shard] and, if present, a whole ``bytes`` and a
    64-digit hex ``sha256``."""
    from .config import RECIPE_BOUNDS, recipe_number_problem, recipe_size_problem

    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    if not isinstance(recipe, dict):
        raise FormatError(f"{where}: manifest has no recipe object")
    version = recipe.get("format")
    if isinstance(version, bool) or version not in SUPPORTED_FORMATS:
        raise FormatError(f"{where}: unknown format version {_shown(version)} (this reader knows {SUPPORTED_FORMATS})")
    required = ("sample_rate", "duration", "pairs_per_shard", "n_shards")
    for field in RECIPE_BOUNDS:
        if field in recipe or field in required:
            problem = recipe_number_problem(field, recipe.get(field))
            if problem:
                raise FormatError(f"{where}: {problem}")
    problem = recipe_size_problem(recipe["sample_rate"], recipe["duration"], recipe["pairs_per_shard"], recipe["n_shards"])
    if problem:
        raise FormatError(f"{where}: {problem}")
    if "codec" in recipe and recipe["codec"] not in CODECS:
        raise FormatError(f"{where}: unknown codec {_shown(recipe['codec'])}: expected one of {', '.join(CODECS)}")
    _check_recipe_objects(recipe, where)
    record = manifest.get("record")
    if record is not None and not isinstance(record, dict):
        raise FormatError(f"{where}: the manifest's record is not an object")
    if record:
        _check_record_fields(record, where)
        if record.get("shards") is not None:
            _check_shard_entries(record["shards"], recipe["n_shards"], recipe["pairs_per_shard"], where)
    return manifest


def _check_recipe_objects(recipe: dict, where: str) -> None:
    """The recipe's non-numeric fields have the kinds FORMAT.md gives them."""
    synth = recipe.get("synth")
    if synth is not None and not isinstance(synth, str):
        if not (isinstance(synth, dict) and isinstance(synth.get("name", ""), str) and isinstance(synth.get("args") or {}, dict)):
            raise FormatError(f"{where}: recipe.synth must be a name or an object with a name and args, got {_shown(synth)}")
    for field in ("source", "rng"):
        if recipe.get(field) is not None and not isinstance(recipe[field], dict):
            raise FormatError(f"{where}: recipe.{field} must be an object, got {_shown(recipe[field])}")
    jitter, max_n = recipe.get("temporal_jitter", False), recipe.get("max_n")
    if not isinstance(jitter, bool) or (max_n is not None and (isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1)):
        raise FormatError(f"{where}: recipe.temporal_jitter must be true or false and max_n a whole number >= 1 or null")


# The kind each record field must have where present (FORMAT.md ``record``), so that
# readers can format them without looking twice.
_RECORD_FIELDS = {
    "param_names": (list, "a list"), "software": (dict, "an object"), "platform": (dict, "an object"),
    "created": (str, "text"), "render_seconds": ((int, float), "a number"), "skipped": (list, "a list"),
    "n_skipped": (int, "a whole number"),
}


def _check_record_fields(record: dict, where: str) -> None:
    for field, (kind, described) in _RECORD_FIELDS.items():
        value = record.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise FormatError(f"{where}: record.{field} must be {described}, got {_shown(value)}")
    for field in ("render_seconds", "n_skipped"):
        value = record.get(field)
        if value is not None and not 0 <= value < math.inf:
            raise FormatError(f"{where}: record.{field} must be >= 0, got {_shown(value)}")
    for field in ("software", "platform"):
        for key, value in (record.get(field) or {}).items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
                raise FormatError(f"{where}: record.{field}.{printable(key, 40)} must be text or a number, got {_shown(value)}")


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _check_shard_entries(shards: Any, n_shards: int, pairs_per_shard: int, where: str) -> None:
    if not isinstance(shards, list):
        raise FormatError(f"{where}: record.shards is not a list")
    seen = set()
    for position, entry in enumerate(shards):
        at = f"{where}: record.shards[{position}]"
        if not isinstance(entry, dict):
            raise FormatError(f"{at} is not an object")
        name = entry.get("name")
        index = shard_index(name)
        if index is None:
            raise FormatError(f"{at}.name must be pairs-NNNNNN.tar with no folder, got {_shown(name)}")
        if name in seen:
            raise FormatError(f"{at}: {name} is listed twice")
        if index >= n_shards:
            raise FormatError(f"{at}: {name} is outside the recipe's {n_shards} shards")
        seen.add(name)
        n_pairs = entry.get("n_pairs")
        if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or not 0 <= n_pairs <= pairs_per_shard:
            raise FormatError(f"{at}: n_pairs of {name} must be a whole number in [0, {pairs_per_shard}], got {_shown(n_pairs)}")
        size = entry.get("bytes", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise FormatError(f"{at}: bytes of {name} must be a whole number >= 0, got {_shown(size)}")
        digest = entry.get("sha256", "0" * 64)
        if not (isinstance(digest, str) and _SHA256_RE.fullmatch(digest)):
            raise FormatError(f"{at}: sha256 of {name} must be 64 hex digits, got {_shown(digest)}")


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
