"""What a run reports: ``metrics.jsonl``, TensorBoard and one line per epoch, on rank 0.

Other ranks get a silent logger, so the loop can call it everywhere.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from doppelgen.format import json_text


class RunLogger:
    """``metrics.jsonl`` (one JSON record a line) and TensorBoard events of a run folder."""

    def __init__(self, run_dir: Path, active: bool, start_epoch: int, start_step: int):
        self.active = active
        self.metrics_path = run_dir / "metrics.jsonl"
        self.writer = None
        if not active:
            return
        # Drop what an earlier invocation logged after the checkpoint this one starts
        # from (all of it for a fresh start): those steps are trained again now.
        kept = []
        if start_epoch > 0 and self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines() if _logged_before(line, start_epoch)]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the earlier invocation's events from start_step on.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)

    def log(self, record: dict[str, Any], prefix: str, tensorboard_skip: tuple[str, ...] = ()) -> None:
        """Append ``record`` (with ``step``) to metrics.jsonl; its numbers go to TensorBoard
        as ``prefix/key``, except ``tensorboard_skip`` (scalars logged there otherwise)."""
        if not self.active:
            return
        with open(self.metrics_path, "a") as handle:
            handle.write(json_text(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch", "split", *tensorboard_skip) and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.active:
            self.writer.add_scalar(tag, value, step)

    def line(self, text: str) -> None:
        """One line on stderr, clear of the progress bar."""
        if self.active:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _logged_before(line: str, epoch: int) -> bool:
    """Whether a metrics.jsonl line is a record of an epoch before ``epoch``; a line cut
    short by a kill is not."""
    try:
        return json.loads(line)["epoch"] < epoch
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def epoch_line(epoch: int, epochs: int, train: dict[str, float], val: Optional[dict[str, float]]) -> str:
    """``epoch 3/200: loss 1.2345 (align 0.51, unif -0.73), lr 0.36, 812 pairs/s, wait 2% |
    val loss 1.30, R@1 0.120, R@10 0.450, median rank 12 of 512``."""
    text = (
        f"epoch {epoch + 1}/{epochs}: loss {train['loss']:.4f} (align {train['alignment']:.3f}, "
        f"unif {train['uniformity']:.3f}), lr {train['lr']:.3g}"
    )
    if train.get("pairs_per_s"):
        text += f", {train['pairs_per_s']:.0f} pairs/s, wait {100 * train['data_wait_fraction']:.0f}%"
    if val:
        text += " | " + validation_text(val)
    return text


def validation_text(val: dict[str, float]) -> str:
    return (
        f"val loss {val['loss']:.4f}, R@1 {val['recall_at_1']:.3f}, R@10 {val['recall_at_10']:.3f}, "
        f"median rank {val['median_rank']:g} of {val['group']}"
    )


def log_pairs(logger: RunLogger, a: torch.Tensor, b: torch.Tensor, spec_a: torch.Tensor, spec_b: torch.Tensor, count: int, sample_rate: int, step: int) -> None:
    """Audio of ``count`` pairs, and their two log-mel images side by side, to TensorBoard."""
    if not logger.active:
        return
    count = min(count, a.shape[0])
    for k in range(count):
        for view, wave in (("a", a[k]), ("b", b[k])):
            peak = wave.abs().max().clamp_min(1e-8)  # the synth is not bounded to [-1, 1]
            logger.writer.add_audio(f"val_pair{k}/{view}", (wave / peak).float().cpu()[None], step, sample_rate=sample_rate)
        # (1, frames, mels) -> (mels, frames), low frequencies at the bottom.
        images = [spec[k, 0].T.flip(0).float().cpu() for spec in (spec_a, spec_b)]
        gap = torch.full((images[0].shape[0], 2), float("nan"))
        image = torch.cat([images[0], gap, images[1]], dim=1)
        finite = image[torch.isfinite(image)]
        image = ((image - finite.min()) / (finite.max() - finite.min()).clamp_min(1e-8)).nan_to_num(1.0)
        logger.writer.add_image(f"val_pair{k}/logmel_a_b", image[None], step, dataformats="CHW")
