"""Progress in the terminal while training runs, and a summary when it stops.

In a terminal: a rich live display (progress bar with ETA, or elapsed time when
the run has no step budget, and the latest figures); evaluations and samples are
printed above it. Without a terminal (CI, a pipe, `> log.txt`) there is no live
display at all, only a plain line every `plain_every` steps, so logs hold no
cursor movements and nothing is redrawn.

Every callback prints through `shared_console()`: output from one console goes
above that console's live display instead of tearing through it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from pydantic import Field
from rich.console import Console, RenderableType
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.train_state import (
    CallbackContext,
    EvalMetrics,
    StepMetrics,
    TrainerView,
    TrainSummary,
)

if TYPE_CHECKING:
    from gptkit.registry import Registry


@functools.cache
def shared_console() -> Console:
    """The console all callbacks print through (one per process)."""
    return Console()


class ConsoleParams(ComponentParams):
    refresh_every: int = Field(1, ge=1, description="Update the live display every N steps.")
    plain_every: int = Field(50, ge=1, description="Without a terminal: print a plain progress line every N steps.")


def fmt_loss(value: float | None) -> str:
    return "n/a" if value is None or math.isinf(value) else f"{value:.4f}"


def fmt_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def stats_line(m: StepMetrics, val_loss: float | None) -> str:
    mfu = "n/a" if m.mfu is None else f"{m.mfu:.1%}"
    return (
        f"loss {fmt_loss(m.loss)}  val {fmt_loss(val_loss)}  lr {m.lr:.2e}  "
        f"grad {m.grad_norm:.2f}  {m.tokens_per_sec:,.0f} tok/s  mfu {mfu}"
    )


class TrainProgress(Progress):
    """A progress bar with one line of figures under it."""

    stats: RenderableType = ""

    def get_renderables(self) -> Generator[RenderableType, None, None]:
        yield self.make_tasks_table(self.tasks)
        yield self.stats


class ConsoleCallback:
    """Live progress display and closing summary (main process only)."""

    def __init__(
        self, context: CallbackContext, refresh_every: int = 1, plain_every: int = 50, console: Console | None = None
    ) -> None:
        self.context = context
        self.refresh_every = refresh_every
        self.plain_every = plain_every
        self.console = console if console is not None else shared_console()
        self.progress: TrainProgress | None = None
        self.task: TaskID | None = None
        self.val_loss: float | None = None
        self.first_step = 0  # step this process started from, for the plain-mode ETA
        self.started_at = 0.0

    @property
    def active(self) -> bool:
        return self.context.is_main_process

    def print(self, *objects: Any, **kwargs: Any) -> None:
        # Run names, paths and model output are data, never rich markup.
        self.console.print(*objects, markup=False, highlight=False, **kwargs)

    @hookimpl
    def gptkit_train_start(self, trainer: TrainerView) -> None:
        if not self.active:
            return
        state, total = trainer.state, self.context.total_steps
        self.first_step, self.started_at = state.step, time.monotonic()
        self.val_loss = state.last_val_loss
        budget = f"{total:,} steps" if total is not None else "no step budget"
        verb = f"resuming at step {state.step:,}" if state.step else "training"
        self.print(f"{verb} ({budget}) -> {self.context.run_dir}", soft_wrap=True)
        if self.console.is_terminal and not self.console.is_dumb_terminal:
            self.progress = TrainProgress(*self.columns(total), console=self.console, refresh_per_second=4)
            self.task = self.progress.add_task("train", total=total, completed=state.step)
            self.progress.start()

    def columns(self, total: int | None) -> list[ProgressColumn | str]:
        columns: list[ProgressColumn | str] = [SpinnerColumn(), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        if total is not None:
            columns += [TextColumn("eta"), TimeRemainingColumn()]
        return columns

    @hookimpl
    def gptkit_step_end(self, trainer: TrainerView, metrics: StepMetrics) -> None:
        if not self.active:
            return
        if self.progress is not None and self.task is not None:
            if metrics.step % self.refresh_every == 0 or metrics.step == self.context.total_steps:
                self.progress.stats = Text(stats_line(metrics, self.val_loss))
                self.progress.update(self.task, completed=metrics.step)
        elif metrics.step % self.plain_every == 0:
            self.print(self.plain_line(metrics), soft_wrap=True)

    def plain_line(self, m: StepMetrics) -> str:
        total = self.context.total_steps
        line = f"step {m.step:,}" + (f"/{total:,}" if total is not None else "")
        line += f"  {stats_line(m, self.val_loss)}  elapsed {fmt_duration(m.elapsed)}"
        done = m.step - self.first_step
        if total is not None and done > 0:
            per_step = (time.monotonic() - self.started_at) / done
            line += f"  eta {fmt_duration(per_step * max(total - m.step, 0))}"
        return line

    @hookimpl
    def gptkit_evaluate(self, trainer: TrainerView, metrics: EvalMetrics) -> None:
        if not self.active:
            return
        self.val_loss = metrics.val_loss
        mark = "  (new best)" if metrics.improved else f"  (best {fmt_loss(metrics.best_val_loss)})"
        scores = "".join(f"  {name} {value:.1%}" for name, value in metrics.scores.items())
        self.print(f"step {metrics.step:,}: val loss {fmt_loss(metrics.val_loss)}{mark}{scores}")

    # Wrappers: the summary comes after every other callback's last words (final
    # sample, loss plot), and the live display stops even when one of them raises.
    @hookimpl(wrapper=True)
    def gptkit_train_end(self, trainer: TrainerView, summary: TrainSummary) -> Generator[None, Any, Any]:
        try:
            result = yield
        finally:
            self.stop_live(summary.steps)
        if self.active:
            self.print_summary(trainer, summary)
        return result

    @hookimpl(wrapper=True)
    def gptkit_exception(self, trainer: TrainerView, error: BaseException) -> Generator[None, Any, Any]:
        try:
            return (yield)
        finally:
            self.stop_live(trainer.state.step)
            if self.active:
                self.print_failure(trainer, error)

    def stop_live(self, step: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=step)
            self.progress.stop()
        self.progress = self.task = None

    def print_summary(self, trainer: TrainerView, s: TrainSummary) -> None:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, value in [
            ("steps", f"{s.steps:,}"),
            ("tokens", f"{s.tokens_seen:,}"),
            ("time", fmt_duration(s.elapsed)),
            ("final train loss", fmt_loss(s.final_train_loss)),
            ("final val loss", fmt_loss(s.final_val_loss)),
            ("best val loss", fmt_loss(s.best_val_loss)),
            ("stopped", s.stop_reason),
        ]:
            table.add_row(key, Text(value))
        self.console.print(Panel(table, title="training finished", title_align="left", expand=False))
        # Paths go on plain soft-wrapped lines so they can be copied whole.
        plot = s.run_dir / "loss.png"
        self.print(f"run dir:         {s.run_dir}", soft_wrap=True)
        self.print(f"last checkpoint: {trainer.last_checkpoint or 'none saved'}", soft_wrap=True)
        if plot.is_file():
            self.print(f"loss plot:       {plot}", soft_wrap=True)

    def print_failure(self, trainer: TrainerView, error: BaseException) -> None:
        step = trainer.state.step
        if isinstance(error, KeyboardInterrupt):
            # The command that stopped says how to go on, once: it knows whether a checkpoint was kept.
            self.print(f"Interrupted at step {step:,}.")
        else:
            self.print(f"Training failed at step {step:,}: {type(error).__name__}: {error}", soft_wrap=True)


# --- registration: `train.callbacks = [..., "console"]`; called as factory(context, **params)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "console", ConsoleCallback, params=ConsoleParams, description="Live progress bar and figures in the terminal, summary at the end")
