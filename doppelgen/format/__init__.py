"""The pair-shard format, version 1 (``docs/FORMAT.md``): names, audio coding, samples.

This package is the contract between the writer (``doppelgen``) and the readers
(``doppeltrain``, ``doppelgen verify``). It imports neither JAX nor torch, so a reader
can use it without paying for either. Its modules, in the order data flows:

- ``limits``: the range of every recipe number and the sizes they imply, and the one
  way to show a value read from a dataset on one short line;
- ``names``: versions, and the names of shards, stats files, keys and members;
- ``audio``: the codec table; a clip encoded (FLAC of the peak-normalized waveform, or
  float32 WAV) and decoded;
- ``json_data``: canonical JSON, a recipe's sha256, the size, depth and number limits on
  JSON read, and the one number check;
- ``samples``: one pair's JSON checked and its views decoded;
- ``tar_reading``: a shard's members, grouped into samples and pairs, with memory
  bounded by the file;
- ``kinds``: the kinds of dataset (synthesized, packed) and what readers expect of each;
- ``manifest_checks``: a dataset's manifest read and checked once into a typed
  ``Manifest``; shard stats files and complete shards.

Every public name is importable from here (``from doppelgen.format import decode_pair``).
"""

from doppelgen.format.audio import (
    CODEC_TABLE,
    CODECS,
    Codec,
    audio_extension,
    codec_info,
    codecs_help,
    decode_clip,
    encode_clip,
    float_wav,
    round_trip_bound,
)
from doppelgen.format.json_data import (
    INT64_LIMIT,
    MAX_GAIN,
    MAX_JSON_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_SAMPLE_JSON_BYTES,
    MAX_STATS_BYTES,
    dump_json,
    is_number,
    is_whole_number,
    json_text,
    parse_json,
    read_json_file,
    recipe_sha256,
    unfit_number,
)
from doppelgen.format.kinds import DATASET_KINDS, PACKED, SYNTHESIZED, DatasetKind, dataset_kind
from doppelgen.format.limits import shown
from doppelgen.format.manifest_checks import (
    SHARD_STATS,
    Manifest,
    ShardEntry,
    check_manifest,
    complete_shards,
    parse_manifest,
    read_manifest,
    read_stats,
)
from doppelgen.format.names import (
    AUDIO_MEMBERS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SUPPORTED_FORMATS,
    TAR_MODE,
    TAR_MTIME,
    TAR_USER,
    FormatError,
    member_names,
    n_samples,
    pair_index,
    pair_key,
    shard_index,
    shard_name,
    split_member_name,
    stats_name,
)
from doppelgen.format.samples import REQUIRED_SAMPLE_FIELDS, Pair, decode_pair, parse_sample_json, sample_params
from doppelgen.format.tar_reading import MAX_MEMBER_BYTES, group_members, iter_shard_pairs, iter_tar_members

__all__ = [
    "AUDIO_MEMBERS", "CODECS", "CODEC_TABLE", "DATASET_KINDS", "FORMAT_VERSION", "INT64_LIMIT", "MANIFEST_NAME",
    "MAX_GAIN", "MAX_JSON_DEPTH", "MAX_MANIFEST_BYTES", "MAX_MEMBER_BYTES", "MAX_SAMPLE_JSON_BYTES", "MAX_STATS_BYTES",
    "PACKED", "REQUIRED_SAMPLE_FIELDS", "SHARD_STATS", "SUPPORTED_FORMATS", "SYNTHESIZED",
    "TAR_MODE", "TAR_MTIME", "TAR_USER", "Codec", "DatasetKind", "FormatError", "Manifest", "Pair", "ShardEntry",
    "audio_extension", "check_manifest", "codec_info", "codecs_help", "complete_shards", "dataset_kind", "decode_clip",
    "decode_pair", "dump_json", "encode_clip", "float_wav", "group_members", "is_number", "is_whole_number", "json_text",
    "iter_shard_pairs", "iter_tar_members", "member_names", "n_samples", "pair_index", "pair_key", "parse_json",
    "parse_manifest", "parse_sample_json", "read_json_file", "read_manifest", "read_stats", "recipe_sha256", "round_trip_bound", "sample_params",
    "shard_index", "shard_name", "shown", "split_member_name", "stats_name", "unfit_number",
]
