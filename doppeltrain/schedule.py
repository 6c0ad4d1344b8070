"""The optimizer and its learning rate, a plain function of the step (as nanoGPT's).

The reference steps a MultiStepLR once per epoch at 77.5 %, 85 % and 92.5 % of its 200
epochs. Here the milestones are those fractions of the run's total steps: at the
reference's epoch length (117 steps) they fall on the same steps (18,135, 19,890 and
21,645 of 23,400), and a run of any length keeps the schedule's shape instead of
collapsing it (``int(0.775 * 1)`` epochs is 0: a one-epoch run would train at lr x 0.001).
"""

from __future__ import annotations

import torch

from doppeltrain.config import OptimConfig

OPTIMIZERS = ("sgd", "adam")
REFERENCE_BATCH = 256  # the batch the reference's SGD learning rate is quoted for
SGD_BASE_LR = 0.12
ADAM_LR = 1e-3
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-6, "adam": 1e-4}


def base_learning_rate(optim: OptimConfig, batch_size: int, world_size: int) -> float:
    """The learning rate before any milestone: ``optim.lr`` if set, else the reference's rule.

    SGD: ``0.12 * batch_size / 256 * world_size``, the linear scaling rule. The
    reference writes ``batch // 256``, which is 0 below 256 and a staircase above; the
    two agree at every multiple of 256 (the paper's 768 gives 0.36 on one GPU), and the
    ratio keeps small CPU batches trainable. Adam: 1e-3.
    """
    if optim.lr is not None:
        return optim.lr
    if optim.optimizer == "adam":
        return ADAM_LR
    return SGD_BASE_LR * batch_size / REFERENCE_BATCH * world_size


def weight_decay(optim: OptimConfig) -> float:
    return optim.weight_decay if optim.weight_decay is not None else DEFAULT_WEIGHT_DECAY[optim.optimizer]


def milestone_steps(total_steps: int, fractions: tuple[float, ...]) -> list[int]:
    """Steps from which the learning rate is multiplied by gamma once more:
    18,135, 19,890 and 21,645 for the reference's 23,400 steps."""
    return [int(fraction * total_steps) for fraction in fractions]


def learning_rate_at(step: int, base_lr: float, milestones: list[int], gamma: float) -> float:
    """The learning rate of optimizer step ``step`` (0-based): ``base_lr`` times gamma for
    every milestone already reached."""
    return base_lr * gamma ** sum(step >= milestone for milestone in milestones)


def build_optimizer(params, optim: OptimConfig, base_lr: float) -> torch.optim.Optimizer:
    if optim.optimizer == "adam":
        return torch.optim.Adam(params, lr=base_lr, weight_decay=weight_decay(optim))
    # The reference gives SGD no momentum.
    return torch.optim.SGD(params, lr=base_lr, weight_decay=weight_decay(optim))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
