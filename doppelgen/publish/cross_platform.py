"""Comparing a pair rendered on one platform with the same pair rendered on another.

Bytes cannot agree across platforms, and neither can samples within a small tolerance:
the synths build each oscillator's phase as a float32 cumulative sum over the clip (about
8e4 rad at the top of the pitch range, where one float32 step is 0.008 rad), so another
summation order, another instruction set (no FMA under SSE4.2) or another device moves
the phase, and the samples with it, by up to the clip's peak late in a clip. What stays is
the sound: the magnitudes in time and frequency. So a re-render on another platform is
compared by

- ``index``, ``seed`` and the ``layers`` structure: exactly;
- the parameters: within :data:`PARAMS_TOLERANCE` (absolute, in the normalized [0, 1]
  space). They are drawn on the CPU; another CPU instruction set rounds the draw's
  float32 arithmetic differently;
- the audio: by :func:`log_mel_distance`, the mean absolute difference of the network's
  own VGGish log-mel (``doppelgen.vggish``), every bin floored at :data:`FLOOR_DB` below
  the clip's loudest and the mean taken over the bins above that floor, within
  :data:`CLIP_TOLERANCE` for every clip and :data:`MEDIAN_TOLERANCE` for the median clip
  of the sample.

The figures behind each constant were measured with ``benchmarks/render_drift.py`` (256
voice clips on an AVX2 CPU; docs/publishing.md has the table): another summation order of
the phase moved a clip by at most 0.089 (a sequential sum; tree and blocked orders like
XLA's own at most 0.026), capping XLA at SSE4.2 by at most 0.030, with medians of at most
0.0044; the two views of one pair (delta 0.25), the smallest difference the data means
to hold, lie at least 0.235 apart, with a median of 1.0.
"""

from __future__ import annotations

import math

import numpy as np

from doppelgen.vggish import vggish_mel

# Largest difference of a parameter value (normalized space): measured at most 7.7e-7
# between XLA capped at SSE4.2 and AVX2 (11% of values differ, by 1 ulp typically and
# up to 1.5e-5 relative); a different draw moves them by delta x N(0, 1), order 0.1.
PARAMS_TOLERANCE = 1e-5
# Bins more than this far below the clip's loudest mel bin are raised to that floor:
# float32 phase rounding leaves a noise floor some 45-50 dB below a tone at the top of the
# pitch range, different on every platform (with a 60 dB floor the worst drift measured
# was 0.14); the FLAC codecs' quantisation (2^-15 or 2^-22 of the peak) lies far below.
FLOOR_DB = 40.0
# Mean |difference| of the floored log-mel (nats: 8.7 dB each) over the bins above the
# floor, allowed for one clip: above every drift measured (0.089 at most) and under the
# closest views of one pair (0.235). Averaging over the sounding bins only keeps a short
# sound in a silent clip from being diluted by its silence.
CLIP_TOLERANCE = 0.15
# ... and for the median clip of the sample: drift leaves most clips near 1e-4 (median
# 0.0044 at most, sequential order), while a change of the synth, its level or the codec
# moves them all (5% louder is 0.049).
MEDIAN_TOLERANCE = 0.03

DESCRIPTION = (
    f"index, seed and layers exact; params within {PARAMS_TOLERANCE:g}; audio by VGGish log-mel distance "
    f"(floor {FLOOR_DB:g} dB) <= {CLIP_TOLERANCE:g} per clip and <= {MEDIAN_TOLERANCE:g} for the median clip"
)


def log_mel_distance(reference: np.ndarray, other: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference (nats) of the two clips' VGGish log-mel, both scaled by
    ``reference``'s peak and floored :data:`FLOOR_DB` below ``reference``'s loudest mel
    bin, over the bins above the floor in either clip. 0 for equal (or equally silent)
    clips; inf for clips of different lengths."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        return math.inf
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    scale = scale if scale > 0 else 1.0
    ours, theirs = vggish_mel(reference / scale, sample_rate), vggish_mel(other / scale, sample_rate)
    loudest = float(ours.max()) if ours.size else 0.0
    floor = max(loudest, 1e-12) * 10.0 ** (-FLOOR_DB / 20.0)  # mel magnitudes: 20 dB a decade
    sounding = (ours > floor) | (theirs > floor)
    if not sounding.any():
        return 0.0
    difference = np.abs(np.log(np.maximum(ours, floor)) - np.log(np.maximum(theirs, floor)))
    return float(np.mean(difference[sounding]))


def params_difference(new: object, old: object) -> float:
    """Largest absolute difference between two JSON parameter structures (``params`` or
    ``layers``); inf when their shapes or keys differ."""
    if isinstance(new, dict) and isinstance(old, dict):
        if new.keys() != old.keys():
            return math.inf
        return max((params_difference(new[key], old[key]) for key in new), default=0.0)
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return math.inf
        return max((params_difference(x, y) for x, y in zip(new, old)), default=0.0)
    if isinstance(new, (int, float)) and isinstance(old, (int, float)) and not isinstance(new, bool) and not isinstance(old, bool):
        difference = abs(float(new) - float(old))
        return difference if math.isfinite(difference) else math.inf
    return 0.0 if new == old else math.inf
