"""Audio inputs of the commands that use a model: which files, how a file's name is written
on one line, and reading a file, whole or in blocks, as mono audio at the model's rate.

Long files are streamed: :func:`stream_audio` decodes a block at a time, mixes it to mono
and resamples it with :class:`StreamResampler`, whose output equals resampling the whole
file at once (to float rounding), so memory does not grow with a file's length.

File names are bytes on POSIX and need be neither UTF-8 nor free of newlines.
:func:`path_text` writes any path as one line of UTF-8 text, reversibly
(:func:`path_from_text`); messages and ``embed``'s ``.txt`` use it.
"""

from __future__ import annotations

import functools
import math
import os
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio

from doppelgen.console import InputError, one_line
from doppelgen.files import is_regular_file, open_regular_file
from doppelgen.format import shown
from doppeltrain.resampling import resampling_problem

# A folder contributes the files with these extensions; a file named explicitly is read
# whatever its name, since soundfile identifies formats by content.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
     ".au", ".snd", ".caf", ".w64", ".rf64"}
)
# Frames decoded at a time: 6 s of 44.1 kHz audio, 2 MiB as float32 stereo. Memory per
# file is a few such blocks, whatever the file's length.
BLOCK_FRAMES = 1 << 18
SOUNDFILE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError)
# An @list file of paths: a million paths of 64 bytes fit; a stranger's endless file does not.
MAX_LIST_BYTES = 64 << 20
# A NaN or infinite sample makes every embedding it touches NaN: a probe then falls to
# chance and reports that as a result, so such a file is refused, naming it.
NON_FINITE = "it holds non-finite samples (NaN or infinity)"


class AudioReadError(InputError):
    """An input that cannot be read as audio (missing, unreadable, no audio among the
    inputs); the message is one line naming the file."""


# --- names on one line -----------------------------------------------------------------

_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}
# Characters that could split a line (controls, line and paragraph separators), lone
# surrogates, and format characters (bidi overrides, zero-width spaces and joiners), which
# would make a name display as another: a right-to-left override in a file name could make
# a row of embeddings.txt show the name of a different file.
ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_SHORT_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def path_text(path: Union[str, os.PathLike, bytes]) -> str:
    """`path` as one line of UTF-8 text that :func:`path_from_text` turns back into it.

    Written as is, except: a backslash as ``\\\\``; a newline as ``\\n`` and a carriage
    return as ``\\r``; any other control character, line or paragraph separator (what
    could split a line), lone surrogate or format character (a bidi override, a
    zero-width space: what could make a name display as another) as ``\\uHHHH``
    (``\\UHHHHHHHH`` above U+FFFF); and each byte of the name that is not UTF-8 as
    ``\\xHH``. Ordinary names (no backslash, no control or format characters) are
    written unchanged.
    """
    text = os.fsdecode(path)
    out = []
    for char in text:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode keeps it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif unicodedata.category(char) in ESCAPED_CATEGORIES:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


def path_from_text(text: str) -> str:
    """The path :func:`path_text` wrote as `text` (a ``str`` as ``os.fsdecode`` gives it:
    bytes that are not UTF-8 as surrogates). ValueError on a malformed escape."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "\\":
            out.append(char)
            index += 1
            continue
        kind = text[index + 1:index + 2]
        if kind in _SHORT_UNESCAPES:
            out.append(_SHORT_UNESCAPES[kind])
            index += 2
        elif kind in ("x", "u", "U"):
            digits = {"x": 2, "u": 4, "U": 8}[kind]
            hexa = text[index + 2:index + 2 + digits]
            if len(hexa) != digits or any(c not in "0123456789abcdefABCDEF" for c in hexa):
                raise ValueError(f"malformed escape at character {index} of {shown(text)}")
            value = int(hexa, 16)
            if kind == "x" and value < 0x80:
                raise ValueError(f"\\x escapes only bytes 80-ff, got \\x{hexa} in {shown(text)}")
            if value > 0x10FFFF:
                raise ValueError(f"\\U escapes code points up to 10ffff, got \\U{hexa} in {shown(text)}")
            out.append(chr(0xDC00 + value) if kind == "x" else chr(value))
            index += 2 + digits
        else:
            raise ValueError(f"malformed escape at character {index} of {shown(text)}")
    return "".join(out)


def _open_name(path: Union[str, os.PathLike]) -> bytes:
    # soundfile encodes a str name strictly as UTF-8; the bytes name reaches any file.
    return os.fsencode(path)


def _read_error(path: Union[str, os.PathLike], error: Exception) -> AudioReadError:
    # libsndfile's own words, without soundfile's "Error opening b'NAME': " prefix: the
    # message names the file once, escaped.
    reason = getattr(error, "error_string", None) or one_line(error, path)
    return AudioReadError(f"cannot read audio file {path_text(path)}: {reason}")


# --- finding files ---------------------------------------------------------------------


def expand_inputs(inputs: Iterable[Union[str, Path]]) -> list[Path]:
    """Audio files in the given order: files as named, folders recursively (sorted,
    audio extensions only, hidden files skipped), ``@list.txt`` one path per line.

    Lines of a list are literal paths (UTF-8; other bytes are kept as the file system's),
    relative to the list's folder unless absolute; blank lines and lines starting with
    ``#`` are skipped; a list is at most ``MAX_LIST_BYTES``. Raises AudioReadError naming
    a missing path.
    """
    paths: list[Path] = []
    for item in inputs:
        text = os.fsdecode(item)
        if text.startswith("@"):
            list_file = Path(text[1:])
            if not list_file.is_file():
                raise AudioReadError(f"no such list file: {path_text(list_file)}")
            for line in _read_list(list_file):
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.extend(_expand_path(_relative_to(Path(line), list_file.parent)))
        else:
            paths.extend(_expand_path(Path(text)))
    if not paths:
        raise AudioReadError("no audio files among the inputs")
    return paths


def _read_list(list_file: Path) -> list[str]:
    try:
        with open_regular_file(list_file) as handle:
            data = handle.read(MAX_LIST_BYTES + 1)  # bounded even where stat's size lies
    except OSError as error:
        raise AudioReadError(f"cannot read list file {path_text(list_file)}: {one_line(error, list_file)}") from None
    if len(data) > MAX_LIST_BYTES:
        raise AudioReadError(f"list file {path_text(list_file)} is larger than {MAX_LIST_BYTES >> 20} MiB")
    return data.decode("utf-8", "surrogateescape").splitlines()


def _relative_to(path: Path, folder: Path) -> Path:
    return path if path.is_absolute() else folder / path


def _expand_path(path: Path) -> list[Path]:
    try:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise AudioReadError(f"no audio files under {path_text(path)}")
            return found
        if path.is_file():
            return [path]
        if path.exists():  # a FIFO would block the reader forever, a device read without end
            raise AudioReadError(f"not a regular file or folder: {path_text(path)}")
    except OSError as error:  # e.g. a name too long, or a folder we may not list
        raise AudioReadError(f"cannot read {path_text(path)}: {one_line(error, path)}") from None
    raise AudioReadError(f"no such file or folder: {path_text(path)}")


# --- reading ---------------------------------------------------------------------------


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
    problem = resampling_problem(orig_sr, new_sr)  # a rate from a header sizes the filter
    if problem:
        raise ValueError(problem)
    return torchaudio.transforms.Resample(orig_sr, new_sr).to(device)


class StreamResampler:
    """:func:`resample` of a signal that arrives in consecutive blocks (1-D tensors).

    torchaudio's resampler is a convolution: output position ``k`` (``new`` samples, in
    rates divided by their gcd) reads the input ``[k*orig - width, (k+1)*orig + width)``
    and the signal is zero outside itself. So each call resamples the positions whose
    input has all arrived, from a slice that starts ``context`` samples (a whole
    number of ``orig``, at least ``width``) before them, and keeps only their outputs:
    the concatenated result equals resampling the whole signal, within float rounding.
    """

    def __init__(self, orig_sr: int, new_sr: int):
        self.orig_sr, self.new_sr = int(orig_sr), int(new_sr)
        self.identity = self.orig_sr == self.new_sr
        gcd = math.gcd(self.orig_sr, self.new_sr)
        self.orig, self.new = self.orig_sr // gcd, self.new_sr // gcd
        self.width = 0 if self.identity else int(_resampler(self.orig_sr, self.new_sr, "cpu").width)
        self.context = -(-self.width // self.orig) * self.orig
        self.buffer = torch.zeros(0)
        self.buffer_start = 0  # input index of buffer[0]
        self.position = 0  # the next output position to produce

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """Add input samples; returns the output samples that are now final."""
        if self.identity:
            return block.float()
        self.buffer = torch.cat([self.buffer, block.float()])
        end = self.buffer_start + self.buffer.shape[0]
        ready = (end - self.width) // self.orig  # positions before it have all their input
        if ready <= self.position:
            return torch.zeros(0)
        return self._emit(ready * self.orig + self.width, (ready - self.position) * self.new, ready)

    def finish(self) -> torch.Tensor:
        """The output samples after the last block (the signal ends with zeros)."""
        if self.identity:
            return torch.zeros(0)
        end = self.buffer_start + self.buffer.shape[0]
        return self._emit(end, None, None)

    def _emit(self, input_end: int, count, next_position) -> torch.Tensor:
        start = max(0, self.position * self.orig - self.context)  # a multiple of orig
        chunk = self.buffer[start - self.buffer_start:input_end - self.buffer_start]
        if chunk.shape[0] == 0:
            return torch.zeros(0)
        skip = (self.position - start // self.orig) * self.new
        out = resample(chunk, self.orig_sr, self.new_sr)
        out = out[skip:] if count is None else out[skip:skip + count]
        if next_position is not None:
            self.position = next_position
            keep_from = max(0, self.position * self.orig - self.context)
            self.buffer = self.buffer[keep_from - self.buffer_start:].clone()
            self.buffer_start = keep_from
        return out


def stream_audio(path: Union[str, Path], sample_rate: int, block_frames: int = BLOCK_FRAMES) -> Iterator[torch.Tensor]:
    """The file's audio, mono, at `sample_rate`, as consecutive 1-D float32 blocks
    (some may be empty); AudioReadError naming the file if it cannot be read or holds
    no samples."""
    name = path_text(path)
    total = 0
    try:
        with sf.SoundFile(_open_name(path)) as handle:
            resampler = StreamResampler(handle.samplerate, sample_rate)
            for block in handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                total += block.shape[0]
                if not np.isfinite(block).all():
                    raise AudioReadError(f"cannot read audio file {name}: {NON_FINITE}")
                yield resampler.push(to_mono(torch.from_numpy(block)))
    except AudioReadError:
        raise
    except SOUNDFILE_ERRORS as error:
        raise _read_error(path, error) from None
    if total == 0:
        raise AudioReadError(f"cannot read audio file {name}: it holds no samples")
    yield resampler.finish()


def load_audio(path: Union[str, Path], sample_rate: int) -> torch.Tensor:
    """A mono float32 waveform of the whole file at `sample_rate`; AudioReadError if
    unreadable. For long files prefer :func:`stream_audio`, whose memory is bounded."""
    check_readable(path, sample_rate)
    try:
        data, file_sr = sf.read(_open_name(path), dtype="float32", always_2d=True)
    except SOUNDFILE_ERRORS as error:
        raise _read_error(path, error) from None
    if data.shape[0] == 0:
        raise AudioReadError(f"cannot read audio file {path_text(path)}: it holds no samples")
    if not np.isfinite(data).all():
        raise AudioReadError(f"cannot read audio file {path_text(path)}: {NON_FINITE}")
    return resample(to_mono(torch.from_numpy(data)), int(file_sr), sample_rate)


def check_readable(path: Union[str, Path], sample_rate: Optional[int] = None) -> None:
    """Read the header only, so a bad file is reported before any embedding starts: one
    that is not a regular file (a FIFO would block), is not audio, holds no samples or
    (with the model's `sample_rate`) has a rate that cannot be resampled to it."""
    if not is_regular_file(path):
        raise AudioReadError(f"cannot read audio file {path_text(path)}: not a regular file")
    try:
        info = sf.info(_open_name(path))
    except SOUNDFILE_ERRORS as error:
        raise _read_error(path, error) from None
    if info.frames == 0:
        raise AudioReadError(f"cannot read audio file {path_text(path)}: it holds no samples")
    problem = resampling_problem(int(info.samplerate), sample_rate) if sample_rate is not None else ""
    if problem:
        raise AudioReadError(f"cannot read audio file {path_text(path)}: {problem}")
