"""JSON read from a dataset: canonical dumps, size, depth and number limits, and the one number check."""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

from doppelgen.console import one_line
from doppelgen.files import open_regular_file
from doppelgen.format.names import FormatError


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def recipe_sha256(recipe: dict) -> str:
    """A recipe's identity: the sha256 of its canonical JSON, so equal recipes hash alike
    (``Recipe.sha256``; a packed dataset's or an IR set's recipe object)."""
    return hashlib.sha256(dump_json(recipe)).hexdigest()


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps(value, **options)`` as strict JSON: a NaN or infinite number becomes
    null. Python writes bare ``NaN`` and ``Infinity`` by default, which is not JSON (RFC
    8259) and which other readers refuse; every report, log and record a command writes
    goes through here."""
    return json.dumps(_finite_or_null(value), allow_nan=False, **options)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


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
# Integers read from a dataset must fit an int64, so every number converts to a finite
# float and sums of counts stay finite.
INT64_LIMIT = 2**63


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (JSON's true is Python's 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_whole_number(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def unfit_number(value: Any, where: str) -> str | None:
    """The path of the first NaN, infinite or out-of-range number inside ``value``
    (``recipe.duration``, ``record.shards[2].peak``), None if there is none. Integers must
    fit an int64 (``INT64_LIMIT``). Walks without recursion, so any nesting the JSON
    parser accepted is safe here."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path
        if isinstance(item, int) and not -INT64_LIMIT <= item < INT64_LIMIT:
            return path
        if isinstance(item, dict):
            stack.extend((v, f"{path}.{k}") for k, v in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


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
    having cost at most that much memory. OSError passes through (also for a FIFO or a
    device, which are never opened for reading: a FIFO would block)."""
    blocks, size = [], 0
    with open_regular_file(path) as handle:
        while block := handle.read(1 << 20):
            size += len(block)
            if size > max_bytes:
                raise FormatError(f"JSON of more than the {max_bytes} bytes allowed")
            blocks.append(block)
    return parse_json(b"".join(blocks), max_bytes)
