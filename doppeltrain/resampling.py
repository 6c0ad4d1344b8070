"""How large a resampling filter a file's declared sample rate asks for, known before it is built.

torchaudio's windowed-sinc resampler (what ``embed``, ``probe`` and the impulse-response
reader use) builds one filter per output phase: ``new x (orig + 2 x width)`` values, for
the two rates divided by their gcd. Common rates cost little (44.1 kHz -> 16 kHz:
160 x 475 values), but a header declaring 44,101 Hz, coprime to 16,000, asks for
16,000 x 44,135 values: 2.6 GiB, and building it peaked at 18 GB. A rate whose filter
would exceed ``MAX_RESAMPLING_FILTER`` is refused in one line instead.
"""

from __future__ import annotations

import math

# Values of one filter bank: 64 MiB as float32. 44,056 Hz (NTSC-locked recorders) to
# 16 kHz needs 11 M; every rate in common use needs under 1 M.
MAX_RESAMPLING_FILTER = 2**24
# torchaudio's defaults, which every caller here uses.
LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


def resampling_filter_size(orig_rate: int, new_rate: int) -> int:
    """Values in torchaudio's filter bank from ``orig_rate`` to ``new_rate`` (0: no
    resampling)."""
    if orig_rate == new_rate:
        return 0
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))
    return new * (orig + 2 * width)


def resampling_problem(orig_rate: int, new_rate: int) -> str:
    """Why audio at ``orig_rate`` Hz cannot be resampled to ``new_rate`` here ('' if it can)."""
    if orig_rate <= 0:
        return f"its sample rate {orig_rate} Hz is not positive"
    size = resampling_filter_size(orig_rate, new_rate)
    if size > MAX_RESAMPLING_FILTER:
        return (f"resampling its {orig_rate} Hz to {new_rate} Hz would need a filter of {size} values, more than "
                f"the {MAX_RESAMPLING_FILTER} allowed (convert it to a common rate first)")
    return ""
