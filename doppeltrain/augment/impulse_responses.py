"""The impulse responses of the convolution augmentation, read from a folder (``--ir-dir``,
or the default set ``doppelgen irs`` renders).

Read once when training starts, so that a bad file is one line naming it then, not a
failed step hours later ("the loss became nan"):

- every regular ``.wav``/``.flac`` file under the folder, sorted (hidden ones, FIFOs and
  devices skipped: opening a FIFO blocks);
- mono (channels averaged), resampled to the training rate;
- only what the convolution uses: it keeps a clip's length of output, so taps past the
  clip's length never reach it, and only those first ``max_samples`` (at the training
  rate) are read (``soundfile``'s ``frames=``, with a margin for the resampling filter).
  A stray 10-minute recording costs one clip, not ten minutes times the folder's count;
- refused, naming the file: unreadable, empty, non-finite (one NaN sample made the loss
  NaN later) or silent within what is read (the convolution would zero the clip).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import soundfile as sf
import torch
import torchaudio

from doppelgen.console import InputError, one_line
from doppelgen.files import is_regular_file, open_regular_file
from doppeltrain.resampling import resampling_problem

IR_EXTENSIONS = (".wav", ".flac")
# Read at most this much of each response when the clip length is not known.
MAX_RESPONSE_SECONDS = 10.0
# The bank is (count, length) float32 on the training device: 1 GiB at most. The default
# set is 300 responses; at 1 s of 16 kHz that is 4.8 M values.
MAX_BANK_VALUES = 2**28


class ImpulseResponseError(InputError):
    """A folder of impulse responses cannot be used; the message is one line naming the file."""


def impulse_response_files(folder: Path) -> list[Path]:
    """The regular .wav and .flac files under `folder`, sorted; hidden entries skipped."""
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IR_EXTENSIONS and is_regular_file(path)
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def load_impulse_responses(ir_dir: str, sample_rate: int, max_samples: Optional[int] = None) -> torch.Tensor:
    """Every response under `ir_dir` as an (n, L) float32 tensor at `sample_rate`, each cut
    to its first `max_samples` samples (None: ``MAX_RESPONSE_SECONDS``) and zero-padded
    to the longest; ImpulseResponseError (one line, naming the file) for a folder or file
    that cannot be used."""
    folder = Path(ir_dir)
    if not folder.is_dir():
        raise ImpulseResponseError(f"--ir-dir {ir_dir}: no such folder")
    limit = int(max_samples) if max_samples is not None else int(MAX_RESPONSE_SECONDS * sample_rate)
    if limit < 1:
        raise ImpulseResponseError(f"impulse responses must keep at least one sample, got {limit}")
    paths = impulse_response_files(folder)
    if not paths:
        raise ImpulseResponseError(f"--ir-dir {ir_dir}: no .wav or .flac impulse responses")
    if len(paths) * limit > MAX_BANK_VALUES:
        raise ImpulseResponseError(f"--ir-dir {ir_dir}: {len(paths)} responses of up to {limit} samples exceed the "
                                   f"{MAX_BANK_VALUES} values a bank may hold; use fewer files")
    responses = [read_impulse_response(path, sample_rate, limit) for path in paths]
    longest = max(response.numel() for response in responses)
    return torch.stack([torch.nn.functional.pad(r, (0, longest - r.numel())) for r in responses])


def read_impulse_response(path: Path, sample_rate: int, max_samples: int) -> torch.Tensor:
    """The first `max_samples` samples of one response at `sample_rate`, mono, float32."""
    try:
        with open_regular_file(path) as raw, sf.SoundFile(raw) as handle:
            rate = int(handle.samplerate)
            problem = resampling_problem(rate, sample_rate)
            if problem:
                raise ImpulseResponseError(f"--ir-dir: {path}: {problem}")
            # Frames of the file that the kept samples depend on: their span at the
            # file's rate plus the reach of the resampling filter (under 7 input samples
            # per output sample), so the kept samples equal those of the whole file resampled.
            reach = 8 * math.ceil(rate / sample_rate) + 8 if rate != sample_rate else 0
            frames = math.ceil(max_samples * rate / sample_rate) + reach
            audio = handle.read(frames=frames, dtype="float32", always_2d=True)
    except ImpulseResponseError:
        raise
    except Exception as error:  # soundfile raises several types for damaged files
        raise ImpulseResponseError(f"--ir-dir: cannot read {path} ({one_line(error, path)})") from None
    if audio.shape[0] == 0:
        raise ImpulseResponseError(f"--ir-dir: {path} is empty")
    response = torch.from_numpy(audio.mean(axis=1))
    if not bool(torch.isfinite(response).all()):
        raise ImpulseResponseError(f"--ir-dir: {path} holds non-finite samples (NaN or infinity)")
    if rate != sample_rate:
        response = torchaudio.functional.resample(response, rate, sample_rate)
    response = response[:max_samples].contiguous()
    if not bool(response.any()):
        raise ImpulseResponseError(f"--ir-dir: {path} is silent (all zero) in its first {response.numel()} samples")
    return response
