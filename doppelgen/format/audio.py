"""Audio coding of a stored clip: the codec table, FLAC of the peak-normalized waveform
(gain kept) or float32 WAV, encoded and decoded.

To add a codec, add its row to ``CODEC_TABLE`` (and, for a new kind of coding, its branch
of :func:`encode_clip`): the recipe's and the manifest's checks, the member names, the
round-trip bound, ``verify --rerender``'s tolerance, the dataset card and the command
lines' help all read the table.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from doppelgen.console import one_line
from doppelgen.format.limits import MAX_CLIP_SAMPLES, shown
from doppelgen.format.names import FormatError


@dataclass(frozen=True)
class Codec:
    """How one codec stores a clip, and what readers may expect of it."""

    name: str  # the recipe's ``codec``
    extension: str  # the members' extension; both FLACs are .flac, the manifest tells them apart
    pcm_bits: int | None  # FLAC's PCM sample bits; None: float32 WAV, stored exactly
    # The largest error of decode(encode(x)), a fraction of the clip's peak: half a PCM
    # step of rounding, or one step where the peak itself is clipped to the largest
    # positive code (24-bit measures 2**-22, the bound docs/FORMAT.md states).
    round_trip_bound: float
    help: str  # the command lines' words
    coding: str  # the dataset card's words


CODEC_TABLE: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        Codec("flac", "flac", 24, 2.0**-22, "flac (24-bit)", "24-bit FLAC of the waveform divided by its gain"),
        Codec(
            "flac16", "flac", 16, 2.0**-15,
            "flac16 (16-bit, about 40% smaller; round trip within 2^-15 x peak)", "16-bit FLAC of the waveform divided by its gain",
        ),
        Codec("wav", "wav", None, 0.0, "wav (float32)", "float32 WAV, gain 1"),
    )
}
CODECS = tuple(CODEC_TABLE)


def codec_info(codec: str) -> Codec:
    """The table's row of ``codec``; FormatError (one line) for a codec it does not hold."""
    if not isinstance(codec, str) or codec not in CODEC_TABLE:
        raise FormatError(f"unknown codec {shown(codec)}: expected one of {', '.join(CODECS)}")
    return CODEC_TABLE[codec]


def codecs_help() -> str:
    """The codecs in the command lines' words: ``flac (24-bit), ... or wav (float32)``."""
    helps = [codec.help for codec in CODEC_TABLE.values()]
    return ", ".join(helps[:-1]) + " or " + helps[-1]


def audio_extension(codec: str) -> str:
    """The member extension of a codec's clips: ``flac`` for both FLACs, ``wav``."""
    return codec_info(codec).extension


def round_trip_bound(codec: str) -> float:
    """The largest error ``decode(encode(x))`` may have with ``codec``, as a fraction of the peak."""
    return codec_info(codec).round_trip_bound


def encode_clip(waveform: np.ndarray, sample_rate: int, codec: str = "flac") -> tuple[bytes, float]:
    """Encode one mono clip; returns ``(bytes, gain)`` with ``waveform ~= decode * gain``.

    FLAC stores 24-bit PCM (``flac16``: 16-bit) of ``waveform / peak`` (the synth is not
    bounded to [-1, 1]), so the round-trip error is at most 2**-22 (2**-15) of the peak
    (:func:`round_trip_bound`). WAV stores float32 exactly with gain 1.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise FormatError(f"a clip must be mono (1-d), got shape {waveform.shape}")
    if not np.isfinite(waveform).all():
        raise FormatError("refusing to encode a non-finite clip")
    buffer = io.BytesIO()
    bits = codec_info(codec).pcm_bits
    if bits is None:
        return float_wav(waveform, sample_rate), 1.0
    full_scale = float(2 ** (bits - 1))
    peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
    gain = peak if peak > 0.0 else 1.0
    # float32 is enough: |scaled| <= 2**23, so rounding costs at most one 24-bit step.
    scaled = np.rint(waveform * np.float32(full_scale / gain))
    quantized = np.clip(scaled, -full_scale, full_scale - 1).astype(np.int32)
    # libsndfile takes int32 input as full-scale 32-bit and keeps its top ``bits`` bits.
    sf.write(buffer, quantized << (32 - bits), sample_rate, format="FLAC", subtype=f"PCM_{bits}")
    return buffer.getvalue(), gain


def float_wav(waveform: np.ndarray, sample_rate: int) -> bytes:
    """A mono 32-bit float WAV. Written by hand because libsndfile adds a PEAK chunk that
    holds the current time, which would make every shard's bytes depend on the clock."""
    data = np.asarray(waveform, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)  # IEEE float, mono
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def decode_clip(data: bytes, gain: float = 1.0, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Decode one stored clip and apply its gain; returns ``(float32 waveform, sample_rate)``.

    ``out``, a C-contiguous 1-d float32 array (a row of a batch, say), receives the clip
    instead of a new array: decoded straight into it, the gain applied in place, no
    temporary arrays or copies. The clip must then be mono and exactly ``len(out)``
    samples long (FormatError otherwise); ``out`` is returned. After an error its content
    is undefined.
    """
    if out is not None:
        return _decode_clip_into(data, gain, out)
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            # A header may claim any length: check it before allocating for it.
            if sound.channels != 1:
                raise FormatError(f"audio must be mono, got {sound.channels} channels")
            if not 0 <= sound.frames <= MAX_CLIP_SAMPLES:
                raise FormatError(f"audio claims {sound.frames} samples, more than a clip may hold ({MAX_CLIP_SAMPLES})")
            waveform = sound.read(dtype="float32")
            sample_rate = sound.samplerate
    except FormatError:
        raise
    except Exception as error:  # soundfile raises several types for damaged bytes
        raise FormatError(f"undecodable audio ({one_line(error)[:200]})") from None
    return (waveform * np.float32(gain)).astype(np.float32, copy=False), int(sample_rate)


def _decode_clip_into(data: bytes, gain: float, out: np.ndarray) -> tuple[np.ndarray, int]:
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous):
        raise ValueError("out must be a C-contiguous 1-d float32 array")
    try:
        with sf.SoundFile(io.BytesIO(data)) as sound:
            if sound.channels != 1:
                raise FormatError(f"audio must be mono, got {sound.channels} channels")
            if sound.frames != len(out):
                raise FormatError(f"{sound.frames} samples, expected {len(out)}")
            decoded = len(sound.read(out=out))
            sample_rate = sound.samplerate
    except FormatError:
        raise
    except Exception as error:  # soundfile raises several types for damaged bytes
        raise FormatError(f"undecodable audio ({one_line(error)[:200]})") from None
    if decoded != len(out):
        raise FormatError(f"undecodable audio ({decoded} of {len(out)} samples decoded)")
    out *= np.float32(gain)
    return out, int(sample_rate)
