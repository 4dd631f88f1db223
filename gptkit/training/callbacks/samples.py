"""Text samples while training: what the model writes now, step by step.

When: every `every` steps if `every` > 0, otherwise after each evaluation; and
always at the end (unless that step was just sampled). Each sample is appended
to `run_dir/samples.txt` and printed through the shared console, so it shows
above the live progress bar.

Every sample uses a fresh generator seeded with `seed`, so two samples differ
only because the weights did, and training is untouched: the global RNG is not
drawn from, and `generate()` runs in eval mode (no dropout) and restores the
previous mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pydantic import Field
from rich.console import Console
from rich.panel import Panel
from rich.text import Text
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gptkit.generation.generate import generate
from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.callbacks.console import shared_console
from gptkit.training.distributed import is_sharded
from gptkit.training.train_state import (
    CallbackContext,
    EvalMetrics,
    StepMetrics,
    TrainerView,
    TrainSummary,
)

if TYPE_CHECKING:
    from gptkit.registry import Registry

SAMPLES_FILE = "samples.txt"


class SamplesParams(ComponentParams):
    every: int = Field(0, ge=0, description="Sample every N steps; 0: after each evaluation. Always at the end.")
    prompt: str = Field("", description="Text to continue; empty: the run's sampling.prompt, else <|endoftext|>.")
    max_new_tokens: int = Field(100, gt=0)
    seed: int = Field(1337, description="Seed of the sampling generator: same seed and weights, same text.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers.

    generate() needs the model's own methods, and going around the wrappers
    avoids DDP's collectives (only one process samples) and recompilation.
    """
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class SamplesCallback:
    """Generates, saves and prints a sample now and then (main process only)."""

    def __init__(
        self,
        context: CallbackContext,
        every: int = 0,
        prompt: str = "",
        max_new_tokens: int = 100,
        seed: int = 1337,
        console: Console | None = None,
    ) -> None:
        self.context = context
        self.every = every
        # The run's sampling.prompt, when the callback is given none of its own.
        self.prompt = prompt or context.config.get("sampling", {}).get("prompt", "")
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.console = console if console is not None else shared_console()
        self.last_step: int | None = None

    @property
    def path(self) -> Path:
        return self.context.run_dir / SAMPLES_FILE

    def generate_text(self, model: nn.Module) -> str:
        """The prompt and up to `max_new_tokens` sampled tokens after it, as text."""
        model = unwrap_model(model)
        tokenizer = self.context.tokenizer
        device = next(model.parameters()).device
        ids = tokenizer.encode(self.prompt, allow_special=True) if self.prompt else [tokenizer.eot_id]
        prompt = torch.tensor([ids], dtype=torch.long, device=device)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        out = generate(
            model, prompt, self.max_new_tokens, self.context.samplers, generator=generator, eos_id=tokenizer.eot_id
        )
        new = out[0, len(ids):].tolist()
        if new and new[-1] == tokenizer.eot_id:
            new.pop()
        return self.prompt + tokenizer.decode(new)

    def sample(self, trainer: TrainerView, step: int) -> str | None:
        """Generate, append to samples.txt and print; None on other processes than the main one.

        A sharded (FSDP) model gathers its weights from every process in each
        forward, so there all processes generate and only the main one keeps the text.
        """
        if not self.context.is_main_process and not is_sharded(trainer.model):
            return None
        head = (self.context.config.get("model") or {}).get("head") or {}
        if isinstance(head, dict) and head.get("name", "lm") != "lm":
            return None  # a classifier's head gives labels, not tokens: there is no text to sample
        text = self.generate_text(trainer.model)
        self.last_step = step  # on every process that generated: the end-of-run sample must match
        if not self.context.is_main_process:
            return None
        self.context.run_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"=== step {step} (seed {self.seed}) ===\n{text}\n\n")
        # Text(), not a str: model output may contain "[...]" that rich would read as markup.
        self.console.print(Panel(Text(text), title=f"sample at step {step}", title_align="left"))
        return text

    @hookimpl
    def gptkit_step_end(self, trainer: TrainerView, metrics: StepMetrics) -> None:
        if self.every and metrics.step % self.every == 0:
            self.sample(trainer, metrics.step)

    # trylast: the sample is printed after the evaluation's own line.
    @hookimpl(trylast=True)
    def gptkit_evaluate(self, trainer: TrainerView, metrics: EvalMetrics) -> None:
        if not self.every:
            self.sample(trainer, metrics.step)

    @hookimpl
    def gptkit_train_end(self, trainer: TrainerView, summary: TrainSummary) -> None:
        if self.last_step != summary.steps:
            self.sample(trainer, summary.steps)


# --- registration: `train.callbacks = [..., "samples"]`; called as factory(context, **params)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("callback", "samples", SamplesCallback, params=SamplesParams, description="A seeded text sample now and then, into samples.txt")
