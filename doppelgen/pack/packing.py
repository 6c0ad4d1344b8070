"""``doppelgen pack``: the paper's real-data baseline as pair shards in the same format.

A folder of recordings (wav / flac / ogg, any rate, mono or stereo, nested folders)
becomes pairs of 1 s crops at 16 kHz (docs/REFERENCE.md, "Real-data baseline"):

- default: one random crop, used for both views (the trainer's augmentations make
  them differ);
- ``temporal_jitter``: two independent random crops of the same recording;
- ``n_layers = K > 1``: K random whole 1 s segments of one recording, summed and
  divided by (max |x| + 1e-6); both views get that mix.

Shorter recordings are zero-padded. Every random choice for a recording comes from a
numpy Generator seeded with ``(seed, file index)``, the index into the sorted listing,
and the order recordings become pairs is a permutation drawn from ``seed`` alone; so
the output depends neither on the order files are processed in nor on worker count.
Unreadable files, and files whose path is not valid UTF-8, are skipped, counted and
listed in the manifest (``recordings.py`` finds and reads the recordings).

The sample JSON keeps docs/FORMAT.md's fields: ``params`` holds crop start times in seconds,
``{"base": [...], "a": [...], "b": [...]}`` with one value per segment (K values with
``n_layers``); ``base`` is the first crop drawn and ``a``/``b`` the crops each view
got. ``source`` is the recording's path relative to the folder and ``file_index`` its
place in the sorted listing. The manifest's recipe has a ``source`` object instead of
``synth``.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf

from doppelgen.console import InputError, one_line
from doppelgen.files import workers_problem
from doppelgen.format import CODECS, FORMAT_VERSION, MANIFEST_NAME, MAX_GAIN, n_samples, recipe_sha256
from doppelgen.format.limits import recipe_number_problem, recipe_size_problem
from doppelgen.pack.recordings import AUDIO_EXTENSIONS, Resampler, UnreadableRecording, list_recordings, listing_sha256, plan_crops
from doppelgen.render.manifest import existing_recipe_hashes, software_versions, write_manifest
from doppelgen.render.output_claim import FolderTakenError, claimed_folder, clear_dataset
from doppelgen.render.shard_writer import SILENCE_RMS, pair_sample, write_samples
from doppelgen.storage import StorageError, Store, open_store

# Divisor guard of the layered mix (docs/REFERENCE.md).
MIX_EPS = 1e-6
PACK_RNG = (
    "order = numpy default_rng(seed).permutation(n_files) over the sorted listing; "
    "recording f draws its crops from numpy default_rng([seed, f]): offsets in target-rate samples, "
    "integers(0, max(n - clip, 0) + 1) per crop, or choice(n // clip, n_layers) whole segments"
)


class PackError(InputError):
    """Packing cannot start (bad option, no recordings, output taken); one line."""


@dataclass(frozen=True)
class PackConfig:
    """Options of ``doppelgen pack``; the defaults are the paper's real-data baseline."""

    sample_rate: int = 16000
    duration: float = 1.0
    temporal_jitter: bool = False
    n_layers: int = 1
    max_n: int | None = None  # pairs to make at most; None: one per readable recording
    pairs_per_shard: int = 1000
    seed: int = 0
    codec: str = "flac"

    @property
    def clip(self) -> int:
        return n_samples(self.duration, self.sample_rate)

    def validate(self) -> "PackConfig":
        # The format's bounds, which verify, info and fit check in every manifest: a pack
        # outside them would write a dataset its own readers refuse.
        for name in ("sample_rate", "duration", "n_layers", "pairs_per_shard", "seed"):
            problem = recipe_number_problem(name, getattr(self, name))
            if problem:
                raise PackError(problem)
        problem = recipe_size_problem(self.sample_rate, self.duration, self.pairs_per_shard, 1)
        if problem:
            raise PackError(problem)
        checks = [
            (self.sample_rate > 0, f"sample rate must be positive, got {self.sample_rate}"),
            (self.duration > 0, f"duration must be positive, got {self.duration}"),
            (self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}"),
            (self.max_n is None or self.max_n >= 1, f"max_n must be >= 1, got {self.max_n}"),
            (self.pairs_per_shard >= 1, f"pairs per shard must be >= 1, got {self.pairs_per_shard}"),
            (0 <= self.seed < 2**32, f"seed must lie in [0, 2**32), got {self.seed}"),
            (self.codec in CODECS, f"unknown codec {self.codec!r}: expected one of {', '.join(CODECS)}"),
            (not (self.temporal_jitter and self.n_layers > 1), "--temporal-jitter and --n-layers > 1 exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise PackError(message)
        return self


@dataclass
class PackedPair:
    file_index: int
    source: str
    a: np.ndarray
    b: np.ndarray
    offsets: np.ndarray  # (3, K) crop starts in seconds: base, view a, view b


@dataclass
class PackSummary:
    out: Path | str  # the folder, or the URL of an object store
    pairs: int = 0
    shards: int = 0
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0



# --- pairs ---------------------------------------------------------------------------


def pair_order(n_files: int, seed: int) -> np.ndarray:
    """The order recordings become pairs: a permutation of the listing drawn from ``seed``,
    so ``max_n`` takes a random subset rather than the first folders alphabetically."""
    return np.random.default_rng(seed).permutation(n_files)


def load_pair(root: str, rel: str, file_index: int, config: PackConfig) -> PackedPair:
    """The pair of one recording; raises UnreadableRecording. Pure given the file."""
    path = Path(root) / rel
    try:
        info = sf.info(str(path))
    except Exception as error:
        raise UnreadableRecording(one_line(error, path)) from None
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise UnreadableRecording("no audio frames")
    resampler = Resampler(int(info.samplerate), config.sample_rate)
    length = resampler.target_length(int(info.frames))
    rng = np.random.default_rng([config.seed, file_index])
    starts = plan_crops(length, config.clip, rng, config.temporal_jitter, config.n_layers)
    crops: dict[int, np.ndarray] = {}
    for start in np.unique(starts):
        crops[int(start)] = resampler.read_crop(path, int(start), config.clip, int(info.frames))
    views = []
    for row in (1, 2):
        audio = sum(crops[int(s)] for s in starts[row])
        if config.n_layers > 1:
            audio = audio / (np.max(np.abs(audio)) + MIX_EPS)
        views.append(np.asarray(audio, dtype=np.float32))
    if not all(np.isfinite(v).all() for v in views):
        raise UnreadableRecording("non-finite samples")
    # A stored clip's gain is its peak, and readers refuse gains above the format's bound.
    peak = max(float(np.max(np.abs(v))) for v in views)
    if peak > MAX_GAIN:
        raise UnreadableRecording(f"peak {peak:.3g} exceeds the format's bound on a clip's gain ({MAX_GAIN:g})")
    offsets = starts.astype(np.float64) / config.sample_rate
    return PackedPair(file_index, rel, views[0], views[1], offsets)


# --- the dataset ---------------------------------------------------------------------


def iter_pairs(root: Path, files: list[str], config: PackConfig, workers: int, skipped: list[dict]) -> Iterator[PackedPair]:
    """Pairs in pair order; unreadable recordings are appended to ``skipped``."""
    order = pair_order(len(files), config.seed).tolist()
    if workers <= 0:
        results = (_try_load(str(root), files[f], f, config) for f in order)
        yield from _collect(results, files, order, skipped)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Recordings go to the pool a window at a time: with max_n, packing stops early and
    # at most one window of recordings is read for nothing.
    window = workers * 32
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for begin in range(0, len(order), window):
            chunk = order[begin : begin + window]
            results = pool.map(_try_load, [str(root)] * len(chunk), [files[f] for f in chunk], chunk, [config] * len(chunk), chunksize=4)
            yield from _collect(results, files, chunk, skipped)


def _try_load(root: str, rel: str, file_index: int, config: PackConfig) -> PackedPair | str:
    try:
        return load_pair(root, rel, file_index, config)
    except UnreadableRecording as error:
        return str(error)


def _collect(results, files: list[str], order: list[int], skipped: list[dict]) -> Iterator[PackedPair]:
    for file_index, result in zip(order, results):
        if isinstance(result, str):
            skipped.append({"path": files[file_index], "error": result})
        else:
            yield result


def pack_recipe(config: PackConfig, root: Path, files: list[str], n_shards: int | None) -> dict:
    """The manifest's recipe of a packed dataset: ``source`` in place of ``synth``."""
    return {
        "format": FORMAT_VERSION,
        "source": {
            "kind": "audio-folder",
            "name": root.resolve().name,
            "n_files": len(files),
            "extensions": list(AUDIO_EXTENSIONS),
            "listing_sha256": listing_sha256(root, files),
            "resampler": "scipy.signal.resample_poly (Kaiser window, beta 5), channels averaged to mono",
        },
        "sample_rate": config.sample_rate,
        "duration": config.duration,
        "seed": config.seed,
        "temporal_jitter": config.temporal_jitter,
        "n_layers": config.n_layers,
        "max_n": config.max_n,
        "pairs_per_shard": config.pairs_per_shard,
        "n_shards": n_shards,
        "codec": config.codec,
        "rng": {"derivation": PACK_RNG, "impl": "numpy PCG64"},
    }


def packed_stats(pairs: list[PackedPair]) -> dict:
    clips = np.stack([p.a for p in pairs] + [p.b for p in pairs]).astype(np.float64)
    rms = np.sqrt(np.mean(clips**2, axis=1))
    return {
        "peak": float(np.max(np.abs(clips))),
        "mean_rms": float(rms.mean()),
        "silent_fraction": float(np.mean(rms < SILENCE_RMS)),
        "nonfinite_fraction": 0.0,  # non-finite recordings are skipped, never stored
        "redraws": 0,
    }


def write_packed_shard(out: Store, shard: int, pairs: list[PackedPair], config: PackConfig, first_index: int, recipe_hash: str) -> dict:
    samples = [
        pair_sample(
            first_index + row, config.seed, pair.a, pair.b, pair.offsets[None], config.sample_rate, config.codec,
            extra={"source": pair.source, "file_index": pair.file_index},
        )
        for row, pair in enumerate(pairs)
    ]
    return write_samples(out, shard, samples, packed_stats(pairs), recipe_hash)


def prepare_pack_output(out: Store, overwrite: bool) -> None:
    """Make ``out`` (check the bucket takes objects), clear a killed run's temporaries;
    refuse a folder that holds a dataset (any recipe) unless ``overwrite``, which removes
    what a render or pack writes there."""
    try:
        out.prepare()
    except StorageError as error:
        raise PackError(str(error)) from None
    names = out.names()
    held = MANIFEST_NAME in names or any(name.startswith("pairs-") for name in names)
    if held:
        if not overwrite:
            raise PackError(f"{out.location} already holds a dataset; choose another folder or pass --overwrite")
        clear_dataset(out)


def pack_folder(
    audio_dir: str | os.PathLike,
    out: str | os.PathLike,
    config: PackConfig = PackConfig(),
    *,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> PackSummary:
    """Pack the recordings under ``audio_dir`` into pair shards in ``out`` and write its
    manifest. Deterministic given the recordings and ``config``; ``workers`` (decoding
    processes) does not change the output. ``out``: a folder or a ``file://``, ``s3://``
    or ``gs://`` URL."""
    config.validate()
    root = Path(audio_dir)
    try:
        out = open_store(out)
    except StorageError as error:
        raise PackError(str(error)) from None
    if not root.is_dir():
        raise PackError(f"{root}: no such folder of recordings")
    if workers_problem(workers):
        raise PackError(workers_problem(workers))
    if out.local and out.folder.resolve() == root.resolve():
        raise PackError("the output folder must differ from the folder of recordings")
    summary = PackSummary(out=out.as_given)
    files = list_recordings(root, summary.skipped)
    if not files:
        if summary.skipped:
            raise nothing_readable(root, summary.skipped)
        raise PackError(f"{root}: no {', '.join(AUDIO_EXTENSIONS)} files found")
    prepare_pack_output(out, overwrite)
    # Shards are written before their number is known, so their stats files carry the
    # hash of the recipe with n_shards unset.
    pending_hash = recipe_sha256(pack_recipe(config, root, files, None))
    try:
        # The folder is claimed for this recipe while packing, as a render claims its
        # own (render.output_claim): two packs started together with different options
        # would otherwise both find it empty and mix their shards. Packs of one recipe
        # write the same bytes, so they may share it.
        with claimed_folder(out, pending_hash, existing_recipe_hashes, overwrite, clear_dataset):
            return _pack_into(out, root, files, config, pending_hash, workers, progress, summary)
    except FolderTakenError as error:
        raise PackError(str(error)) from None


def _pack_into(out: Store, root: Path, files: list[str], config: PackConfig, pending_hash: str, workers: int,
               progress: bool, summary: PackSummary) -> PackSummary:
    started = time.perf_counter()
    entries, batch = [], []
    limit = config.max_n if config.max_n is not None else len(files)
    from tqdm import tqdm

    bar = tqdm(total=min(limit, len(files)), unit="pair", desc="pack", disable=not progress)
    try:
        for pair in iter_pairs(root, files, config, workers, summary.skipped):
            batch.append(pair)
            summary.pairs += 1
            bar.update(1)
            if len(batch) == config.pairs_per_shard:
                entries.append(write_packed_shard(out, len(entries), batch, config, summary.pairs - len(batch), pending_hash))
                batch = []
            if summary.pairs >= limit:
                break
        if batch:
            entries.append(write_packed_shard(out, len(entries), batch, config, summary.pairs - len(batch), pending_hash))
    finally:
        bar.close()
        out.remove_dead_temporaries()
    if not entries:
        raise nothing_readable(root, summary.skipped)
    summary.shards = len(entries)
    summary.seconds = time.perf_counter() - started
    write_manifest(out, packed_manifest(config, root, files, entries, summary))
    return summary


def nothing_readable(root: Path, skipped: list[dict]) -> PackError:
    first = skipped[0]
    return PackError(f"{root}: none of the {len(skipped)} recordings could be read (first: {first['path']}: {first['error']})")


def packed_manifest(config: PackConfig, root: Path, files: list[str], entries: list[dict], summary: PackSummary) -> dict[str, Any]:
    """docs/FORMAT.md's manifest for packed audio; ``param_names`` name the crop offsets."""
    names = [
        {"name": f"crop/start_seconds[{k}]", "minimum": 0.0, "maximum": None, "curve": None, "symmetric": None}
        for k in range(config.n_layers)
    ]
    return {
        "recipe": pack_recipe(config, root, files, len(entries)),
        "record": {
            "param_names": names,
            "software": {**software_versions(), "scipy": _scipy_version()},
            "platform": {"backend": "numpy", "device_kind": "cpu"},
            "shards": entries,
            "skipped": summary.skipped,
            "n_skipped": len(summary.skipped),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "render_seconds": round(summary.seconds, 3),
        },
    }


def _scipy_version() -> str | None:
    try:
        import scipy

        return scipy.__version__
    except ImportError:
        return None
