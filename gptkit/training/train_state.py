"""What the trainer tells its callbacks: state, per-step and per-evaluation figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn


@dataclass
class TrainState:
    """Everything about progress that a resume must restore (besides tensors)."""

    step: int = 0  # optimizer steps completed
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds spent training, summed over resumes
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    last_val_loss: float | None = None
    stop_reason: str | None = None


@dataclass(frozen=True)
class StepMetrics:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float
    mfu: float | None  # fraction of the configured peak FLOP/s; None when no peak is known
    tokens_seen: int
    elapsed: float


@dataclass(frozen=True)
class EvalMetrics:
    step: int
    val_loss: float
    best_val_loss: float
    improved: bool
    scores: dict[str, float] = field(default_factory=dict)  # e.g. a classifier's accuracy and f1


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    tokens_seen: int
    elapsed: float
    final_train_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    stop_reason: str
    run_dir: Path


@dataclass
class CallbackContext:
    """What a callback factory is given when the run starts."""

    run_dir: Path
    total_steps: int | None  # None when only a time or token budget bounds the run
    is_main_process: bool
    tokenizer: Any  # gptkit.data.tokenizer.Tokenizer
    samplers: list[Any]  # the configured sampler chain (gptkit.generation.samplers)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved run config, as plain data


class TrainerView(Protocol):
    """The part of the trainer a callback may use."""

    model: nn.Module
    state: TrainState
    context: CallbackContext
    last_checkpoint: Path | None  # set by save_checkpoint()
    last_checkpoint_step: int | None  # the step it holds, so the same step is not saved twice

    def request_stop(self, reason: str) -> None: ...

    def save_checkpoint(self) -> Path: ...
