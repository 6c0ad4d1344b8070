"""The training configuration: the paper's defaults in one typed place.

Every run writes ``config.json`` from :meth:`TrainConfig.to_dict`, every checkpoint
holds it, and the CLI overrides single fields. Defaults follow ``shared/REFERENCE.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class DataConfig:
    datasets: list[str] = field(default_factory=list)  # folders or WebDataset URLs, mixed freely
    batch_size: int = 768
    workers: int = 4
    shuffle_buffer: int = 1000
    # < 1: fraction of each dataset's shards held out for validation; >= 1: a count. At least 1.
    val_shards: float = 0.1
    sample_rate: int = 16000  # the rate the model is built for; other datasets are refused


@dataclass
class FeatureConfig:
    """VGGish log-mel input (REFERENCE.md, 'Features fed to the network')."""

    sample_rate: int = 16000
    window_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_fft: int = 512
    n_mels: int = 64
    f_min: float = 125.0
    f_max: float = 7500.0
    log_offset: float = 0.01
    example_frames: int = 96  # 0.96 s


@dataclass
class AugmentConfig:
    """Waveform augmentations drawn per example and per view, then spectrogram masking."""

    enabled: bool = True
    p_highpass: float = 0.5
    highpass_hz: tuple[float, float] = (20.0, 800.0)
    p_lowpass: float = 0.5
    lowpass_hz: tuple[float, float] = (1200.0, 8000.0)
    p_pitch: float = 0.5
    pitch_semitones: float = 2.0
    p_time_shift: float = 0.5
    time_shift_fraction: float = 0.25
    p_impulse_response: float = 0.5
    ir_dir: Optional[str] = None  # impulse responses; convolution skipped when None
    p_specaugment: float = 0.4
    time_masks: int = 4
    time_mask_width: int = 40
    freq_masks: int = 2
    freq_mask_width: int = 20


@dataclass
class ModelConfig:
    model: str = "resnet18"  # "resnet18" (the paper's) or "small" for CPU runs and tests
    width: int = 64  # channels of the first stage; the paper's ResNet-18 has 64
    embedding_dim: int = 512


@dataclass
class LossConfig:
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
    milestones: tuple[float, ...] = (0.775, 0.85, 0.925)  # fractions of the epochs
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
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; or "fp32", "bf16"
    steps_per_epoch: Optional[int] = None  # None: pairs in the training shards // global batch
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
