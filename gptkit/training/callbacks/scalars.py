"""What the experiment loggers record: the same figures `metrics.jsonl` holds, under tracker-style names.

`train/loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_sec`,
`train/mfu` (when a peak is known) per step; `val/loss` and `val/<score>` (an
`evaluate` callback's or a classifier's figures) per evaluation. Each logger
(`tensorboard`, `wandb`, `csv`) writes these at the step they belong to, so its
curves and `metrics.jsonl` agree value for value.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from gptkit.errors import GptkitError
from gptkit.training.train_state import EvalMetrics, StepMetrics


def step_scalars(metrics: StepMetrics) -> dict[str, float]:
    scalars = {
        "train/loss": metrics.loss,
        "train/lr": metrics.lr,
        "train/grad_norm": metrics.grad_norm,
        "train/tokens_per_sec": metrics.tokens_per_sec,
    }
    if metrics.mfu is not None:
        scalars["train/mfu"] = metrics.mfu
    return scalars


def eval_scalars(metrics: EvalMetrics) -> dict[str, float]:
    return {"val/loss": metrics.val_loss, **{f"val/{name}": value for name, value in metrics.scores.items()}}


def import_optional(module: str, callback: str, extra: str) -> ModuleType:
    """`module`, or the message that names the pip extra which installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GptkitError(
            f"callback '{callback}' needs the {extra} package, which is not installed: pip install -e \".[{extra}]\""
        ) from None
