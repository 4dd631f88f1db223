"""The run's record on disk: `metrics.jsonl` for programs, `train.log` for people.

`metrics.jsonl` holds one JSON object per line: ``{"type": "train", ...}`` per
step, ``{"type": "eval", ...}`` per evaluation and ``{"type": "end", ...}`` when
the run stops. Values that are not finite (a diverged loss) are written as
null, so the file stays strict JSON for tools other than Python's.

Both files are flushed after every line, so a killed run keeps all it logged.
When a run starts from a checkpoint, records past the checkpoint's step belong
to a stretch of training that was lost; they are dropped, so the history reads
as one run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import Field

from gptkit.atomic import replace_atomically
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

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"


class MetricsParams(ComponentParams):
    log_every: int = Field(10, ge=1, description="Write a train.log line every N steps.")


def finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def drop_records_after(path: Path, step: int) -> int:
    """Remove lines of `path` whose step is past `step` (and unreadable ones); how many went."""
    if not path.is_file():
        return 0
    dropped = 0

    def write(tmp: Path) -> None:
        nonlocal dropped
        # Streamed line by line: a long run's file need not fit in memory.
        with path.open(encoding="utf-8") as src, tmp.open("w", encoding="utf-8") as dst:
            for line in src:
                try:
                    keep = json.loads(line).get("step", 0) <= step
                except (ValueError, AttributeError, TypeError):
                    keep = False  # a line cut short when the run was killed mid-write
                if keep:
                    dst.write(line if line.endswith("\n") else line + "\n")
                else:
                    dropped += bool(line.strip())
            dst.flush()
            os.fsync(dst.fileno())

    replace_atomically(path, write)
    return dropped


class MetricsCallback:
    """Appends to run_dir/metrics.jsonl and run_dir/train.log (main process only)."""

    def __init__(self, context: CallbackContext, log_every: int = 10) -> None:
        self.context = context
        self.log_every = log_every
        self.jsonl: TextIO | None = None  # open between train start and end, main process only
        self.log: TextIO | None = None

    @property
    def jsonl_path(self) -> Path:
        return self.context.run_dir / METRICS_FILE

    @property
    def log_path(self) -> Path:
        return self.context.run_dir / LOG_FILE

    def record(self, record: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(finite_or_none(record)) + "\n")
            self.jsonl.flush()

    def write_log(self, text: str) -> None:
        if self.log is not None:
            self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
            self.log.flush()

    def close(self) -> None:
        for f in (self.jsonl, self.log):
            if f is not None:
                f.close()
        self.jsonl = self.log = None

    # tryfirst: the loss plot reads metrics.jsonl in the same events and must find
    # this event's record already there.
    @hookimpl(tryfirst=True)
    def gptkit_train_start(self, trainer: TrainerView) -> None:
        if not self.context.is_main_process:
            return
        step = trainer.state.step
        self.context.run_dir.mkdir(parents=True, exist_ok=True)
        dropped = drop_records_after(self.jsonl_path, step)
        self.jsonl = self.jsonl_path.open("a", encoding="utf-8")
        self.log = self.log_path.open("a", encoding="utf-8")
        total = self.context.total_steps
        budget = f"{total} steps" if total is not None else "no step budget"
        if step:
            self.write_log(f"resume at step {step} ({budget}); dropped {dropped} metric records past step {step}")
        else:
            self.write_log(f"start ({budget}) in {self.context.run_dir}")

    @hookimpl(tryfirst=True)
    def gptkit_step_end(self, trainer: TrainerView, metrics: StepMetrics) -> None:
        self.record({"type": "train", **asdict(metrics)})
        if metrics.step % self.log_every == 0:
            mfu = "n/a" if metrics.mfu is None else f"{metrics.mfu:.1%}"
            self.write_log(
                f"step {metrics.step} loss {metrics.loss:.4f} lr {metrics.lr:.3e} grad_norm {metrics.grad_norm:.3f} "
                f"tok/s {metrics.tokens_per_sec:.0f} mfu {mfu} tokens {metrics.tokens_seen} elapsed {metrics.elapsed:.1f}s"
            )

    @hookimpl(tryfirst=True)
    def gptkit_evaluate(self, trainer: TrainerView, metrics: EvalMetrics) -> None:
        state = trainer.state
        self.record({"type": "eval", **asdict(metrics), "tokens_seen": state.tokens_seen, "elapsed": state.elapsed})
        best = " (new best)" if metrics.improved else f" (best {metrics.best_val_loss:.4f})"
        scores = "".join(f" {name} {value:.4f}" for name, value in metrics.scores.items())
        self.write_log(f"eval step {metrics.step} val_loss {metrics.val_loss:.4f}{best}{scores}")

    @hookimpl(tryfirst=True)
    def gptkit_train_end(self, trainer: TrainerView, summary: TrainSummary) -> None:
        end = {k: v for k, v in asdict(summary).items() if k not in ("steps", "run_dir")}
        self.record({"type": "end", "step": summary.steps, **end})
        self.write_log(
            f"end at step {summary.steps}: {summary.stop_reason}; tokens {summary.tokens_seen} "
            f"elapsed {summary.elapsed:.1f}s final train loss {summary.final_train_loss} "
            f"val loss {summary.final_val_loss} best val loss {summary.best_val_loss}"
        )
        self.close()

    @hookimpl
    def gptkit_exception(self, trainer: TrainerView, error: BaseException) -> None:
        if isinstance(error, KeyboardInterrupt):
            what = "interrupted (KeyboardInterrupt)"
        else:
            what = f"error {type(error).__name__}: {error}"
        self.write_log(f"{what} at step {trainer.state.step}")
        self.close()


# --- registration: `train.callbacks = [..., "metrics"]`; called as factory(context, **params)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "metrics", MetricsCallback, params=MetricsParams, description="Append each step and evaluation to metrics.jsonl and train.log")
