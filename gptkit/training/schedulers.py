"""Learning-rate schedules: pure functions of the step, so a resume needs no scheduler state.

Every schedule warms up linearly from 0 to `max_lr` over `warmup_steps` (large
early updates with fresh Adam statistics are what blow up small-batch runs),
then follows its own shape towards `min_lr` at `total_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.registry import Registry

Schedule = Callable[[int], float]


class WarmupParams(ComponentParams):
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to max_lr.")


class WSDParams(WarmupParams):
    decay_fraction: float = Field(0.2, gt=0, le=1, description="Final share of the steps spent decaying.")


def warmup(step: int, max_lr: float, warmup_steps: int) -> float | None:
    """The warm-up lr for `step` (counted from 0), or None once warm-up is over."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return None


def progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """0 at the end of warm-up, 1 at `total_steps`, clamped."""
    span = max(1, total_steps - warmup_steps)
    return min(1.0, max(0.0, (step - warmup_steps) / span))


def cosine(max_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> Schedule:
    """Warm-up, then half a cosine from max_lr down to min_lr (GPT-2/3 reproductions)."""

    def lr(step: int) -> float:
        early = warmup(step, max_lr, warmup_steps)
        if early is not None:
            return early
        return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress(step, warmup_steps, total_steps)))

    return lr


def linear(max_lr: float, min_lr: float, total_steps: int, warmup_steps: int) -> Schedule:
    """Warm-up, then a straight line from max_lr down to min_lr."""

    def lr(step: int) -> float:
        early = warmup(step, max_lr, warmup_steps)
        if early is not None:
            return early
        return max_lr + (min_lr - max_lr) * progress(step, warmup_steps, total_steps)

    return lr


def constant(max_lr: float, min_lr: float, total_steps: int | None, warmup_steps: int) -> Schedule:
    """Warm-up, then max_lr for ever (min_lr is unused)."""

    def lr(step: int) -> float:
        early = warmup(step, max_lr, warmup_steps)
        return max_lr if early is None else early

    return lr


def warmup_stable_decay(max_lr: float, min_lr: float, total_steps: int, warmup_steps: int, decay_fraction: float) -> Schedule:
    """Warm-up, a long plateau at max_lr, then a linear decay over the last `decay_fraction`.

    The plateau's checkpoints can be branched into decays of any length later
    (MiniCPM, "WSD"), which a cosine fixed to one length cannot.
    """
    decay_start = max(warmup_steps, total_steps - int(round(decay_fraction * total_steps)))

    def lr(step: int) -> float:
        early = warmup(step, max_lr, warmup_steps)
        if early is not None:
            return early
        if step < decay_start:
            return max_lr
        return max_lr + (min_lr - max_lr) * progress(step, decay_start, total_steps)

    return lr


# --- registration: `train.scheduler = "cosine"` ...; called as factory(max_lr=, min_lr=, total_steps=, **params)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("scheduler", "cosine", cosine, params=WarmupParams, description="Linear warm-up, cosine decay to min_lr (GPT-2/3)")
    registry.register("scheduler", "linear", linear, params=WarmupParams, description="Linear warm-up, linear decay to min_lr")
    registry.register("scheduler", "constant", constant, params=WarmupParams, description="Linear warm-up, then constant lr")
    registry.register("scheduler", "wsd", warmup_stable_decay, params=WSDParams, description="Warm-up, stable plateau, linear decay at the end")
