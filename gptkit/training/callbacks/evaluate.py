"""Score the model on a task of `main.py evaluate` at evaluations during training.

`train.callbacks = [..., {"name": "evaluate", "task": "multiple-choice", "data": "q.jsonl"}]`
adds `mc_acc` and `mc_acc_norm` (or, for `task = "perplexity"`, `ppl_loss`, the mean
per-token loss on that text) to every `every`-th evaluation's scores: the display,
metrics.jsonl and the loss plot show them. `label` replaces the `mc` / `ppl` prefix,
so several such callbacks can score several tasks. Under several processes every
process scores the whole task (it is small by design: `limit` caps the questions).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.train_state import CallbackContext, TrainerView

if TYPE_CHECKING:
    from gptkit.registry import Registry


class EvaluateParams(ComponentParams):
    task: Literal["perplexity", "multiple-choice"]
    data: str = Field(description="The text (perplexity) or the JSONL questions (multiple-choice).")
    every: int = Field(1, ge=1, description="Score at every N-th evaluation.")
    stride: int | None = Field(None, ge=1, description="perplexity: the window's stride; None: half the context.")
    limit: int | None = Field(None, ge=1, description="multiple-choice: the first N questions only.")
    label: str | None = Field(None, min_length=1, description="Prefix of the score names; None: ppl or mc.")


class EvaluateCallback:
    """Answers `gptkit_eval_scores` with the task's figures (read and tokenized once)."""

    def __init__(
        self, context: CallbackContext, task: str, data: str, every: int = 1,
        stride: int | None = None, limit: int | None = None, label: str | None = None,
    ) -> None:
        self.context = context
        self.task, self.every, self.stride = task, every, stride
        self.label = label or ("ppl" if task == "perplexity" else "mc")
        self.evaluations = 0
        if task == "perplexity":
            from gptkit.data.corpus import read_text, resolve_source

            text = "\n\n".join(read_text(path) for path in resolve_source(data))
            self.ids = torch.tensor(context.tokenizer.encode(text))
        else:
            from gptkit.evaluation.multiple_choice import read_questions

            self.questions = read_questions(data, limit)

    @hookimpl
    def gptkit_eval_scores(self, trainer: TrainerView) -> dict[str, float]:
        self.evaluations += 1
        if (self.evaluations - 1) % self.every:
            return {}
        from gptkit.training.callbacks.samples import unwrap_model

        model = unwrap_model(trainer.model)
        model.eval()  # no dropout while scoring; the trainer's next step sets train mode again
        try:
            return self.score(model)
        finally:
            model.train()

    def score(self, model: torch.nn.Module) -> dict[str, float]:
        if self.task == "perplexity":
            from gptkit.evaluation.perplexity import sliding_window_loss

            return {f"{self.label}_loss": sliding_window_loss(model, self.ids, self.stride).loss}  # type: ignore[arg-type]
        from gptkit.evaluation.multiple_choice import score_questions

        scores = score_questions(model, self.context.tokenizer, self.questions)  # type: ignore[arg-type]
        return {f"{self.label}_acc": scores.acc, f"{self.label}_acc_norm": scores.acc_norm}


# --- registration: `train.callbacks = [..., {"name": "evaluate", ...}]` -------------


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register(
        "callback", "evaluate", EvaluateCallback, params=EvaluateParams,
        description="Score a task of main.py evaluate (perplexity, multiple-choice) at evaluations",
    )
