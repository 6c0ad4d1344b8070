"""The VGGish log-mel frontend, defined once for both programs: the network's input.

docs/REFERENCE.md ('Features fed to the network'): 25 ms frames every 10 ms, periodic Hann
window, |FFT| zero-padded to the next power of two, a 64-band filterbank from 125 to
7500 Hz whose triangles are drawn in the HTK mel domain with the DC bin zeroed, then
``log(mel + 0.01)``. Frames are not centred.

The network owns this definition: ``doppeltrain.features`` builds its torch frontend on
:func:`vggish_mel_filterbank`, and a change here changes what every model sees.
``doppelgen export`` draws its pictures with :func:`vggish_log_mel`, the same features in
NumPy. The module imports neither torch nor JAX, so both stay light.
"""

from __future__ import annotations

import numpy as np

MEL_BANDS = 64
MEL_FMIN, MEL_FMAX = 125.0, 7500.0
WINDOW_SECONDS, HOP_SECONDS = 0.025, 0.010
LOG_OFFSET = 0.01


def htk_hertz_to_mel(frequency: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale, ``1127 ln(1 + f / 700)`` (not Slaney's, which is linear below 1 kHz)."""
    return 1127.0 * np.log1p(np.asarray(frequency, dtype=np.float64) / 700.0)


def vggish_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int = MEL_BANDS, f_min: float = MEL_FMIN, f_max: float = MEL_FMAX
) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64 weights: triangles with edges equally spaced on the
    HTK mel scale, evaluated at each FFT bin's mel value; the DC bin gets no weight."""
    f_max = min(f_max, sample_rate / 2)
    bin_mels = htk_hertz_to_mel(np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1))
    edges = np.linspace(htk_hertz_to_mel(f_min), htk_hertz_to_mel(f_max), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels[:, None] - lower) / (center - lower)
    falling = (upper - bin_mels[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def vggish_log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, MEL_BANDS) log-mel of a mono clip, in float64; a clip shorter than one
    window is zero-padded to one frame."""
    return np.log(vggish_mel(audio, sample_rate) + LOG_OFFSET)


def vggish_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, MEL_BANDS) mel magnitudes before the log (float64), as in :func:`vggish_log_mel`."""
    window = int(round(WINDOW_SECONDS * sample_rate))
    hop = int(round(HOP_SECONDS * sample_rate))
    n_fft = 1 << (window - 1).bit_length()
    audio = np.asarray(audio, dtype=np.float64)
    if len(audio) < window:
        audio = np.pad(audio, (0, window - len(audio)))
    n_frames = 1 + (len(audio) - window) // hop
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop][:n_frames]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)
    magnitude = np.abs(np.fft.rfft(frames * hann, n=n_fft))
    return magnitude @ vggish_mel_filterbank(sample_rate, n_fft)
