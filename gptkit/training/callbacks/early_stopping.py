"""Stop training when the loss is low enough, or has stopped improving.

- `target_loss`: stop once the monitored loss (each step's train loss, or each
  evaluation's val loss) is below it.
- `patience`: stop after that many evaluations in a row without a val loss
  better than the best so far by more than `min_delta`.

With neither set the callback does nothing (it is in the default callback list).

The patience count starts from the trainer's `state.best_val_loss` and
`state.evals_without_improvement`, which a checkpoint restores, so it survives a
resume. With `min_delta` = 0 it is the trainer's own count; with `min_delta` > 0
a resume restarts it from the trainer's (never larger) count, so a resumed run
may stop later than an uninterrupted one, never earlier.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.train_state import (
    CallbackContext,
    EvalMetrics,
    StepMetrics,
    TrainerView,
)

if TYPE_CHECKING:
    from gptkit.registry import Registry


class EarlyStoppingParams(ComponentParams):
    target_loss: float | None = Field(None, description="Stop once the monitored loss is below this.")
    monitor: Literal["train", "val"] = Field("val", description="Which loss target_loss applies to.")
    patience: int | None = Field(None, ge=1, description="Stop after this many evaluations without a new best val loss.")
    min_delta: float = Field(0.0, ge=0, description="How much a val loss must beat the best to count as better.")


class EarlyStoppingCallback:
    """Calls trainer.request_stop() on a target loss or a patience limit (main process only)."""

    def __init__(
        self,
        context: CallbackContext,
        target_loss: float | None = None,
        monitor: Literal["train", "val"] = "val",
        patience: int | None = None,
        min_delta: float = 0.0,
    ) -> None:
        self.context = context
        self.target_loss = target_loss
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.stale = 0  # evaluations since the last improvement

    def below_target(self, loss: float) -> bool:
        return self.target_loss is not None and loss < self.target_loss

    @hookimpl
    def gptkit_train_start(self, trainer: TrainerView) -> None:
        self.best = trainer.state.best_val_loss
        self.stale = trainer.state.evals_without_improvement

    @hookimpl
    def gptkit_step_end(self, trainer: TrainerView, metrics: StepMetrics) -> None:
        if self.context.is_main_process and self.monitor == "train" and self.below_target(metrics.loss):
            trainer.request_stop(f"train loss {metrics.loss:.4f} is below the target {self.target_loss:g}")

    @hookimpl
    def gptkit_evaluate(self, trainer: TrainerView, metrics: EvalMetrics) -> None:
        if not self.context.is_main_process:
            return
        if self.monitor == "val" and self.below_target(metrics.val_loss):
            trainer.request_stop(f"val loss {metrics.val_loss:.4f} is below the target {self.target_loss:g}")
            return
        if self.patience is None:
            return
        if metrics.val_loss < self.best - self.min_delta:
            self.best, self.stale = metrics.val_loss, 0
        else:
            self.stale += 1
        if self.stale >= self.patience:
            trainer.request_stop(
                f"val loss has not improved on {self.best:.4f} by more than {self.min_delta:g} "
                f"in {self.stale} evaluations (patience {self.patience})"
            )


# --- registration: `train.callbacks = [..., "early_stopping"]`; called as factory(context, **params)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "early_stopping", EarlyStoppingCallback, params=EarlyStoppingParams, description="Stop at a target loss, or after `patience` evals without a new best")
