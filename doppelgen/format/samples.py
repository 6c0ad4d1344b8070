"""One sample, one doppelgänger pair: its JSON's fields checked and its two views decoded."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from doppelgen.format.audio import decode_clip
from doppelgen.format.json_data import MAX_GAIN, MAX_SAMPLE_JSON_BYTES, is_number, is_whole_number, parse_json, unfit_number
from doppelgen.format.limits import shown
from doppelgen.format.names import FormatError

REQUIRED_SAMPLE_FIELDS = ("index", "seed", "gain", "params")


def parse_sample_json(data: bytes) -> dict:
    """A sample's ``.json`` member as a dict; FormatError (one line) unless it is a JSON
    object (within :func:`parse_json`'s limits) with docs/FORMAT.md's fields, a whole
    non-negative ``index`` and ``seed``, and two gains in (0, ``MAX_GAIN``]."""
    meta = parse_json(data, MAX_SAMPLE_JSON_BYTES, finite_floats=False)
    if not isinstance(meta, dict):
        raise FormatError("sample JSON is not an object")
    missing = [field for field in REQUIRED_SAMPLE_FIELDS if field not in meta]
    if missing:
        raise FormatError(f"sample JSON lacks {', '.join(missing)}")
    for field in ("index", "seed"):
        value = meta[field]
        if not is_whole_number(value) or value < 0:
            raise FormatError(f"sample JSON {field} must be a whole number >= 0, got {shown(value)}")
    gain = meta["gain"]
    if not (isinstance(gain, list) and len(gain) == 2 and all(is_number(g) and 0 < g <= MAX_GAIN for g in gain)):
        raise FormatError(f"sample JSON gain must be [gain_a, gain_b], two numbers in (0, {MAX_GAIN:g}], got {shown(gain)}")
    return meta


def sample_params(meta: dict) -> dict[str, np.ndarray]:
    """A sample's ``params`` ``base``, ``a`` and ``b`` as float64 arrays of one length;
    FormatError (one line) unless each is a list of finite numbers."""
    params = meta.get("params")
    if not (isinstance(params, dict) and all(isinstance(params.get(part), list) for part in ("base", "a", "b"))):
        raise FormatError("params must be an object with lists base, a and b")
    for part in ("base", "a", "b"):
        values = params[part]
        if not all(is_number(v) for v in values) or unfit_number(values, part) is not None:
            raise FormatError(f"params.{part} must be a list of finite numbers")
    if not len(params["base"]) == len(params["a"]) == len(params["b"]):
        raise FormatError("params.base, a and b differ in length")
    return {part: np.asarray(params[part], dtype=np.float64) for part in ("base", "a", "b")}


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
    name = shown(key, 120, quoted=False)
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
