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
from gptkit.hookspecs import hookimpl
from gptkit.training.train_state import (
    EvalMetrics,
    StepMetrics,
    TrainerView,
    TrainSummary,
)


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


class ScalarLogger:
    """What every logger does alike: each step's and each evaluation's figures to `write`, `close` at the end.

    A logger opens its file or run in `gptkit_train_start` (main process only) and
    makes `write` a no-op until then.
    """

    def write(self, step: int, scalars: dict[str, float], *, new_step: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @hookimpl
    def gptkit_step_end(self, trainer: TrainerView, metrics: StepMetrics) -> None:
        self.write(metrics.step, step_scalars(metrics), new_step=True)

    @hookimpl
    def gptkit_evaluate(self, trainer: TrainerView, metrics: EvalMetrics) -> None:
        self.write(metrics.step, eval_scalars(metrics), new_step=False)  # after its step's training figures

    @hookimpl
    def gptkit_train_end(self, trainer: TrainerView, summary: TrainSummary) -> None:
        self.close()

    @hookimpl
    def gptkit_exception(self, trainer: TrainerView, error: BaseException) -> None:
        self.close()
