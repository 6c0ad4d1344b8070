"""Use a trained checkpoint: load it, read audio, and embed clips of any length.

The network was trained on 1 s clips whose log-mel image is one 0.96 s example
(96 frames of 10 ms). A clip of any length is cut into examples on the waveform: 1 s
windows (exactly a training input) starting every 0.96 s, so the examples' 96-frame
images tile the clip without gaps or overlap. A last partial example is kept when it
holds at least half an example of audio; a clip shorter than one example is
zero-padded. Each example's embedding is L2-normalized, as in training, and a clip's
embedding is the mean over its examples.

`load_model` and `embed` are the notebook API; the ``embed`` command, the linear probe
and the HEAR module are built on them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import nn
from tqdm.auto import tqdm

from doppelgen.console import one_line
from doppelgen.files import atomic_writer, write_atomic

from doppeltrain import checkpoint as checkpoint_io
from doppeltrain.config import TrainConfig
from doppeltrain.distributed import resolve_device
from doppeltrain.features import LogMelFrontend, example_samples

# A folder contributes the files with these extensions; a file named explicitly is read
# whatever its name, since soundfile identifies formats by content.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
     ".au", ".snd", ".caf", ".w64", ".rf64"}
)

# 0.96 s examples per forward pass: small enough for a laptop, large enough for a GPU to
# matter less than file reading.
DEFAULT_BATCH_SIZE = 64

Waveforms = Union[torch.Tensor, np.ndarray, Sequence[Union[torch.Tensor, np.ndarray]]]


class AudioReadError(ValueError):
    """An input that cannot be read as audio; the message is one line naming the file."""


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
    untrained one, or log-mel statistics (see `doppeltrain.probe`). With `normalize`
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


def load_model(checkpoint: Union[str, Path], device: str = "auto") -> AudioEmbedder:
    """The trained network of `checkpoint` with its frontend, frozen in eval mode, on
    `device` ("auto": cuda, then mps, then cpu). CheckpointError if it is not one of ours."""
    target = resolve_device(device)
    network, config = checkpoint_io.load_model(checkpoint, device="cpu")
    embedder = AudioEmbedder(network, config, config.model.embedding_dim)
    for parameter in embedder.parameters():
        parameter.requires_grad_(False)
    return embedder.to(target)


# --- audio -----------------------------------------------------------------------------


def to_mono(audio: torch.Tensor) -> torch.Tensor:
    """(samples,) or (samples, channels) -> (samples,), channels averaged."""
    return audio if audio.dim() == 1 else audio.mean(dim=-1)


def resample(waveform: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample along the last axis (torchaudio's windowed sinc); a no-op at equal rates."""
    if orig_sr == new_sr:
        return waveform
    return _resampler(int(orig_sr), int(new_sr), str(waveform.device))(waveform.float())


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int, device: str) -> torchaudio.transforms.Resample:
    # The filter bank for 44.1 or 22.05 kHz -> 16 kHz takes longer to build than to
    # apply; a folder of files shares a handful of rates, so build each one once.
    return torchaudio.transforms.Resample(orig_sr, new_sr).to(device)


def load_audio(path: Union[str, Path], sample_rate: int) -> torch.Tensor:
    """A mono float32 waveform of the file at `sample_rate`; AudioReadError if unreadable."""
    try:
        data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as error:
        raise AudioReadError(f"cannot read audio file {path}: {one_line(error)}") from None
    if data.shape[0] == 0:
        raise AudioReadError(f"cannot read audio file {path}: it holds no samples")
    return resample(to_mono(torch.from_numpy(data)), int(file_sr), sample_rate)


def check_readable(path: Union[str, Path]) -> None:
    """Read the header only, so a bad file is reported before any embedding starts."""
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as error:
        raise AudioReadError(f"cannot read audio file {path}: {one_line(error)}") from None
    if info.frames == 0:
        raise AudioReadError(f"cannot read audio file {path}: it holds no samples")


def expand_inputs(inputs: Iterable[Union[str, Path]]) -> list[Path]:
    """Audio files in the given order: files as named, folders recursively (sorted,
    audio extensions only, hidden files skipped), ``@list.txt`` one path per line.

    Lines of a list are paths relative to the list's folder unless absolute; blank lines
    and lines starting with ``#`` are skipped. Raises ValueError naming a missing path.
    """
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        if text.startswith("@"):
            list_file = Path(text[1:])
            if not list_file.is_file():
                raise ValueError(f"no such list file: {list_file}")
            for line in list_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.extend(_expand_path(_relative_to(Path(line), list_file.parent)))
        else:
            paths.extend(_expand_path(Path(text)))
    if not paths:
        raise ValueError("no audio files among the inputs")
    return paths


def _relative_to(path: Path, folder: Path) -> Path:
    return path if path.is_absolute() else folder / path


def _expand_path(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise ValueError(f"no audio files under {path}")
        return found
    if path.is_file():
        return [path]
    raise ValueError(f"no such file or folder: {path}")


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


# --- embedding -------------------------------------------------------------------------


@torch.no_grad()
def encode_examples(model: AudioEmbedder, examples: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, window) -> (N, dim) float32 on the CPU, `batch_size` examples at a time."""
    outputs = [
        model(chunk.to(model.device, torch.float32).contiguous()).float().cpu()
        for chunk in examples.split(batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros(0, model.embedding_dim)


def embed_clips(model: AudioEmbedder, clips: Iterable[torch.Tensor], batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[torch.Tensor]:
    """Yield each clip's (dim,) embedding, in order, batching examples across clips.

    Clips are waveforms at the model's rate; only a batch's worth of them is held at once.
    """
    pending: list[torch.Tensor] = []
    n_pending = 0
    for clip in clips:
        examples = clip_examples(clip, model.framing)
        pending.append(examples)
        n_pending += examples.shape[0]
        if n_pending >= batch_size:
            yield from _reduce(model, pending, batch_size)
            pending, n_pending = [], 0
    if pending:
        yield from _reduce(model, pending, batch_size)


def _reduce(model: AudioEmbedder, pending: list[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    vectors = encode_examples(model, torch.cat(pending), batch_size)
    for part in vectors.split([examples.shape[0] for examples in pending]):
        yield part.mean(dim=0)


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
    """
    for path in paths:
        check_readable(path)
    bar = tqdm(total=len(paths), unit="file", desc="embedding", disable=not progress)

    def clips() -> Iterator[torch.Tensor]:
        for path in paths:
            yield load_audio(path, model.sample_rate)
            bar.update(1)

    try:
        vectors = list(embed_clips(model, clips(), batch_size))
    finally:
        bar.close()
    if not vectors:
        return np.zeros((0, model.embedding_dim), np.float32)
    return torch.stack(vectors).numpy().astype(np.float32, copy=False)


@dataclass
class EmbedResult:
    embeddings: Path  # the .npy, one row per input file
    paths_file: Path  # the .txt beside it, one input path per line, same order
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
        raise ValueError(f"--out must name a .npy file, got {out}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    resolve_device(device)
    paths = expand_inputs(inputs)
    model = load_model(checkpoint, device)
    embeddings = embed_files(model, paths, batch_size, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths_file = out.with_suffix(".txt")
    # A crashed run must not leave a truncated .npy that looks finished.
    with atomic_writer(out) as handle:
        np.save(handle, embeddings)
    write_atomic(paths_file, "".join(f"{p}\n" for p in paths).encode())
    return EmbedResult(out, paths_file, tuple(embeddings.shape))
