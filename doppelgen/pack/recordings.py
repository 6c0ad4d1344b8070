"""Recordings on disk, for ``doppelgen pack``: which files there are, and crops read from one.

The listing is every regular ``.wav``, ``.flac`` or ``.ogg`` file under a folder, hidden
entries skipped, as sorted relative POSIX paths; a path that is not valid UTF-8, or an
entry that is not a regular file, is left out and reported. A crop is a span of a recording at the target rate, mono, zero-padded at the
end, read on its own (with a resampling margin) instead of loading long recordings whole.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

from doppelgen.console import one_line
from doppelgen.files import is_regular_file

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
NOT_UTF8 = "file name is not valid UTF-8 (undecodable bytes shown as \\xNN)"
NOT_REGULAR = "not a regular file (a FIFO, device or socket), never opened"


class UnreadableRecording(Exception):
    """One recording cannot be used; it is skipped and listed in the manifest."""


# --- the listing ---------------------------------------------------------------------


def list_recordings(root: Path, unnamable: list[dict] | None = None) -> list[str]:
    """Relative POSIX paths of the audio files under ``root``, sorted; hidden entries skipped.

    Only regular files (or links to them) are listed. A path that is not valid UTF-8
    cannot be written into JSON, nor opened by libsndfile, so it is left out of the listing; with ``unnamable``, it is appended there as a
    manifest ``skipped`` entry whose ``path`` shows the undecodable bytes as ``\\xNN``,
    as is an entry that is not a regular file (a FIFO would block the reader forever)."""
    found = []
    for directory, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS):
                rel = Path(directory, name).relative_to(root).as_posix()
                if not is_utf8_name(rel):
                    if unnamable is not None:
                        unnamable.append({"path": escaped_name(rel), "error": NOT_UTF8})
                elif not is_regular_file(Path(directory, name)):
                    # Opening a FIFO named like a recording blocks forever; a device reads without end.
                    if unnamable is not None:
                        unnamable.append({"path": rel, "error": NOT_REGULAR})
                else:
                    found.append(rel)
    if unnamable is not None:
        unnamable.sort(key=lambda entry: entry["path"])
    return sorted(found)


def is_utf8_name(name: str) -> bool:
    """Whether a name from the file system is valid UTF-8 (Python keeps the bytes of an
    invalid one as lone surrogates, which no UTF-8 encoder accepts)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped_name(name: str) -> str:
    """A file system name as printable JSON-safe text: undecodable bytes as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def listing_sha256(root: Path, files: list[str]) -> str:
    """A fingerprint of the recordings: their paths and sizes, in listing order."""
    digest = hashlib.sha256()
    for rel in files:
        try:
            size = (root / rel).stat().st_size
        except OSError:
            size = -1
        digest.update(f"{rel}\t{size}\n".encode("utf-8"))
    return digest.hexdigest()


# --- crops ---------------------------------------------------------------------------


def plan_crops(length: int, clip: int, rng: np.random.Generator, temporal_jitter: bool, n_layers: int) -> np.ndarray:
    """Crop starts (target-rate samples) for a recording of ``length`` samples:
    shape (3, K) for base, view a, view b. Pure given ``rng``."""
    if n_layers > 1:
        segments = max(length // clip, 1)
        chosen = rng.choice(segments, size=n_layers, replace=segments < n_layers) * clip
        return np.stack([chosen, chosen, chosen])
    high = max(length - clip, 0)
    first = rng.integers(0, high + 1, size=1)
    second = rng.integers(0, high + 1, size=1) if temporal_jitter else first
    return np.stack([first, first, second])


@dataclass(frozen=True)
class Resampler:
    """Rational resampling from ``source`` to ``target`` Hz (scipy's polyphase filter).

    Crops are read from the file on their own, with a margin of whole resampling periods
    on each side, so a crop equals the same span of the whole recording resampled (to
    float rounding) without loading long recordings whole."""

    source: int
    target: int

    @property
    def ratio(self) -> Fraction:
        return Fraction(self.target, self.source)

    @property
    def up(self) -> int:
        return self.ratio.numerator

    @property
    def down(self) -> int:
        return self.ratio.denominator

    def target_length(self, frames: int) -> int:
        return -(-frames * self.up // self.down)

    @property
    def margin_periods(self) -> int:
        # scipy's default filter reaches 10 * max(up, down) upsampled samples either side.
        reach = 10 * max(self.up, self.down) / self.up + 2
        return max(1, math.ceil(reach / self.down))

    def read_crop(self, path: Path, start: int, clip: int, frames: int) -> np.ndarray:
        """``clip`` target-rate samples starting at target sample ``start``, mono, zero-padded."""
        if self.up == self.down:
            return fit(mono(read_frames(path, start, start + clip)), clip)
        # Work on whole periods: ``down`` source samples <-> ``up`` target samples.
        first_period = max(start // self.up - self.margin_periods, 0)
        last_period = -(-(start + clip) // self.up) + self.margin_periods
        source_start = first_period * self.down
        source_stop = min(last_period * self.down, frames)
        block = mono(read_frames(path, source_start, source_stop))
        from scipy.signal import resample_poly

        resampled = resample_poly(block.astype(np.float64), self.up, self.down)
        offset = start - first_period * self.up
        return fit(resampled[offset : offset + clip], clip)


def read_frames(path: Path, start: int, stop: int) -> np.ndarray:
    try:
        return sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)[0]
    except Exception as error:  # libsndfile raises several types for damaged files
        raise UnreadableRecording(one_line(error, path)) from None


def mono(block: np.ndarray) -> np.ndarray:
    return block.mean(axis=1, dtype=np.float64) if block.ndim == 2 else block.astype(np.float64)


def fit(audio: np.ndarray, clip: int) -> np.ndarray:
    """Exactly ``clip`` samples: truncate, or zero-pad at the end."""
    audio = np.asarray(audio, dtype=np.float64)[:clip]
    return np.pad(audio, (0, clip - len(audio))) if len(audio) < clip else audio
