"""`tensorboard`: the run's figures as TensorBoard event files in `run_dir/tensorboard/`.

`tensorboard --logdir runs/` then draws every run side by side. Needs the
`tensorboard` package (`pip install -e ".[tensorboard]"`); torch's own
`SummaryWriter` writes the files. A resumed run opens the writer with
`purge_step` one past the checkpoint's step: TensorBoard then hides what the
lost stretch of the earlier attempt logged past it, so each step appears once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.callbacks.scalars import ScalarLogger, import_optional
from gptkit.training.train_state import CallbackContext, TrainerView

if TYPE_CHECKING:
    from gptkit.registry import Registry

LOG_DIR = "tensorboard"


class TensorBoardParams(ComponentParams):
    flush_secs: int = Field(30, gt=0, description="Write pending events to disk at least this often.")


class TensorBoardLogger(ScalarLogger):
    def __init__(self, context: CallbackContext, flush_secs: int = 30) -> None:
        import_optional("tensorboard", "tensorboard", "tensorboard")  # before the run starts, not at its first step
        self.context = context
        self.flush_secs = flush_secs
        self.writer: Any = None

    def write(self, step: int, scalars: dict[str, float], *, new_step: bool) -> None:
        if self.writer is not None:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, global_step=step)

    @hookimpl
    def gptkit_train_start(self, trainer: TrainerView) -> None:
        if not self.context.is_main_process:
            return
        from torch.utils.tensorboard import SummaryWriter

        step = trainer.state.step
        self.writer = SummaryWriter(
            log_dir=str(self.context.run_dir / LOG_DIR), purge_step=step + 1 if step else None, flush_secs=self.flush_secs
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "tensorboard", TensorBoardLogger, params=TensorBoardParams, description="Write the figures as TensorBoard events in tensorboard/")
