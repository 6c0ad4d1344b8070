"""The publishable model folder: ``doppeltrain export`` writes one from a checkpoint, and
every command that uses a model reads one.

The folder follows the Hugging Face Hub's conventions for a model repository:

- ``model.safetensors``: the network's state_dict (safetensors: tensors only, nothing
  to unpickle), metadata ``{"format": "pt"}``;
- ``config.json``: what a reader needs to rebuild the network and its input
  (``model``, ``frontend``), how it was trained (``training``, the rest of the
  ``TrainConfig``; ``trained``: epochs, steps and processes), the sha256 of each
  training dataset's manifest (``datasets``) and of ``model.safetensors``
  (``weights_sha256``, checked on every load);
- ``README.md``: the model card, a YAML header the Hub reads (library, tags, license,
  datasets when they are on the Hub) and a body saying how the model was trained and
  how to embed with it.

Upload it with ``hf upload USER/NAME OUT/``; ``hf download USER/NAME --local-dir DIR``
gives back a folder ``embed``, ``probe`` and ``doppeltrain.use.hear`` load as they load a
checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from doppelgen.console import one_line
from doppelgen.files import file_sha256, folder_writes, write_atomic
from doppelgen.format import FormatError, json_text, parse_json, read_json_file
from doppelgen.format.limits import shown
from doppelgen.hub import license_problem
from doppelgen.paper import PAPER_CITATION
from doppeltrain.checkpoint import (
    CheckpointError,
    config_from_state,
    load_checkpoint,
    network_with_weights,
)
from doppeltrain.config import TrainConfig
from doppeltrain.model_limits import weights_problem

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FOLDER_FILES = (MODEL_FILE, CONFIG_FILE, CARD_FILE)
FORMAT_NAME = "doppeltrain-embedding"
FORMAT_VERSION = 1
# A real config.json is a few kB: a larger one is refused before it is parsed.
MAX_CONFIG_BYTES = 1 << 20
# The paper's network's safetensors header is about 10 kB (names, dtypes, shapes, offsets).
MAX_SAFETENSORS_HEADER_BYTES = 1 << 20
DEFAULT_LICENSE = "cc-by-4.0"  # as `doppelgen card` gives the synthetic datasets
LIBRARY_NAME = "doppelgangers"  # the package whose model code and frontend read the folder
TAGS = ["audio", "embeddings", "contrastive-learning", "feature-extraction", "doppelgangers", "pytorch", "safetensors"]
PIPELINE_TAG = "feature-extraction"
# A dataset on the Hub: https://huggingface.co/datasets/OWNER/NAME/... or hf://datasets/OWNER/NAME...
HUB_DATASET = re.compile(r"^(?:https?://huggingface\.co/datasets/|hf://datasets/)([\w.-]+/[\w.-]+?)(?:@[^/]*)?(?:/|$)")


class ModelFolderError(CheckpointError):
    """A model folder cannot be written or read; the message is one line."""


def is_model_folder(path: Union[str, Path]) -> bool:
    """Whether `path` is meant as a model folder (a directory) rather than a checkpoint file."""
    return Path(path).is_dir()


# --- writing ---------------------------------------------------------------------------


@dataclass
class ExportResult:
    folder: Path
    files: list[Path]
    weights_sha256: str


def export_model(
    checkpoint: Union[str, Path],
    out: Union[str, Path],
    license: str = DEFAULT_LICENSE,
    title: Optional[str] = None,
    overwrite: bool = False,
) -> ExportResult:
    """What ``doppeltrain export`` does: write the model folder of `checkpoint` into `out`.

    The checkpoint's weights must load into the network its config describes. Files of
    an earlier export in `out` are replaced only with `overwrite`; other files there
    (e.g. a cloned Hub repository's ``.git``) are left alone. Each file is written
    atomically; ``weights_sha256`` ties ``config.json`` to ``model.safetensors``, so a
    folder left half-rewritten by a kill is refused on load, never silently mixed.
    """
    out = Path(out)
    if Path(checkpoint).is_dir():
        raise ModelFolderError(f"{checkpoint} is a folder: export reads a checkpoint file (e.g. runs/NAME/checkpoints/latest.pt)")
    if license_problem(license):
        raise ModelFolderError(license_problem(license))
    if out.exists() and not out.is_dir():
        raise ModelFolderError(f"{out} exists and is not a folder")
    existing = [name for name in FOLDER_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise ModelFolderError(f"{out} already holds {existing[0]} of an exported model: pass --overwrite to replace it")
    state = load_checkpoint(checkpoint)
    config = config_from_state(state["config"], checkpoint)
    network = network_with_weights(config, state["model"], checkpoint)  # refuses weights that do not fit
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    weights = save(tensors, metadata={"format": "pt"})
    digest = hashlib.sha256(weights).hexdigest()
    document = folder_config(config, state, digest)
    card = model_card(document, license=license, title=title)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / MODEL_FILE, out / CONFIG_FILE, out / CARD_FILE]
    # Two exports into one folder write their three files one after the other.
    with folder_writes(out):
        existing = [name for name in FOLDER_FILES if (out / name).exists()]
        if existing and not overwrite:
            raise ModelFolderError(f"{out} already holds {existing[0]} of an exported model: pass --overwrite to replace it")
        write_atomic(files[0], weights)
        write_atomic(files[1], (json_text(document, indent=2) + "\n").encode())
        write_atomic(files[2], card.encode("utf-8"))
    return ExportResult(out, files, digest)


def folder_config(config: TrainConfig, state: dict[str, Any], weights_sha256: str) -> dict[str, Any]:
    """``config.json``: the network, its frontend, the training config and provenance."""
    training = config.to_dict()
    model, frontend = training.pop("model"), training.pop("features")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "embedding_dim": config.model.embedding_dim,
        "sample_rate": config.features.sample_rate,
        "model": model,
        "frontend": frontend,
        "training": training,
        "trained": {"epochs": _plain_int(state.get("epoch")), "steps": _plain_int(state.get("step")),
                    "world_size": _plain_int(state.get("world_size"))},
        "datasets": {str(k): str(v) for k, v in dict(state.get("manifests") or {}).items()},
        "weights_sha256": weights_sha256,
    }


def _plain_int(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def hub_datasets(locations: list[str]) -> list[str]:
    """The Hub ids (``owner/name``) of the training datasets that live on the Hub."""
    ids = []
    for location in locations:
        found = HUB_DATASET.match(str(location))
        if found and found.group(1) not in ids:
            ids.append(found.group(1))
    return ids


def model_card(document: dict[str, Any], license: str = DEFAULT_LICENSE, title: Optional[str] = None) -> str:
    """``README.md``: YAML metadata for the Hub, then how the model was trained and used."""
    model = document["model"]
    locations = list(document["datasets"]) or list(document["training"]["data"]["datasets"])
    header: dict[str, Any] = {"library_name": LIBRARY_NAME, "license": license, "pipeline_tag": PIPELINE_TAG, "tags": list(TAGS)}
    on_hub = hub_datasets(locations)
    if on_hub:
        header["datasets"] = on_hub
    title = title or f"Doppelgänger audio embedding ({model['model']}, width {model['width']}, {model['embedding_dim']} dimensions)"
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"
    return text + _card_body(document, title)


def _card_body(document: dict[str, Any], title: str) -> str:
    training, model, frontend, trained = document["training"], document["model"], document["frontend"], document["trained"]
    optim, data, augment, loss = training["optim"], training["data"], training["augment"], training["loss"]
    world = trained["world_size"] or 1
    dataset_rows = "\n".join(f"| `{location}` | `{digest}` |" for location, digest in document["datasets"].items())
    lr = optim["lr"] if optim["lr"] is not None else "doppeltrain's default for the optimizer"
    decay = optim["weight_decay"] if optim["weight_decay"] is not None else "doppeltrain's default for the optimizer"
    epochs = f"{trained['epochs']} of {training['epochs']}" if trained["epochs"] is not None else f"schedule of {training['epochs']}"
    steps = trained["steps"] if trained["steps"] is not None else "unknown"
    return f"""# {title}

An audio embedding trained by contrastive learning on synthetic *doppelgänger* pairs
(Cherep & Singh, *Contrastive Learning from Synthetic Audio Doppelgängers*, ICLR 2025):
pairs of sounds rendered from nearly the same synthesizer parameters, pulled together by
an alignment loss while a uniformity loss spreads all embeddings over the unit sphere.

- **Network**: ResNet `{model['model']}` (torchvision BasicBlocks), first-stage width
  {model['width']}, one-channel input, **{model['embedding_dim']}-dimensional** output;
  embeddings are L2-normalized.
- **Input**: mono audio at **{frontend['sample_rate']} Hz**; log-mel frames of
  {frontend['window_length']} samples every {frontend['hop_length']}, {frontend['n_mels']} mel bands
  from {frontend['f_min']:g} to {frontend['f_max']:g} Hz, examples of {frontend['example_frames']} frames.
  A clip of any length is cut into such examples and its embedding is their mean.

## How it was trained

| | |
| --- | --- |
| epochs | {epochs} |
| optimizer steps | {steps} |
| batch | {data['batch_size']} pairs per process × {world} process(es) = {data['batch_size'] * world} pairs |
| pairs per epoch | {training['pairs_per_epoch'] if training['pairs_per_epoch'] is not None else 'one pass over the training shards'} |
| optimizer | {optim['optimizer']}, learning rate {lr}, weight decay {decay} |
| learning-rate schedule | × {optim['gamma']} after {', '.join(f'{m:g}' for m in optim['milestones'])} of the run |
| loss | alignment (α = {loss['alpha']}, weight {loss['align_weight']}) + uniformity (t = {loss['t']}, weight {loss['unif_weight']}) |
| augmentation | {augment['mode']} |
| seed | {training['seed']} |
| precision | {training['precision']} |

Training datasets, with the sha256 of each one's `manifest.json` (the recipe and the
digest of every shard; `doppelgen verify` checks a copy against it):

| dataset | manifest sha256 |
| --- | --- |
{dataset_rows or '| (not recorded) | |'}

The full training configuration is in `config.json` (`training`).

## How to embed

With the `doppelgangers` package installed, a local copy of this folder (e.g.
`hf download USER/NAME --local-dir model`) works wherever a checkpoint does.

```bash
doppeltrain embed model/ clips/ more.wav --out embeddings.npy   # + embeddings.txt, the paths
doppeltrain probe model/ labelled/ --baseline logmel             # linear probe on a labelled folder
```

```python
import soundfile as sf
from doppeltrain.use.inference import embed, load_model

model = load_model("model/")                 # frozen, eval mode; device="auto" by default
audio, sr = sf.read("clip.wav", dtype="float32", always_2d=True)
vector = embed(model, audio.mean(axis=1), sr)  # (1, {model['embedding_dim']}): any length, any rate
```

For the HEAR 2021 evaluation kit: `python -m heareval.embeddings.runner doppeltrain.use.hear --model model/`.

## Files

- `model.safetensors`: the network's state_dict (sha256 `{document['weights_sha256']}`).
- `config.json`: `model` and `frontend` rebuild the network and its input; `training` and
  `trained` record how it was trained; `datasets` the manifests' sha256.

## Citation

{PAPER_CITATION}"""


# --- reading ---------------------------------------------------------------------------


def read_folder_config(folder: Union[str, Path]) -> dict[str, Any]:
    """``config.json`` of a model folder, checked for format and version."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelFolderError(f"{folder}: not a model folder (no {CONFIG_FILE}; export one with doppeltrain export)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelFolderError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes, not a model config")
    try:
        # Bounded in size and depth, without NaN or Infinity (the dataset readers' parser).
        document = read_json_file(path, MAX_CONFIG_BYTES)
    except FormatError as error:
        raise ModelFolderError(f"{path}: unreadable JSON ({one_line(error)[:200]})") from None
    except OSError as error:
        raise ModelFolderError(f"{path}: unreadable ({one_line(error)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ModelFolderError(f"{path}: not a {FORMAT_NAME} config (its \"format\" must be {FORMAT_NAME!r})")
    if document.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(f"{path}: format_version {shown(document.get('format_version'))}, this doppeltrain reads {FORMAT_VERSION}")
    for key in ("model", "frontend", "training"):
        if not isinstance(document.get(key), dict):
            raise ModelFolderError(f"{path}: \"{key}\" must be an object")
    if not isinstance(document.get("weights_sha256"), str):
        raise ModelFolderError(f"{path}: no weights_sha256")
    return document


def load_model_folder(folder: Union[str, Path], device: Union[str, torch.device] = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The network of a model folder (eval mode, on `device`) and its TrainConfig, as
    :func:`doppeltrain.checkpoint.load_checkpoint_network` gives them for a checkpoint.

    ModelFolderError (one line) when a file is missing, damaged, or the weights do not
    match ``config.json``'s ``weights_sha256`` or its network.
    """
    folder = Path(folder)
    document = read_folder_config(folder)
    config = config_from_state({**document["training"], "model": document["model"], "features": document["frontend"]},
                               folder / CONFIG_FILE)
    # What a Hub reader sees first must be what the network and frontend are.
    for key, value in (("embedding_dim", config.model.embedding_dim), ("sample_rate", config.features.sample_rate)):
        if document.get(key) != value or isinstance(document.get(key), bool):
            where = "model" if key == "embedding_dim" else "frontend"
            raise ModelFolderError(f"{folder / CONFIG_FILE}: {key} {shown(document.get(key))} differs from {where}.{key} {value}")
    weights_path = folder / MODEL_FILE
    if not weights_path.is_file():
        raise ModelFolderError(f"{folder}: no {MODEL_FILE}")
    if file_sha256(weights_path)[0] != document["weights_sha256"]:
        raise ModelFolderError(f"{weights_path}: its sha256 differs from config.json's weights_sha256 (damaged or replaced)")
    # Names and shapes from the header first: tensors that do not fit are refused before
    # any of them, or the network, is allocated.
    problem = weights_problem(config.model, safetensors_shapes(weights_path))
    if problem:
        raise ModelFolderError(f"{weights_path}: its weights do not fit the configured model ({problem})")
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFolderError(f"{weights_path}: unreadable safetensors ({one_line(error)[:200]})") from None
    network = network_with_weights(config, weights, weights_path)
    return network.to(device).eval(), config


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a safetensors file declares, read from its header
    alone (8 bytes of length, then that much JSON), bounded before it is read;
    ModelFolderError ("unreadable safetensors", one line) when the header is not one."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 2 <= length <= min(MAX_SAFETENSORS_HEADER_BYTES, size - 8):
                raise ModelFolderError(f"{path}: unreadable safetensors (its header length {shown(length)} is not "
                                       f"2..{MAX_SAFETENSORS_HEADER_BYTES} bytes within the file)")
            text = handle.read(length)
    except OSError as error:
        raise ModelFolderError(f"{path}: unreadable ({one_line(error, path)})") from None
    try:
        header = parse_json(text, MAX_SAFETENSORS_HEADER_BYTES)
    except FormatError as error:
        raise ModelFolderError(f"{path}: unreadable safetensors (header: {error})") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path}: unreadable safetensors (its header is not a JSON object)")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ModelFolderError(f"{path}: unreadable safetensors (tensor {shown(name)} has no shape of whole numbers)")
        shapes[name] = tuple(shape)
    return shapes


def describe(result: ExportResult) -> str:
    """The line the CLI prints after an export."""
    names = ", ".join(path.name for path in result.files)
    return f"wrote {names} to {result.folder} (weights sha256 {result.weights_sha256[:16]}...)"

