"""The pair-shard format, version 1 (``docs/FORMAT.md``): names, audio coding, samples.

This package is the contract between the writer (``doppelgen``) and the readers
(``doppeltrain``, ``doppelgen verify``). It imports neither JAX nor torch, so a reader
can use it without paying for either. Its modules, in the order data flows:

- ``limits``: the range of every recipe number and the sizes they imply, and the one
  way to show a value read from a dataset on one short line;
- ``names``: versions, codecs, and the names of shards, stats files, keys and members;
- ``audio``: a clip encoded (FLAC of the peak-normalized waveform, or float32 WAV) and decoded;
- ``json_data``: canonical JSON, and the size, depth and number limits on JSON read;
- ``samples``: one pair's JSON checked and its views decoded;
- ``tar_reading``: a shard's members and pairs, with memory bounded by the file;
- ``manifest_checks``: a dataset's manifest read and checked, and its complete shards.

Every public name is importable from here (``from doppelgen.format import decode_pair``).
"""

from doppelgen.format.audio import ROUND_TRIP_BOUNDS, decode_clip, encode_clip, float_wav, round_trip_bound
from doppelgen.format.json_data import (
    MAX_GAIN,
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_SAMPLE_JSON_BYTES,
    MAX_STATS_BYTES,
    dump_json,
    json_text,
    parse_json,
    read_json_file,
)
from doppelgen.format.manifest_checks import check_manifest, complete_shards, parse_manifest, read_manifest
from doppelgen.format.names import (
    AUDIO_MEMBERS,
    CODECS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SUPPORTED_FORMATS,
    TAR_MODE,
    TAR_MTIME,
    TAR_USER,
    FormatError,
    audio_extension,
    is_packed_recipe,
    member_names,
    n_samples,
    pair_index,
    pair_key,
    printable,
    shard_index,
    shard_name,
    split_member_name,
    stats_name,
)
from doppelgen.format.samples import REQUIRED_SAMPLE_FIELDS, Pair, decode_pair, parse_sample_json
from doppelgen.format.tar_reading import MAX_MEMBER_BYTES, iter_shard_pairs, iter_tar_members

__all__ = [
    "AUDIO_MEMBERS", "CODECS", "FORMAT_VERSION", "MANIFEST_NAME", "MAX_GAIN", "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES", "MAX_MEMBER_BYTES", "MAX_SAMPLE_JSON_BYTES", "MAX_STATS_BYTES",
    "REQUIRED_SAMPLE_FIELDS", "ROUND_TRIP_BOUNDS", "SUPPORTED_FORMATS", "TAR_MODE", "TAR_MTIME", "TAR_USER", "FormatError",
    "Pair", "audio_extension", "check_manifest", "complete_shards", "decode_clip", "decode_pair",
    "dump_json", "encode_clip", "json_text", "float_wav", "is_packed_recipe", "iter_shard_pairs", "iter_tar_members",
    "member_names", "n_samples", "pair_index", "pair_key", "parse_json", "parse_manifest",
    "parse_sample_json", "printable", "read_json_file", "read_manifest", "round_trip_bound", "shard_index", "shard_name",
    "split_member_name", "stats_name",
]
