"""``doppelgen export``: a few pairs as WAV files and pictures, to see and hear what delta does.

Each exported pair is named by the index in its JSON, ``{index:010d}``: ``.a.wav`` and
``.b.wav`` (float32, the stored gain applied, both views scaled by one factor so neither
clips) and ``.png``, the two views' log-mel spectrograms side by side over the parameter
differences that made them (for packed real audio: the crops).

Export reads a dataset to look at it, not to judge it: a bad pair (undecodable audio,
malformed JSON or params, an index out of range or repeated) or a missing or unreadable
shard becomes one line in ``ExportedPairs.problems`` and export goes on with the next
pair. ``doppelgen verify`` checks everything.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from doppelgen.console import InputError
from doppelgen.files import folder_writes, write_atomic
from doppelgen.format import (
    FormatError,
    Manifest,
    Pair,
    decode_pair,
    float_wav,
    group_members,
    iter_tar_members,
    pair_key,
    read_manifest,
    sample_params,
    shard_index,
    shard_name,
    shown,
    split_member_name,
)
from doppelgen.storage import Store, open_store
from doppelgen.vggish import LOG_OFFSET, MEL_FMIN, vggish_log_mel

# Parameters with the largest |a - b| shown per picture: enough to read the names.
TOP_PARAMS = 12
DEFAULT_EXPORT_PAIRS = 8
# Pair indices name files through pair_key's ten digits.
INDEX_LIMIT = 10**10
# A picture's 25 ms frames need a rate whose Nyquist lies above the lowest mel band, and
# a bounded one: the filterbank has one row per FFT bin of a 25 ms window.
PICTURE_RATES = (int(2 * MEL_FMIN) + 1, 384_000)
# Text from a dataset (keys, names) is cut to this many characters in messages and titles.
SHOWN_CHARACTERS = 60
MAX_PROBLEMS = 100


class ExportError(InputError):
    """Export cannot run (bad option, unreadable dataset, no good pair); one line."""


@dataclass
class ExportedPairs:
    """What ``doppelgen export`` wrote, and the bad pairs it passed over."""

    out: Path
    keys: list[str]  # the exported pairs' file stems, pair_key(JSON index), in export order
    files: list[Path]
    problems: list[str] = field(default_factory=list)  # one line each, at most MAX_PROBLEMS
    more_problems: int = 0  # problems beyond those listed

    def report(self, problem: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more_problems += 1

    @property
    def n_problems(self) -> int:
        return len(self.problems) + self.more_problems


# --- what export needs of a pair -----------------------------------------------------


def exported_index(meta: dict) -> int:
    """The pair's index from its JSON, which names its files; FormatError unless it is a
    whole number in [0, 10**10)."""
    index = meta.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < INDEX_LIMIT:
        raise FormatError(f"index {shown(index, SHOWN_CHARACTERS)} is not a pair index in [0, 10**10)")
    return index


def exportable_pair(key: str, members: dict[str, bytes], sample_rate: int) -> Pair:
    """Decode one sample and check what export relies on; FormatError (one line) if not."""
    try:
        pair = decode_pair(key, members)
    except RecursionError:  # json's parser on a deeply nested sample JSON
        raise FormatError("sample JSON is nested too deeply") from None
    exported_index(pair.meta)
    sample_params(pair.meta)
    if pair.sample_rate != sample_rate:
        raise FormatError(f"{pair.sample_rate} Hz, the recipe says {sample_rate}")
    if not PICTURE_RATES[0] <= pair.sample_rate <= PICTURE_RATES[1]:
        raise FormatError(f"{pair.sample_rate} Hz is outside the {PICTURE_RATES[0]}-{PICTURE_RATES[1]} Hz a picture can show")
    if not len(pair.a):
        raise FormatError("empty audio")
    if not (np.isfinite(pair.a).all() and np.isfinite(pair.b).all()):
        raise FormatError("non-finite audio once the gains are applied")
    return pair


def param_differences(meta: dict, names: list[str]) -> list[tuple[str, float, float, float]]:
    """``(name, a - base, b - base, a - b)`` of the parameters with the largest |a - b|
    (layer 0), largest first; FormatError if the params are malformed."""
    params = sample_params(meta)
    base, a, b = params["base"], params["a"], params["b"]
    if not len(a):
        return []
    names = names if len(names) == len(a) else [f"param {i}" for i in range(len(a))]
    order = np.argsort(-np.abs(a - b), kind="stable")[:TOP_PARAMS]
    return [(names[i], float(a[i] - base[i]), float(b[i] - base[i]), float(a[i] - b[i])) for i in order]


# --- reading the dataset -------------------------------------------------------------


def missing_shards(start: int, stop: int) -> str:
    if stop - start == 1:
        return f"{shard_name(start)}: missing"
    return f"{shard_name(start)} to {shard_name(stop - 1)}: missing ({stop - start} shards)"


def iter_dataset_samples(folder: Store, n_shards: int, result: ExportedPairs) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """``(shard name, key, members by extension)`` over the shards on disk, in index
    order; a missing or unreadable shard is reported to ``result``. Only the folder's
    listing is walked, so a manifest claiming 10**9 shards costs nothing."""
    present = sorted(i for i in map(shard_index, folder.names()) if i is not None and i < n_shards)
    expected = 0
    for index in present:
        if index > expected:
            result.report(missing_shards(expected, index))
        expected = index + 1
        name = shard_name(index)
        try:
            with folder.open_local(name) as handle:
                for key, group in group_members(iter_tar_members(handle, name)):
                    yield name, key, {split_member_name(member)[1]: data for member, data in group}
        except (FormatError, OSError) as error:
            message = shown(error, 400, quoted=False)
            result.report(message if message.startswith(f"{name}: ") else f"{name}: {message}")
    if expected < n_shards:
        result.report(missing_shards(expected, n_shards))


def listening_scale(pair: Pair) -> float:
    """One factor for both views: only attenuates, so a pair whose peak exceeds full scale
    plays without clipping while the two views keep their relative loudness."""
    peak = max(float(np.max(np.abs(pair.a))), float(np.max(np.abs(pair.b))), 1.0)
    return 1.0 / peak


# --- the picture ---------------------------------------------------------------------


def pair_title(meta: dict, manifest: Manifest) -> str:
    params = sample_params(meta)
    if not manifest.kind.compares_params:  # packed: the params are the crops' start times
        crops = ", ".join(f"{view} @ {', '.join(f'{t:.2f}' for t in params[view][:4])}{' ...' if len(params[view]) > 4 else ''} s" for view in ("a", "b"))
        return f"pair {meta['index']}  ·  {shown(meta.get('source', '?'), SHOWN_CHARACTERS, quoted=False)}  ·  {crops}"
    recipe = manifest.recipe
    synth = recipe.get("synth", {}).get("name", "?")
    a, b = params["a"], params["b"]
    spread = float(np.mean(np.abs(a - b))) if a.size else float("nan")
    return f"pair {meta['index']}  ·  {shown(synth, SHOWN_CHARACTERS, quoted=False)}  ·  delta {shown(recipe.get('delta'), SHOWN_CHARACTERS, quoted=False)}  ·  mean |a - b| = {spread:.3f} (normalized)"


def pair_picture(pair: Pair, manifest: Manifest, names: list[str]) -> bytes:
    """The PNG of one checked pair: two log-mels over a bar chart of parameter changes."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    from matplotlib import pyplot as plt

    mels = [vggish_log_mel(view, pair.sample_rate) for view in (pair.a, pair.b)]
    low, high = min(m.min() for m in mels), max(m.max() for m in mels)
    differences = param_differences(pair.meta, names) if manifest.kind.compares_params else []
    rows = 2 if differences else 1
    # Names and titles come from the dataset: a "$" in them must not start mathtext.
    with matplotlib.rc_context({"text.parse_math": False}):
        figure = plt.figure(figsize=(11, 4.2 + 3.4 * (rows - 1)), layout="constrained")
        grid = figure.add_gridspec(rows, 2, height_ratios=[1.2, 1][:rows])
        seconds = len(pair.a) / pair.sample_rate
        for column, (view, mel) in enumerate(zip("ab", mels)):
            axis = figure.add_subplot(grid[0, column])
            image = axis.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high, extent=(0, seconds, 0, mel.shape[1]))
            axis.set_title(f"view {view}")
            axis.set_xlabel("time (s)")
            axis.set_ylabel("mel band")
        figure.colorbar(image, ax=figure.axes, label=f"log(mel + {LOG_OFFSET})", shrink=0.8)
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
        figure.suptitle(pair_title(pair.meta, manifest), fontsize=10)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        plt.close(figure)
    return buffer.getvalue()


# --- export --------------------------------------------------------------------------


def write_pair(out: Path, pair: Pair, manifest: Manifest, names: list[str]) -> list[Path]:
    """The two WAVs and the picture of a checked pair, each written atomically."""
    stem = pair_key(pair.meta["index"])
    scale = listening_scale(pair)
    paths = []
    for view, audio in (("a", pair.a), ("b", pair.b)):
        paths.append(out / f"{stem}.{view}.wav")
        write_atomic(paths[-1], float_wav(audio * np.float32(scale), pair.sample_rate))
    paths.append(out / f"{stem}.png")
    write_atomic(paths[-1], pair_picture(pair, manifest, names))
    return paths


def export_pairs(folder: str | os.PathLike, out: str | os.PathLike, n: int = DEFAULT_EXPORT_PAIRS) -> ExportedPairs:
    """Write WAVs and a picture for the first ``n`` good pairs of the dataset in
    ``folder``; the bad ones met on the way are in ``problems``. ExportError (one line)
    if the dataset cannot be read or holds no good pair; OSError if writing fails."""
    if n < 1:
        raise ExportError(f"--n must be >= 1, got {n}")
    folder, out = open_store(folder), Path(out)
    try:
        manifest = read_manifest(folder)
    except FormatError as error:
        raise ExportError(str(error)) from None
    names = [shown(p.get("name", "?"), SHOWN_CHARACTERS, quoted=False) for p in manifest.param_names or () if isinstance(p, dict)]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExportError(f"cannot write to {out}: {error.strerror or error}") from None
    result = ExportedPairs(out=out, keys=[], files=[])
    with folder_writes(out):  # two exports into one folder: one after the other, not mixed
        _export_into(out, folder, manifest, names, n, result)
    if not result.keys:
        first = f"; first: {result.problems[0]}" if result.problems else ""
        raise ExportError(f"{folder.location}: no readable pairs to export ({result.n_problems} problems{first})")
    return result


def _export_into(out: Path, folder: Store, manifest: Manifest, names: list[str], n: int, result: ExportedPairs) -> None:
    for shard, key, members in iter_dataset_samples(folder, manifest.n_shards, result):
        where = f"{shard}: {shown(key, SHOWN_CHARACTERS, quoted=False)}"
        try:
            pair = exportable_pair(key, members, manifest.sample_rate)
        except FormatError as error:
            # decode_pair's messages may name the key already; keep it short, say it once.
            shown_key = shown(key, SHOWN_CHARACTERS, quoted=False)
            message = shown(str(error).replace(key, shown_key), 400, quoted=False)
            result.report(f"{shard}: {message}" if message.startswith(shown_key) else f"{where}: {message}")
            continue
        stem = pair_key(pair.meta["index"])
        if stem in result.keys:
            result.report(f"{where}: index {pair.meta['index']} repeats an exported pair")
            continue
        result.files += write_pair(out, pair, manifest, names)
        result.keys.append(stem)
        if len(result.keys) >= n:
            break
