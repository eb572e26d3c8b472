"""Learning rate: linear scaling with the global batch, warm-up, then step halving or cosine.

``base_lr`` is the rate for a global batch of 256 clips (Goyal et al.'s linear scaling rule,
which the paper follows): a run with ``G`` clips per step over all processes uses
``base_lr * G / 256``. The rate is a pure function of the step, so a resumed run needs only
the step to continue exactly.

- warm-up: linear from ``warmup_factor * peak`` to ``peak`` over ``warmup_steps`` steps;
- ``step``: the remaining steps split into ``halvings + 1`` equal segments, the rate halving
  at each boundary (the paper halves 13 times over training);
- ``cosine``: half a cosine from ``peak`` to 0 over the remaining steps.
"""

from __future__ import annotations

import math

from r21d.errors import BadOptionError

SCHEDULES = ("step", "cosine")
REFERENCE_BATCH = 256


def peak_lr(base_lr: float, global_batch: int) -> float:
    """``base_lr`` scaled linearly from a 256-clip batch to ``global_batch`` clips."""
    return base_lr * global_batch / REFERENCE_BATCH


def lr_at(
    step: int,
    *,
    peak: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_factor: float = 0.1,
    schedule: str = "step",
    halvings: int = 13,
) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``."""
    if schedule not in SCHEDULES:
        raise BadOptionError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return peak * (warmup_factor + (1 - warmup_factor) * step / warmup_steps)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * 0.5 ** min(halvings, math.floor(progress * (halvings + 1)))
