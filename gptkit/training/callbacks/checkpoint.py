"""Checkpoint callback: when to save and how many to keep (the trainer knows how)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.checkpoint import prune_checkpoints
from gptkit.training.train_state import (
    CallbackContext,
    EvalMetrics,
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
    keep_best: bool = Field(False, description="Also keep the checkpoint of the lowest validation loss, as checkpoints/best.")


BEST = "best"


def keep_as_best(checkpoint: Path) -> Path:
    """Make `checkpoints/best` hold `checkpoint`'s files, replacing the previous best whole.

    Hard links, not copies: checkpoint files are written once and never changed,
    so the best costs no disk until pruning deletes its step folder.
    """
    best = checkpoint.parent / BEST
    staged, retired = checkpoint.parent / ".best-new", checkpoint.parent / ".best-old"
    for leftover in (staged, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(checkpoint, staged, copy_function=_link)
    if best.exists():
        best.rename(retired)
    staged.rename(best)
    shutil.rmtree(retired, ignore_errors=True)
    return best


def _link(src: str, dst: str) -> None:
    try:
        Path(dst).hardlink_to(src)
    except OSError:  # a filesystem without hard links
        shutil.copy2(src, dst)


class CheckpointCallback:
    """Saves every `every` steps, at the end and on interruption; keeps the newest `keep_last`
    (and, with `keep_best`, the one of the lowest validation loss)."""

    def __init__(
        self, context: CallbackContext, every: int = 500, keep_last: int = 3, on_interrupt: bool = True, keep_best: bool = False
    ) -> None:
        self.context = context
        self.every = every
        self.keep_last = keep_last
        self.on_interrupt = on_interrupt
        self.keep_best = keep_best

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

    @hookimpl
    def gptkit_evaluate(self, trainer: TrainerView, metrics: EvalMetrics) -> None:
        if self.keep_best and metrics.improved:
            self.save(trainer)
            if self.context.is_main_process and trainer.last_checkpoint is not None:
                keep_as_best(trainer.last_checkpoint)

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
