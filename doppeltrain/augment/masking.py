"""torchaudio's spectrogram masking rule, drawn per example from uniforms the caller gives.

``torchaudio.functional.mask_along_axis_iid``: with ``max = mask_param`` when ``p`` is 1
and ``min(mask_param, int(p * size))`` otherwise, a mask covers
``[int(s), int(s) + int(v))`` where ``v = u1 * max`` and ``s = u2 * (size - v)`` for two
uniforms ``u1, u2``. So ``p`` caps a mask's width at a fraction of the axis; it is not a
probability, and every example gets its masks (a mask is empty only when ``int(v)`` is 0).
"""

from __future__ import annotations

import torch


def mask_param(param: int, p: float, size: int) -> int:
    """The largest ``v`` a mask draws from: torchaudio's ``_get_mask_param``. Widths are
    ``int(v)``, so they stay below it."""
    return param if p == 1.0 else min(param, int(size * p))


def axis_mask(value_uniform: torch.Tensor, start_uniform: torch.Tensor, param: int, size: int) -> torch.Tensor:
    """(N,) uniforms -> (N, size) booleans: one band per row, torchaudio's rule with
    ``param`` already capped by :func:`mask_param`. Computed in the uniforms' dtype, as
    torchaudio computes in the spectrogram's, so the same uniforms give the same bands."""
    value = value_uniform * param
    start = (start_uniform * (size - value)).long()
    end = start + value.long()
    positions = torch.arange(size, device=value_uniform.device)
    return (positions >= start[:, None]) & (positions < end[:, None])
