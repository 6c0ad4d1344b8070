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

from doppelgen.paper import PAPER, PAPER_CITATION
from doppelgen.format import AUDIO_MEMBERS, FormatError, audio_extension, is_packed_recipe
from doppelgen.hub import license_problem
from doppelgen.publish.info import describe_dataset, human_bytes, human_duration, read_described_manifest
from doppelgen.storage import open_store

CARD_NAME = "README.md"
SYNTH_LICENSE = "cc-by-4.0"
# Packed recordings keep their source's license, which this tool cannot know.
PACKED_LICENSE = "other"
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


class CardError(ValueError):
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


def json_features(recipe: dict) -> list[dict]:
    """The sample JSON as a struct (docs/FORMAT.md's fields, plus ``layers`` or the source).

    A struct must name every field its rows hold, so the list follows the recipe."""
    fields = [
        {"name": "index", "dtype": "int64"},
        {"name": "seed", "dtype": "int64"},
        {"name": "gain", **float_list()},
        {"name": "params", **params_struct()},
    ]
    if is_packed_recipe(recipe):
        fields += [{"name": "source", "dtype": "string"}, {"name": "file_index", "dtype": "int64"}]
    elif int(recipe.get("n_layers", 1)) > 1:
        fields.append({"name": "layers", "list": params_struct()["struct"]})
    return fields


def features(recipe: dict) -> list[dict]:
    """``dataset_info.features`` in the Hub's YAML form: the views as binary FLAC bytes."""
    extension = audio_extension(recipe.get("codec", "flac"))
    views = [member.replace("flac", extension) for member in AUDIO_MEMBERS]
    return [
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
        *({"name": view, "dtype": "binary"} for view in views),
        {"name": "json", "struct": json_features(recipe)},
    ]


def card_header(desc: dict[str, Any], license: str | None = None, pretty_name: str | None = None) -> dict:
    recipe, totals = desc["recipe"], desc["totals"]
    packed = is_packed_recipe(recipe)
    return {
        "license": license or (PACKED_LICENSE if packed else SYNTH_LICENSE),
        "task_categories": list(TASK_CATEGORIES),
        "tags": ["audio", "contrastive-learning", "webdataset"] + (["real-audio"] if packed else ["synthetic", "synthesizer"]),
        "size_categories": [size_category(totals["pairs"])],
        "pretty_name": pretty_name or default_title(recipe),
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES}]}],
        "dataset_info": {
            "features": features(recipe),
            "splits": [{"name": "train", "num_bytes": totals["bytes"], "num_examples": totals["pairs"]}],
            "download_size": totals["bytes"],
            "dataset_size": totals["bytes"],
        },
    }


def default_title(recipe: dict) -> str:
    if is_packed_recipe(recipe):
        return f"Real-audio pairs ({recipe['source'].get('name', 'recordings')})"
    synth = recipe.get("synth", {}).get("name", "?")
    return f"Synthetic audio doppelgängers: {synth}, delta {recipe.get('delta')}"


def shard_brace(n_shards: int) -> str:
    return "pairs-{000000..%06d}.tar" % (n_shards - 1) if n_shards > 1 else "pairs-000000.tar"


def card_body(desc: dict[str, Any], manifest: dict, title: str) -> str:
    recipe, totals, stats = desc["recipe"], desc["totals"], desc["shard_stats"]
    shards = manifest.get("record", {}).get("shards", [])
    packed = is_packed_recipe(recipe)
    duration = recipe.get("duration")
    what = (
        f"Pairs of {duration} s crops of real recordings at {recipe.get('sample_rate')} Hz, made by "
        "`doppelgen pack` as the real-data baseline: " + pack_description(recipe, desc["skipped_files"])
        if packed
        else f"Pairs of {duration} s sounds at {recipe.get('sample_rate')} Hz from the SynthAX `{recipe.get('synth', {}).get('name', '?')}` "
        f"synthesizer: each pair draws random synth parameters and renders two *doppelgängers* whose parameters are "
        f"the draw plus independent Gaussian noise of scale delta = {recipe.get('delta')} (in normalized [0, 1] "
        f"parameter space). Contrastive training on such pairs learns audio representations ({PAPER})."
    )
    stat_rows = "\n".join(
        f"| {name} | {s['min']:.6g} | {s['mean']:.6g} | {s['max']:.6g} |" for name, s in stats.items() if s is not None
    )
    sha_rows = "\n".join(f"| {s.get('name')} | {s.get('n_pairs')} | {s.get('bytes')} | `{s.get('sha256')}` |" for s in shards)
    software = ", ".join(f"{k} {v}" for k, v in desc["software"].items() if v is not None)
    platform = desc["platform"]
    brace = shard_brace(len(shards))
    recipe_note = (
        "How the recordings became pairs; packing the same recordings with it again gives the same shards."
        if packed
        else "Everything that determines the bytes of every pair; rendering it again with the same software on\n"
        "the same platform gives byte-identical shards (`doppelgen verify --rerender N` checks this)."
    )
    params_meaning = (
        "crop start times in seconds; `source` names the recording"
        if packed
        else "synth parameters in normalized [0, 1] space, in the order of `manifest.json`'s `record.param_names`"
    )
    codec = recipe.get("codec", "flac")
    view_ext = audio_extension(codec)
    coding = {
        "wav": "float32 WAV, gain 1",
        "flac16": "16-bit FLAC of the waveform divided by its gain",
    }.get(codec, "24-bit FLAC of the waveform divided by its gain")
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


def pack_description(recipe: dict, skipped: int) -> str:
    if recipe.get("n_layers", 1) > 1:
        how = f"each view is the sum of {recipe.get('n_layers')} random 1 s segments of one recording, renormalized"
    elif recipe.get("temporal_jitter"):
        how = "the two views are two independent random crops of the same recording"
    else:
        how = "both views are the same random crop (training augmentations make them differ)"
    unreadable = f" {skipped} unreadable recordings were skipped (listed in `manifest.json`)." if skipped else ""
    return f"{how}.{unreadable} The recordings' own license applies."


def write_card(folder: str | os.PathLike, *, license: str | None = None, title: str | None = None) -> Path | str:
    """Write ``folder/README.md`` for the finished dataset in ``folder`` (a path or URL);
    returns its path (its URL for an object store)."""
    if license is not None and license_problem(license):
        raise CardError(license_problem(license))
    store = open_store(folder)
    try:
        manifest = read_described_manifest(store)
        desc = describe_dataset(store)
    except FormatError as error:
        raise CardError(str(error)) from None
    if not desc["totals"]["pairs"]:
        raise CardError(f"{store.location}: the manifest records no pairs")
    header = card_header(desc, license=license, pretty_name=title)
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"
    text += card_body(desc, manifest, header["pretty_name"])
    path = store.folder / CARD_NAME if store.local else store.where(CARD_NAME)
    try:
        store.put(CARD_NAME, text.encode("utf-8"))
    except OSError as error:
        raise CardError(f"cannot write {path}: {error.strerror or error}") from None
    return path
