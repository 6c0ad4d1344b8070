"""``doppelgen export``: a few pairs as WAV files and pictures, to see and hear what delta does.

For each exported pair: ``{key}.a.wav`` and ``{key}.b.wav`` (float32, the stored gain
applied), and ``{key}.png`` with the two views' log-mel spectrograms side by side over
the parameter differences that made them (for packed real audio: the crops).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

from .format import FormatError, Pair, is_packed_recipe, iter_shard_pairs, read_manifest, shard_name

# The log-mel front end of the paper's network (REFERENCE.md, VGGish input), so the
# pictures show what the model sees.
MEL_BANDS = 64
MEL_FMIN, MEL_FMAX = 125.0, 7500.0
WINDOW_SECONDS, HOP_SECONDS = 0.025, 0.010
LOG_OFFSET = 0.01
# Parameters with the largest |a - b| shown per picture: enough to read the names.
TOP_PARAMS = 12
DEFAULT_EXPORT_PAIRS = 8


class ExportError(ValueError):
    """Export cannot run (bad option, unreadable dataset); the message is one line."""


@dataclass
class ExportResult:
    out: Path
    keys: list[str]
    files: list[Path]


# --- log-mel -------------------------------------------------------------------------


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = MEL_BANDS, fmin: float = MEL_FMIN, fmax: float = MEL_FMAX) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangles in the mel domain, DC bin zeroed."""
    fmax = min(fmax, sample_rate / 2)
    bin_mels = hz_to_mel(np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1))
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels[:, None] - lower) / (center - lower)
    falling = (upper - bin_mels[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(frames, MEL_BANDS) log-mel spectrogram: periodic Hann, magnitude, log(mel + 0.01)."""
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
    return np.log(magnitude @ mel_filterbank(sample_rate, n_fft) + LOG_OFFSET)


# --- pairs ---------------------------------------------------------------------------


def iter_dataset_pairs(folder: Path, manifest: dict) -> Iterator[Pair]:
    """Pairs in global-index order over the manifest's shards; damaged shards are skipped."""
    n_shards = int(manifest["recipe"].get("n_shards", 0))
    for index in range(n_shards):
        path = folder / shard_name(index)
        if not path.is_file():
            continue
        try:
            yield from iter_shard_pairs(path)
        except FormatError:
            continue  # export is for looking; `doppelgen verify` reports damage


def listening_scale(pair: Pair) -> float:
    """One factor for both views: only attenuates, so a pair whose peak exceeds full scale
    plays without clipping while the two views keep their relative loudness."""
    peak = max(float(np.max(np.abs(pair.a))), float(np.max(np.abs(pair.b))), 1.0)
    return 1.0 / peak


def param_differences(meta: dict, names: list[str]) -> list[tuple[str, float, float, float]]:
    """``(name, a - base, b - base, a - b)`` of the parameters with the largest |a - b|
    (layer 0), largest first."""
    params = meta["params"]
    base, a, b = (np.asarray(params[k], dtype=np.float64) for k in ("base", "a", "b"))
    if not (len(base) == len(a) == len(b)) or not len(a):
        return []
    names = names if len(names) == len(a) else [f"param {i}" for i in range(len(a))]
    order = np.argsort(-np.abs(a - b), kind="stable")[:TOP_PARAMS]
    return [(names[i], float(a[i] - base[i]), float(b[i] - base[i]), float(a[i] - b[i])) for i in order]


def pair_title(meta: dict, recipe: dict) -> str:
    if is_packed_recipe(recipe):
        crops = ", ".join(f"{view} @ {', '.join(f'{t:.2f}' for t in meta['params'][view])} s" for view in ("a", "b"))
        return f"pair {meta['index']}  ·  {meta.get('source', '?')}  ·  {crops}"
    synth = recipe.get("synth", {}).get("name", "?")
    a, b = (np.asarray(meta["params"][k], dtype=np.float64) for k in ("a", "b"))
    spread = float(np.mean(np.abs(a - b))) if a.size and a.shape == b.shape else float("nan")
    return f"pair {meta['index']}  ·  {synth}  ·  delta {recipe.get('delta')}  ·  mean |a - b| = {spread:.3f} (normalized)"


def plot_pair(pair: Pair, recipe: dict, names: list[str], path: Path) -> None:
    """Write the picture of one pair: two log-mels over a bar chart of parameter changes."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    from matplotlib import pyplot as plt

    mels = [log_mel(view, pair.sample_rate) for view in (pair.a, pair.b)]
    low, high = min(m.min() for m in mels), max(m.max() for m in mels)
    differences = [] if is_packed_recipe(recipe) else param_differences(pair.meta, names)
    rows = 2 if differences else 1
    figure = plt.figure(figsize=(11, 4.2 + 3.4 * (rows - 1)), layout="constrained")
    grid = figure.add_gridspec(rows, 2, height_ratios=[1.2, 1][:rows])
    seconds = len(pair.a) / pair.sample_rate
    for column, (view, mel) in enumerate(zip("ab", mels)):
        axis = figure.add_subplot(grid[0, column])
        image = axis.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high, extent=(0, seconds, 0, mel.shape[1]))
        axis.set_title(f"view {view}")
        axis.set_xlabel("time (s)")
        axis.set_ylabel("mel band")
    figure.colorbar(image, ax=figure.axes, label="log(mel + 0.01)", shrink=0.8)
    if differences:
        axis = figure.add_subplot(grid[1, :])
        labels = [d[0] for d in differences][::-1]
        y = np.arange(len(labels))
        axis.barh(y + 0.2, [d[1] for d in differences][::-1], height=0.4, label="a - base", color="tab:blue")
        axis.barh(y - 0.2, [d[2] for d in differences][::-1], height=0.4, label="b - base", color="tab:orange")
        axis.set_yticks(y, labels, fontsize=8)
        axis.axvline(0.0, color="black", linewidth=0.6)
        axis.set_xlabel("parameter change, normalized [0, 1] units")
        axis.set_title(f"the {len(labels)} parameters that differ most between the views")
        axis.legend(loc="lower right", fontsize=8)
    figure.suptitle(pair_title(pair.meta, recipe), fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def export_pairs(folder: str | os.PathLike, out: str | os.PathLike, n: int = DEFAULT_EXPORT_PAIRS) -> ExportResult:
    """Write WAVs and a picture for the first ``n`` pairs of the dataset in ``folder``."""
    if n < 1:
        raise ExportError(f"--n must be >= 1, got {n}")
    folder, out = Path(folder), Path(out)
    try:
        manifest = read_manifest(folder)
    except FormatError as error:
        raise ExportError(str(error)) from None
    recipe = manifest["recipe"]
    record = manifest.get("record") if isinstance(manifest.get("record"), dict) else {}
    param_names = record.get("param_names") if isinstance(record.get("param_names"), list) else []
    names = [str(p.get("name", "?")) for p in param_names if isinstance(p, dict)]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot write to {out}: {error.strerror or error}") from None
    result = ExportResult(out=out, keys=[], files=[])
    for pair in iter_dataset_pairs(folder, manifest):
        scale = listening_scale(pair)
        for view, audio in (("a", pair.a), ("b", pair.b)):
            path = out / f"{pair.key}.{view}.wav"
            sf.write(path, audio * scale, pair.sample_rate, subtype="FLOAT")
            result.files.append(path)
        picture = out / f"{pair.key}.png"
        plot_pair(pair, recipe, names, picture)
        result.files.append(picture)
        result.keys.append(pair.key)
        if len(result.keys) >= n:
            break
    if not result.keys:
        raise ExportError(f"{folder}: no readable pairs to export")
    return result
