"""Per-step learning-rate and momentum schedules.

* Linear warmup then half-cosine decay (Goyal et al. 2017 warmup; Loshchilov & Hutter 2017
  SGDR cosine), as in SimCLR, MoCo v3 and MAE, but stepped per optimiser step.
  :class:`WarmupCosine` is a picklable ``LambdaLR`` factor, so its settings are saved in the
  scheduler's ``state_dict`` and a resumed run continues on the same curve.
* :func:`cosine_momentum`: the BYOL / MoCo v3 target-network momentum schedule
  ``m = 1 - (1 - m0) * (cos(pi * k / K) + 1) / 2``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from medcl.errors import ConfigError
from medcl.lookup import look_up


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """LR multiplier at optimiser step ``step`` (0-based: the factor used by step ``step + 1``).

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first update already
    moves, the last warmup step reaches the peak 1.0). Then
    ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at the end
    of warmup to 1 at ``total_steps``; steps past the end stay at ``min_ratio``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def constant_with_warmup(step: int, *, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup then 1.0 (``total_steps``/``min_ratio`` unused)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


#: schedule name -> pure multiplier function(step, *, total_steps, warmup_steps, min_ratio)
SCHEDULES = {"cosine": warmup_cosine, "constant": constant_with_warmup}


class WarmupCosine:
    """Callable LR factor for ``LambdaLR`` (an object, not a lambda, so it is checkpointed).

    Args:
        total_steps: optimiser steps in the whole run.
        warmup_steps: linear-warmup steps.
        min_ratio: final LR as a fraction of the base LR.
        name: a key of :data:`SCHEDULES`.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0,
                 name: str = "cosine") -> None:
        """Keep the schedule's settings (plain attributes, so ``LambdaLR`` checkpoints them)."""
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_ratio = float(min_ratio)
        self.name = str(name)

    def __call__(self, step: int) -> float:
        """The LR factor at optimiser step ``step``."""
        return SCHEDULES[self.name](step, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                                    min_ratio=self.min_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
    name: str = "cosine",
) -> LambdaLR:
    """A per-step ``LambdaLR``: call ``scheduler.step()`` after every optimiser step.

    Raises:
        ConfigError: unknown schedule name, non-positive ``total_steps``, warmup not shorter
            than the run, ``min_lr_ratio`` outside [0, 1].
    """
    look_up(name, SCHEDULES, what="LR schedule", where="schedule.name")
    if total_steps < 1:
        raise ConfigError(f"total_steps must be >= 1, got {total_steps}", where="schedule.total_steps",
                          fix="train for at least one optimiser step (check epochs and batch size)")
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(
            f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})",
            where="schedule.warmup_steps", fix="use fewer warmup steps or more epochs",
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]", where="schedule.min_lr_ratio",
                          fix="give the final LR as a fraction of the base LR, e.g. 0.01")
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_lr_ratio, name))


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """Target-network momentum at ``step`` (BYOL, Grill et al. 2020; MoCo v3).

    ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``: ``base`` at step 0,
    ``final`` at ``total_steps``.
    """
    t = min(1.0, max(0.0, step / max(1, total_steps)))
    return final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0
