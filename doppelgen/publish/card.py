"""``doppelgen card``: a Hugging Face dataset card (``README.md``) for a finished dataset.

The YAML header is what the Hub reads: license, task categories, size category, the
data files (``configs``) and the features. Features are declared, not inferred, because
the Hub's ``webdataset`` builder would otherwise type ``*.flac`` members as ``Audio``
and need an audio decoder to read them; declared as ``binary`` they arrive as the
stored FLAC bytes (with the JSON's ``gain`` still to apply), and the JSON as a struct.
The body holds the recipe, statistics, every shard's sha256 and how to load the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from doppelgen.console import InputError
from doppelgen.format import AUDIO_MEMBERS, FormatError, Manifest, codec_info, read_manifest
from doppelgen.hub import license_problem
from doppelgen.paper import PAPER_CITATION
from doppelgen.publish.info import describe_dataset, human_bytes, human_duration
from doppelgen.storage import open_store

CARD_NAME = "README.md"
TASK_CATEGORIES = ["audio-classification", "feature-extraction"]
DATA_FILES = "pairs-*.tar"
# The Hub's size_categories buckets, upper bounds exclusive.
SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]


class CardError(InputError):
    """The card cannot be written; the message is one line."""


def size_category(n: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1B"


# Functions, not constants: yaml.safe_dump writes one object used twice as an anchor and
# an alias (&id001 / *id001); a fresh dict each time keeps the header plain YAML.
def float_list() -> dict:
    return {"list": "float64"}


def params_struct() -> dict:
    return {"struct": [{"name": part, **float_list()} for part in ("base", "a", "b")]}


def json_features(manifest: Manifest) -> list[dict]:
    """The sample JSON as a struct (docs/FORMAT.md's fields, plus ``layers`` or the
    kind's own fields, such as a packed pair's source).

    A struct must name every field its rows hold, so the list follows the recipe."""
    fields = [
        {"name": "index", "dtype": "int64"},
        {"name": "seed", "dtype": "int64"},
        {"name": "gain", **float_list()},
        {"name": "params", **params_struct()},
    ]
    fields += [{"name": name, "dtype": dtype} for name, dtype in manifest.kind.sample_fields]
    if manifest.kind.layered_params and manifest.n_layers > 1:
        fields.append({"name": "layers", "list": params_struct()["struct"]})
    return fields


def features(manifest: Manifest) -> list[dict]:
    """``dataset_info.features`` in the Hub's YAML form: the views as binary FLAC bytes."""
    extension = codec_info(manifest.codec).extension
    views = [member.replace("flac", extension) for member in AUDIO_MEMBERS]
    return [
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
        *({"name": view, "dtype": "binary"} for view in views),
        {"name": "json", "struct": json_features(manifest)},
    ]


def card_header(desc: dict[str, Any], manifest: Manifest, license: str | None = None, pretty_name: str | None = None) -> dict:
    totals, kind = desc["totals"], manifest.kind
    return {
        "license": license or kind.license,
        "task_categories": list(TASK_CATEGORIES),
        "tags": ["audio", "contrastive-learning", "webdataset", *kind.tags],
        "size_categories": [size_category(totals["pairs"])],
        "pretty_name": pretty_name or kind.card_title(manifest.recipe),
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES}]}],
        "dataset_info": {
            "features": features(manifest),
            "splits": [{"name": "train", "num_bytes": totals["bytes"], "num_examples": totals["pairs"]}],
            "download_size": totals["bytes"],
            "dataset_size": totals["bytes"],
        },
    }


def shard_brace(n_shards: int) -> str:
    return "pairs-{000000..%06d}.tar" % (n_shards - 1) if n_shards > 1 else "pairs-000000.tar"


def card_body(desc: dict[str, Any], manifest: Manifest, title: str) -> str:
    recipe, totals, stats = desc["recipe"], desc["totals"], desc["shard_stats"]
    shards, kind = manifest.shards or (), manifest.kind
    what = kind.card_summary(recipe, desc["skipped_files"])
    stat_rows = "\n".join(
        f"| {name} | {s['min']:.6g} | {s['mean']:.6g} | {s['max']:.6g} |" for name, s in stats.items() if s is not None
    )
    sha_rows = "\n".join(f"| {s.name} | {s.n_pairs} | {s.bytes} | `{s.sha256}` |" for s in shards)
    software = ", ".join(f"{k} {v}" for k, v in desc["software"].items() if v is not None)
    platform = desc["platform"]
    brace = shard_brace(len(shards))
    recipe_note, params_meaning = kind.card_recipe_note, kind.card_params_meaning
    codec = codec_info(manifest.codec)
    view_ext, coding = codec.extension, codec.coding
    return f"""# {title}

{what}

- **{totals['pairs']:,} pairs** in {totals['shards']} WebDataset shards, {human_duration(totals['hours'])} of audio \
({human_duration(totals['pair_hours'])} per view), {human_bytes(totals['bytes'])}.
- Format: [pair-shard format version {recipe.get('format')}](#format) (`manifest.json` holds the full recipe and record).
- Rendered with {software} on {platform.get('backend', '?')} ({platform.get('device_kind', '?')}), {desc.get('created')}.

## Recipe

{recipe_note}

```json
{json.dumps(recipe, indent=2, allow_nan=False)}
```

## Statistics per shard

| statistic | min | mean | max |
| --- | --- | --- | --- |
{stat_rows}

## Format

Each sample is one pair with key `{{index:010d}}` and three members: `a.{view_ext}` and `b.{view_ext}`, the two
views (mono, {recipe.get('sample_rate')} Hz, {coding}), and `json`
with `index`, `seed`, `gain` = `[gain_a, gain_b]` and `params` (`base`, `a`, `b`: {params_meaning}).
**Multiply each decoded view by its gain** to get the waveform.

## Load it

With `doppeltrain` (reads `manifest.json`, streams, applies the gains):

```bash
doppeltrain fit path/to/this/folder
```

With `webdataset`:

```python
import io, json
import soundfile as sf
import webdataset as wds

dataset = wds.WebDataset("path/to/this/folder/{brace}", shardshuffle=False)
for sample in dataset:
    meta = json.loads(sample["json"])
    a, sr = sf.read(io.BytesIO(sample["a.{view_ext}"]), dtype="float32")
    b, _ = sf.read(io.BytesIO(sample["b.{view_ext}"]), dtype="float32")
    a, b = a * meta["gain"][0], b * meta["gain"][1]
```

With Hugging Face `datasets` (the card declares the views as binary, so no audio decoder is needed):

```python
import io
import soundfile as sf
from datasets import load_dataset

pairs = load_dataset("path/to/this/folder", split="train")  # or "user/name" on the Hub
pair = pairs[0]
a, sr = sf.read(io.BytesIO(pair["a.{view_ext}"]), dtype="float32")
a = a * pair["json"]["gain"][0]
```

Check the download against this card and the manifest with `doppelgen verify path/to/this/folder`.

## Files

<details><summary>sha256 of every shard</summary>

| shard | pairs | bytes | sha256 |
| --- | --- | --- | --- |
{sha_rows}

</details>

## Citation

{PAPER_CITATION}"""


def write_card(folder: str | os.PathLike, *, license: str | None = None, title: str | None = None) -> Path | str:
    """Write ``folder/README.md`` for the finished dataset in ``folder`` (a path or URL);
    returns its path (its URL for an object store)."""
    if license is not None and license_problem(license):
        raise CardError(license_problem(license))
    store = open_store(folder)
    try:
        manifest = read_manifest(store)
        desc = describe_dataset(store)
    except FormatError as error:
        raise CardError(str(error)) from None
    if not desc["totals"]["pairs"]:
        raise CardError(f"{store.location}: the manifest records no pairs")
    header = card_header(desc, manifest, license=license, pretty_name=title)
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"
    text += card_body(desc, manifest, header["pretty_name"])
    path = store.folder / CARD_NAME if store.local else store.where(CARD_NAME)
    try:
        store.put(CARD_NAME, text.encode("utf-8"))
    except OSError as error:
        raise CardError(f"cannot write {path}: {error.strerror or error}") from None
    return path
