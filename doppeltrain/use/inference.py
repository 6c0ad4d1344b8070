r"""Use a trained model (a checkpoint or an exported model folder): load it and embed
clips of any length.

The network was trained on 1 s clips whose log-mel image is one 0.96 s example
(96 frames of 10 ms). A clip of any length is cut into examples on the waveform: 1 s
windows (exactly a training input) starting every 0.96 s, so the examples' 96-frame
images tile the clip without gaps or overlap. A last partial example is kept when it
holds at least half an example of audio; a clip shorter than one example is
zero-padded. Each example's embedding is L2-normalized, as in training, and a clip's
embedding is the mean over its examples.

`load_model` and `embed` are the notebook API; the ``embed`` command, the linear probe
and the HEAR module are built on them. Files are read in blocks (`audio_files`), so a
file's length costs time, not memory.

``embed`` writes the embeddings to a ``.npy`` and the files' paths, one per line, to a
``.txt`` beside it, each path written by `audio_files.path_text`: as is, unless it
holds a backslash (``\\``), a newline (``\n``), a carriage return (``\r``), another
control, line-separator or format character such as a bidi override (``\uHHHH``) or
bytes that are not UTF-8 (``\xHH``); `audio_files.path_from_text` reverses it. Row ``i`` of the ``.npy`` is
line ``i`` of the ``.txt``, whatever the names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from doppelgen.console import InputError
from doppelgen.files import atomic_writer, folder_writes, write_atomic
from doppeltrain import checkpoint as checkpoint_io
from doppeltrain.config import TrainConfig
from doppeltrain.distributed import resolve_device
from doppeltrain.features import LogMelFrontend, example_samples
from doppeltrain.use import model_folder
from doppeltrain.use.audio_files import (  # noqa: F401  (AudioReadError, load_audio, resample: the API of this module too)
    AudioReadError,
    check_readable,
    expand_inputs,
    load_audio,
    path_text,
    resample,
    stream_audio,
)

# 0.96 s examples per forward pass: small enough for a laptop, large enough for a GPU to
# matter less than file reading.
DEFAULT_BATCH_SIZE = 64

Waveforms = Union[torch.Tensor, np.ndarray, Sequence[Union[torch.Tensor, np.ndarray]]]


@dataclass(frozen=True)
class Framing:
    """How a clip is cut into the network's examples, in samples at the model's rate."""

    window: int  # samples one example reads: a training clip (1 s)
    hop: int  # samples between examples: 96 frames of 10 ms (0.96 s)
    centre: int  # offset of the middle of the 96 frames' span from a window's start


def framing_for(config: TrainConfig) -> Framing:
    """The framing that reproduces the training input of `config`."""
    f = config.features
    return Framing(window=f.sample_rate, hop=f.example_frames * f.hop_length, centre=example_samples(f) // 2)


class AudioEmbedder(nn.Module):
    """A frozen encoder behind the log-mel frontend: (N, window) waveforms -> (N, dim).

    `encoder` maps (N, 1, 96, 64) log-mel examples to vectors: the trained network, an
    untrained one, or log-mel statistics (see `doppeltrain.use.probe`). With `normalize`
    each example's vector is L2-normalized, as in training: the loss shaped directions
    on the unit sphere, and the network's raw norms carry no meaning.
    """

    def __init__(self, encoder: nn.Module, config: TrainConfig, embedding_dim: int, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize
        self.frontend = LogMelFrontend(config.features)
        self.config = config
        self.sample_rate = config.features.sample_rate
        self.embedding_dim = embedding_dim
        self.framing = framing_for(config)
        self.eval()

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        vectors = self.encoder(self.frontend(examples))
        return nn.functional.normalize(vectors, dim=1) if self.normalize else vectors


def load_network(source: Union[str, Path]) -> tuple[nn.Module, TrainConfig]:
    """The network (on the CPU, eval mode) and config of a checkpoint file or of a model
    folder written by ``doppeltrain export``; CheckpointError (one line) otherwise."""
    if model_folder.is_model_folder(source):
        return model_folder.load_model_folder(source, device="cpu")
    return checkpoint_io.load_checkpoint_network(source, device="cpu")


def load_model(checkpoint: Union[str, Path], device: str = "auto") -> AudioEmbedder:
    """The trained network of `checkpoint` (a checkpoint file, or a model folder written
    by ``doppeltrain export``) with its frontend, frozen in eval mode, on `device`
    ("auto": cuda, then mps, then cpu). CheckpointError if it is not one of ours; a
    checkpoint is never unpickled beyond tensors and plain data."""
    target = resolve_device(device)
    network, config = load_network(checkpoint)
    embedder = AudioEmbedder(network, config, config.model.embedding_dim)
    for parameter in embedder.parameters():
        parameter.requires_grad_(False)
    return embedder.to(target)


# --- framing ---------------------------------------------------------------------------


def count_examples(n_samples: int, hop: int) -> int:
    """Examples that cover a clip: each whole 0.96 s, plus a last partial one when it
    holds at least half an example of audio (so a 1.5 s clip keeps its tail and a 1.0 s
    clip is not averaged with a nearly silent window); never fewer than one."""
    whole, rest = divmod(n_samples, hop)
    return max(1, whole + (1 if 2 * rest >= hop else 0))


def frame(waveform: torch.Tensor, first_start: int, hop: int, count: int, window: int) -> torch.Tensor:
    """Windows ``[first_start + k * hop, ... + window)`` for k < count of (..., T) audio,
    zero outside the clip: (..., count, window). A view where no padding is needed."""
    last_end = first_start + (count - 1) * hop + window
    left = max(0, -first_start)
    right = max(0, last_end - waveform.shape[-1])
    if left or right:
        waveform = torch.nn.functional.pad(waveform, (left, right))
    start = first_start + left
    return waveform[..., start:start + (count - 1) * hop + window].unfold(-1, window, hop)


def clip_examples(waveform: torch.Tensor, framing: Framing) -> torch.Tensor:
    """(T,) -> (n_examples, window): the examples a clip's embedding averages."""
    count = count_examples(waveform.shape[-1], framing.hop)
    return frame(waveform, 0, framing.hop, count, framing.window)


class ExampleFramer:
    """:func:`clip_examples` of a clip that arrives in consecutive blocks: ``push`` returns
    the examples whose window has fully arrived, ``finish`` the rest (zero-padded), once
    the clip's length, hence its example count, is known. Together they are exactly
    ``clip_examples`` of the whole clip. Between calls it keeps less than one window
    of audio."""

    def __init__(self, framing: Framing):
        self.framing = framing
        self.buffer = torch.zeros(0)
        self.buffer_start = 0  # sample index of buffer[0]
        self.next_example = 0
        self.total = 0

    def push(self, samples: torch.Tensor) -> torch.Tensor:
        self.buffer = torch.cat([self.buffer, samples.float()])
        self.total += samples.shape[0]
        # A window that has fully arrived is always among the clip's examples: it ends
        # within the clip, so the clip holds at least that many whole hops.
        ready = max(0, (self.total - self.framing.window) // self.framing.hop + 1)
        return self._take(ready)

    def finish(self) -> torch.Tensor:
        return self._take(count_examples(self.total, self.framing.hop))

    def _take(self, count: int) -> torch.Tensor:
        if count <= self.next_example:
            return torch.zeros(0, self.framing.window)
        first = self.next_example * self.framing.hop - self.buffer_start
        examples = frame(self.buffer, first, self.framing.hop, count - self.next_example, self.framing.window).clone()
        self.next_example = count
        keep_from = self.next_example * self.framing.hop
        self.buffer = self.buffer[max(0, keep_from - self.buffer_start):].clone()
        self.buffer_start = max(self.buffer_start, keep_from)
        return examples


# --- embedding -------------------------------------------------------------------------


@torch.no_grad()
def encode_examples(model: AudioEmbedder, examples: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, window) -> (N, dim) float32 on the CPU, `batch_size` examples at a time."""
    outputs = [
        model(chunk.to(model.device, torch.float32).contiguous()).float().cpu()
        for chunk in examples.split(batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros(0, model.embedding_dim)


def embed_example_streams(
    model: AudioEmbedder, streams: Iterable[Iterable[torch.Tensor]], batch_size: int = DEFAULT_BATCH_SIZE,
) -> Iterator[torch.Tensor]:
    """Yield one (dim,) embedding per stream, in order: the mean of the vectors of its
    examples, which the stream gives as (n, window) blocks.

    Examples go to the network in batches of exactly `batch_size` (only the last may
    be smaller), across blocks and streams: a long file read in blocks costs as many
    forward passes as it has batches, never a leftover pass per block. About one batch
    of examples is held at once.
    """
    totals: dict[int, list] = {}  # stream -> [float64 sum of vectors, count]
    pending: list[tuple[int, torch.Tensor]] = []  # (stream, examples), oldest first
    finished: list[int] = []  # streams read to the end, not yet yielded

    def encode(count: int) -> None:
        taken, parts = 0, []
        while taken < count:
            index, examples = pending[0]
            use = min(count - taken, len(examples))
            parts.append((index, examples[:use]))
            if use == len(examples):
                pending.pop(0)
            else:
                pending[0] = (index, examples[use:])
            taken += use
        vectors = encode_examples(model, torch.cat([examples for _, examples in parts]), batch_size)
        for (index, examples), part in zip(parts, vectors.split([len(e) for _, e in parts])):
            totals[index][0] += part.double().sum(dim=0)
            totals[index][1] += len(examples)

    def completed() -> Iterator[torch.Tensor]:
        # A finished stream is complete when none of its examples wait: pending is in order.
        oldest_waiting = pending[0][0] if pending else None
        while finished and (oldest_waiting is None or finished[0] < oldest_waiting):
            vector_sum, count = totals.pop(finished.pop(0))
            yield (vector_sum / count).float()

    waiting = 0
    for index, stream in enumerate(streams):
        totals[index] = [torch.zeros(model.embedding_dim, dtype=torch.float64), 0]
        for examples in stream:
            if len(examples):
                pending.append((index, examples))
                waiting += len(examples)
            while waiting >= batch_size:
                encode(batch_size)
                waiting -= batch_size
                yield from completed()
        finished.append(index)
        yield from completed()
    if waiting:
        encode(waiting)
    yield from completed()


def embed_clips(model: AudioEmbedder, clips: Iterable[torch.Tensor], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[torch.Tensor]:
    """Yield each clip's (dim,) embedding, in order, batching examples across clips.

    Clips are waveforms at the model's rate; only a batch's worth of them is held at once.
    """
    return embed_example_streams(model, ([clip_examples(clip, model.framing)] for clip in clips), batch_size)


def file_examples(path: Union[str, Path], model: AudioEmbedder) -> Iterator[torch.Tensor]:
    """The examples of an audio file at the model's rate, in blocks, read in blocks."""
    framer = ExampleFramer(model.framing)
    for samples in stream_audio(path, model.sample_rate):
        yield framer.push(samples)
    yield framer.finish()


def _as_clips(waveforms: Waveforms) -> list[torch.Tensor]:
    if isinstance(waveforms, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(waveforms)
        if tensor.dim() == 1:
            return [tensor]
        if tensor.dim() == 2:
            return list(tensor)
        raise ValueError(f"waveforms must be (samples,) or (clips, samples), got shape {tuple(tensor.shape)}")
    clips = [torch.as_tensor(clip) for clip in waveforms]
    for index, clip in enumerate(clips):
        if clip.dim() != 1:
            raise ValueError(f"clip {index} must be a mono (samples,) waveform, got shape {tuple(clip.shape)}")
    return clips


def embed(
    model: AudioEmbedder,
    waveforms: Waveforms,
    sample_rate: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Embed mono clips of any length: (n_clips, dim) float32 on the CPU, in input order.

    `waveforms` is one clip (samples,), a batch (clips, samples), or a list of clips of
    different lengths, at `sample_rate` (resampled to the model's). Each clip's
    embedding is the mean over its 0.96 s examples; a shorter clip is zero-padded.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    clips = _as_clips(waveforms)
    for index, clip in enumerate(clips):
        if clip.shape[0] == 0:
            raise ValueError(f"clip {index} holds no samples")
        if not torch.isfinite(clip).all():
            raise ValueError(f"clip {index} holds non-finite samples (NaN or infinity)")
    resampled = (resample(clip.float(), int(sample_rate), model.sample_rate) for clip in clips)
    vectors = list(embed_clips(model, resampled, batch_size))
    return torch.stack(vectors) if vectors else torch.zeros(0, model.embedding_dim)


def embed_files(
    model: AudioEmbedder,
    paths: Sequence[Union[str, Path]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> np.ndarray:
    """(n_files, dim) float32 embeddings of audio files, in order.

    Every header is checked first, so an unreadable file fails before any work is done.
    Files are read in blocks: memory does not grow with a file's length, and the result
    equals `embed` of the whole file's waveform within float rounding.
    """
    for path in paths:
        check_readable(path, model.sample_rate)
    bar = tqdm(total=len(paths), unit="file", desc="embedding", disable=not progress)

    def streams() -> Iterator[Iterator[torch.Tensor]]:
        for path in paths:
            yield file_examples(path, model)
            bar.update(1)

    try:
        vectors = list(embed_example_streams(model, streams(), batch_size))
    finally:
        bar.close()
    if not vectors:
        return np.zeros((0, model.embedding_dim), np.float32)
    return torch.stack(vectors).numpy().astype(np.float32, copy=False)


class EmbedError(InputError):
    """``doppeltrain embed`` was given options it cannot use; the message is one line."""


@dataclass
class EmbedResult:
    embeddings: Path  # the .npy, one row per input file
    paths_file: Path  # the .txt beside it, one input path per line (audio_files.path_text), same order
    shape: tuple[int, int]


def embed_command(
    checkpoint: Union[str, Path],
    inputs: Sequence[str],
    out: Union[str, Path] = "embeddings.npy",
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    progress: bool = True,
) -> EmbedResult:
    """What ``doppeltrain embed`` does: embed the inputs' files into `out` (.npy) and
    write their paths to the .txt beside it. Options are checked before any work."""
    out = Path(out)
    if out.suffix != ".npy":
        raise EmbedError(f"--out must name a .npy file, got {path_text(out)}")
    if batch_size < 1:
        raise EmbedError(f"--batch-size must be at least 1, got {batch_size}")
    resolve_device(device)
    paths = expand_inputs(inputs)
    model = load_model(checkpoint, device)
    embeddings = embed_files(model, paths, batch_size, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths_file = out.with_suffix(".txt")
    # A crashed run must not leave a truncated .npy that looks finished, and two embeds
    # into one --out must not leave the rows of one beside the paths of the other.
    with folder_writes(out.parent):
        with atomic_writer(out) as handle:
            np.save(handle, embeddings)
        write_atomic(paths_file, "".join(f"{path_text(p)}\n" for p in paths).encode("utf-8"))
    return EmbedResult(out, paths_file, tuple(embeddings.shape))
