"""The learning-rate schedule shared by every trainer: linear warm-up, then linear or cosine decay."""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "lr_factor"]

SCHEDULES = ("cosine", "linear")


def lr_factor(step: int, total_steps: int, warmup: int = 0, schedule: str = "cosine") -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based) of
    ``total_steps``: linear warm-up ``(step + 1) / warmup`` over the first ``warmup`` steps,
    then a decay over the rest to 0 at ``step == total_steps``: ``1 - p`` (``"linear"``) or
    ``(1 + cos(pi p)) / 2`` (``"cosine"``) with ``p = (step - warmup) / (total_steps - warmup)``.

    Neither phase spends a step at learning rate 0. Usable as a ``torch.optim.lr_scheduler.LambdaLR``
    lambda: ``LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 1.0 - p if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
