"""`run_dir/loss.png`: train and validation loss against step.

Redrawn at each evaluation and at the end from `metrics.jsonl` (written by the
`metrics` callback, which this one needs), so a resumed run's picture shows its
whole history and nothing is kept in memory between drawings. matplotlib is
used through `Figure` + the Agg canvas: no pyplot, no global backend switch, no
display needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from gptkit.atomic import replace_atomically
from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.callbacks.metrics import METRICS_FILE
from gptkit.training.train_state import (
    CallbackContext,
    EvalMetrics,
    TrainerView,
    TrainSummary,
)

if TYPE_CHECKING:
    from gptkit.registry import Registry

PLOT_FILE = "loss.png"
MAX_POINTS = 4000  # per line; more is invisible at this size and slows every redraw


class LossPlotParams(ComponentParams):
    smoothing: float = Field(0.9, ge=0, lt=1, description="EMA factor of the smoothed train line; 0: no smoothed line.")
    log_scale: bool | None = Field(None, description="Log y axis; None: when the losses span more than 10x.")


@dataclass
class History:
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    scores: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # a classifier's accuracy, f1


def read_history(path: Path) -> History:
    """Train and val losses from a metrics.jsonl; unreadable lines and null losses are skipped."""
    history = History()
    if not path.is_file():
        return history
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                kind, step = rec.get("type"), int(rec["step"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if kind == "train" and isinstance(rec.get("loss"), (int, float)):
                history.train_steps.append(step)
                history.train_loss.append(float(rec["loss"]))
            elif kind == "eval" and isinstance(rec.get("val_loss"), (int, float)):
                history.val_steps.append(step)
                history.val_loss.append(float(rec["val_loss"]))
                scores = rec.get("scores") if isinstance(rec.get("scores"), dict) else {}
                for name, value in scores.items():
                    if isinstance(value, (int, float)):
                        history.scores.setdefault(str(name), []).append((step, float(value)))
    return history


def ema(values: list[float], factor: float) -> list[float]:
    out, current = [], values[0] if values else 0.0
    for v in values:
        current = factor * current + (1 - factor) * v
        out.append(current)
    return out


def use_log_scale(history: History) -> bool:
    values = history.train_loss + history.val_loss
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def plot_losses(history: History, path: Path, title: str, smoothing: float, log_scale: bool | None) -> None:
    """Draw `history` into the PNG `path`, replacing it atomically."""
    # Imported here: matplotlib takes a while to import and only this needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if history.train_loss:
        stride = max(1, len(history.train_loss) // MAX_POINTS)
        steps = history.train_steps[::stride]
        ax.plot(steps, history.train_loss[::stride], color="tab:blue", alpha=0.25, linewidth=0.8, label="train")
        if smoothing > 0:
            smooth = ema(history.train_loss, smoothing)[::stride]
            ax.plot(steps, smooth, color="tab:blue", linewidth=1.8, label=f"train (EMA {smoothing:g})")
    if history.val_loss:
        ax.plot(history.val_steps, history.val_loss, "o-", color="tab:orange", markersize=4, linewidth=1, label="val")
    losses = {name: points for name, points in history.scores.items() if name.endswith("loss")}
    for (name, points), color in zip(sorted(losses.items()), ("tab:brown", "tab:pink", "tab:gray")):
        ax.plot([s for s, _ in points], [v for _, v in points], "d--", color=color, markersize=4, linewidth=1, label=name)
    log = use_log_scale(history) if log_scale is None else log_scale
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)" if log else "loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper right")
    fractions = {name: points for name, points in history.scores.items() if not name.endswith("loss")}
    if fractions:
        # Accuracy and F1 live in [0, 1], not on the loss's scale: a second axis on the right.
        right = ax.twinx()
        for (name, points), color in zip(sorted(fractions.items()), ("tab:green", "tab:red", "tab:purple", "tab:olive")):
            right.plot([s for s, _ in points], [v for _, v in points], "s--", color=color, markersize=4, linewidth=1, label=f"val {name}")
        right.set_ylim(0, 1.02)
        right.set_ylabel("validation score")
        right.legend(loc="center right")
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))


class LossPlotCallback:
    """Writes run_dir/loss.png at each evaluation and at the end (main process only)."""

    def __init__(self, context: CallbackContext, smoothing: float = 0.9, log_scale: bool | None = None) -> None:
        self.context = context
        self.smoothing = smoothing
        self.log_scale = log_scale

    @property
    def path(self) -> Path:
        return self.context.run_dir / PLOT_FILE

    def write(self) -> Path | None:
        """Redraw the plot; None when there is nothing to draw yet (or not the main process)."""
        if not self.context.is_main_process:
            return None
        history = read_history(self.context.run_dir / METRICS_FILE)
        if not history.train_loss and not history.val_loss:
            return None
        plot_losses(history, self.path, f"{self.context.run_dir.name}: loss", self.smoothing, self.log_scale)
        return self.path

    # trylast: after the metrics callback has written this event's record.
    @hookimpl(trylast=True)
    def gptkit_evaluate(self, trainer: TrainerView, metrics: EvalMetrics) -> None:
        self.write()

    @hookimpl(trylast=True)
    def gptkit_train_end(self, trainer: TrainerView, summary: TrainSummary) -> None:
        self.write()


# --- registration: `train.callbacks = [..., "loss_plot"]`; called as factory(context, **params)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "loss_plot", LossPlotCallback, params=LossPlotParams, description="Redraw loss.png from metrics.jsonl at each evaluation and the end")
