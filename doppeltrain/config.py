"""The training configuration: the paper's defaults in one typed place.

Every run writes ``config.json`` from :meth:`TrainConfig.to_dict`, every checkpoint
holds it, and the CLI overrides single fields. Defaults follow ``docs/REFERENCE.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

# The reference's epoch: 117 steps of 768 pairs (docs/REFERENCE.md, 'Pair generation').
REFERENCE_PAIRS_PER_EPOCH = 117 * 768


@dataclass
class DataConfig:
    # Frozen datasets (folders or WebDataset URLs) and streamed recipes (recipe JSON files
    # or a dataset's manifest.json, rendered on the fly), mixed freely.
    datasets: list[str] = field(default_factory=list)
    batch_size: int = 768
    # Loader worker processes per rank; None: sized to the machine when fit starts (up to
    # 16 per GPU, 4 on the CPU: machine.default_loader_workers) and written into the run's
    # config. The data order depends on it: pin it to repeat a run on another machine.
    workers: Optional[int] = None
    shuffle_buffer: int = 1000
    # < 1: fraction of each dataset's shards held out for validation; >= 1: a count. At least 1.
    val_shards: float = 0.1
    sample_rate: int = 16000  # the rate the model is built for; other datasets are refused
    # Where streamed recipes render: "cpu" (loader workers, spawned), "gpu" (the training
    # GPU, in the main process) or "auto" (gpu when training on CUDA and JAX sees a GPU).
    render_on: str = "auto"
    # Streamed recipes: None renders every step at the recipe's delta (the paper's). A
    # number ramps delta linearly from it at step 0 to the recipe's delta at delta_ramp
    # of the run's steps, the recipe's delta after. Validation uses the recipe's delta.
    delta_from: Optional[float] = None
    delta_ramp: float = 0.5


@dataclass
class FeatureConfig:
    """VGGish log-mel input (docs/REFERENCE.md, 'Features fed to the network')."""

    sample_rate: int = 16000
    window_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_fft: int = 512
    n_mels: int = 64
    f_min: float = 125.0
    f_max: float = 7500.0
    log_offset: float = 0.01
    example_frames: int = 96  # 0.96 s


AUGMENT_MODES = ("waveform", "specaugment", "masking", "none")


@dataclass
class AugmentConfig:
    """Exactly one augmentation mode (docs/REFERENCE.md, 'Augmentations'; ``augment.py`` says
    what each does and where it deliberately differs from the reference).

    ``waveform`` (the reference's default): high-pass, low-pass, pitch shift, time shift
    and impulse-response convolution, each with its own probability, drawn per example
    and per view. ``specaugment`` and ``masking`` are the reference's two log-mel
    alternatives, with torchaudio's meaning of ``p`` (the largest fraction of the axis
    one mask may cover; every example is masked). ``none``: no augmentation.
    """

    mode: str = "waveform"
    # waveform mode
    p_highpass: float = 0.5
    highpass_hz: tuple[float, float] = (20.0, 800.0)
    p_lowpass: float = 0.5
    lowpass_hz: tuple[float, float] = (1200.0, 8000.0)
    p_pitch: float = 0.5
    pitch_semitones: float = 2.0
    p_time_shift: float = 0.5
    time_shift_fraction: float = 0.25
    p_impulse_response: float = 0.5
    # Folder of impulse responses; None: the default set (doppelgen irs), rendered into
    # the cache on first use.
    ir_dir: Optional[str] = None
    # specaugment mode: torchaudio.transforms.SpecAugment's arguments (iid_masks=True,
    # zero_masking=False). A mask's width is int(u * max) with max = mask_param capped at
    # p x the axis: p is a width cap, not a probability.
    specaugment_n_time_masks: int = 4
    specaugment_time_mask_param: int = 40
    specaugment_n_freq_masks: int = 2
    specaugment_freq_mask_param: int = 20
    specaugment_p: float = 0.4
    # masking mode: FrequencyMasking(freq_mask_param) then TimeMasking(time_mask_param,
    # p=masking_time_p), masks filled with 0, drawn per example.
    masking_freq_mask_param: int = 40
    masking_time_mask_param: int = 40
    masking_time_p: float = 0.2


@dataclass
class ModelConfig:
    model: str = "resnet18"  # "resnet18" (the paper's) or "small" for CPU runs and tests
    width: int = 64  # channels of the first stage; the paper's ResNet-18 has 64
    embedding_dim: int = 512


@dataclass
class LossConfig:
    # "align_uniform": the paper's alignment + uniformity (Wang & Isola, 2020).
    # "infonce": symmetric InfoNCE (cross-entropy of each view's pair among the batch's
    # other views, both ways) at `temperature`, an option for short CPU runs: at delta
    # 0.25 it moved held-out ranks faster than the paper's loss (experiments/learn_notes.md).
    # Alignment and uniformity are still logged under either.
    objective: str = "align_uniform"
    temperature: float = 0.2  # infonce only
    align_weight: float = 1.0
    unif_weight: float = 1.0
    alpha: float = 2.0
    t: float = 2.0


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # "sgd" or "adam"
    # None: SGD 0.12 * batch / 256 * world size (the reference writes batch // 256, which is
    # 0 below 256; the two agree at multiples of 256), Adam 1e-3.
    lr: Optional[float] = None
    # None: SGD 1e-6, Adam 1e-4.
    weight_decay: Optional[float] = None
    # Fractions of the run's total steps after which the lr is multiplied by gamma: at
    # the reference's epoch length these are its per-epoch milestones (155, 170, 185 of
    # 200 epochs), and any run length keeps the schedule's shape.
    milestones: tuple[float, ...] = (0.775, 0.85, 0.925)
    gamma: float = 0.1


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 200
    seed: int = 0
    run: str = "run"
    runs_dir: str = "runs"
    val_every: int = 10
    checkpoint_every: int = 10
    device: str = "auto"  # auto: cuda, then mps, then cpu
    # auto: bf16 autocast on a GPU that has bf16 in hardware (CUDA compute capability 8.0
    # and later), fp32 elsewhere (older GPUs emulate bf16, slower than fp32); or "fp32", "bf16".
    precision: str = "auto"
    # Pairs an epoch trains on (the reference's 117 batches of 768); None: one pass over
    # the training shards. Each epoch reads them from a fresh shuffled shard order.
    pairs_per_epoch: Optional[int] = REFERENCE_PAIRS_PER_EPOCH
    steps_per_epoch: Optional[int] = None  # overrides pairs_per_epoch // global batch when set
    # Validation retrieval (view a -> view b) is measured within groups of this many pairs.
    retrieval_group: int = 512
    log_every: int = 10
    # Continue runs_dir/run from its latest checkpoint; the options must match the run's
    # (only the fields in train.RESUME_MAY_CHANGE may differ).
    resume: bool = False
    # End this invocation after this many completed epochs, the schedule still spanning
    # `epochs` (time-limited jobs; continue with resume). None: run to `epochs`.
    until_epoch: Optional[int] = None
    val_audio_pairs: int = 10  # pairs whose audio and log-mel images go to TensorBoard
    progress: bool = True  # tqdm bar on rank 0
    # Each rank writes audit-rank{r}.jsonl (the pair keys it trained on, its final weight
    # digest): evidence that ranks saw disjoint data and ended equal.
    audit: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, data)


def _from_dict(cls, data: dict[str, Any]):
    """Rebuild a (nested) config dataclass; unknown keys are an error, not ignored."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(sorted(unknown))}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            values[name] = _from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            values[name] = tuple(value)
        else:
            values[name] = value
    return cls(**values)
