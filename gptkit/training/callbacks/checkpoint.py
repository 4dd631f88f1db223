"""Checkpoint callback: when to save and how many to keep (the trainer knows how)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.checkpoint import prune_checkpoints
from gptkit.training.train_state import (
    CallbackContext,
    StepMetrics,
    TrainerView,
    TrainSummary,
)

if TYPE_CHECKING:
    from gptkit.registry import Registry


class CheckpointParams(ComponentParams):
    every: int = Field(500, gt=0, description="Save every N optimizer steps.")
    keep_last: int = Field(3, gt=0, description="Delete older checkpoints beyond this many.")
    on_interrupt: bool = Field(True, description="Save when Ctrl-C or SIGTERM stops the run.")


class CheckpointCallback:
    """Saves every `every` steps, at the end and on interruption; keeps the newest `keep_last`."""

    def __init__(self, context: CallbackContext, every: int = 500, keep_last: int = 3, on_interrupt: bool = True) -> None:
        self.context = context
        self.every = every
        self.keep_last = keep_last
        self.on_interrupt = on_interrupt

    def save(self, trainer: TrainerView) -> None:
        # Every process asks: a sharded model is gathered from all of them, and the
        # trainer has only the main process write.
        if trainer.last_checkpoint_step != trainer.state.step:
            trainer.save_checkpoint()
            if self.context.is_main_process:
                prune_checkpoints(self.context.run_dir, self.keep_last)

    @hookimpl
    def gptkit_step_end(self, trainer: TrainerView, metrics: StepMetrics) -> None:
        if metrics.step % self.every == 0:
            self.save(trainer)

    # tryfirst: the closing summary (console callback) names the final checkpoint.
    @hookimpl(tryfirst=True)
    def gptkit_train_end(self, trainer: TrainerView, summary: TrainSummary) -> None:
        self.save(trainer)

    @hookimpl(tryfirst=True)
    def gptkit_exception(self, trainer: TrainerView, error: BaseException) -> None:
        if self.on_interrupt and isinstance(error, KeyboardInterrupt):
            self.save(trainer)


# --- registration: `train.callbacks = [..., "checkpoint"]`; called as factory(context, **params)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "checkpoint", CheckpointCallback, params=CheckpointParams, description="Save every N steps, at the end and on Ctrl-C; keep the last K")
