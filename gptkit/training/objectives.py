"""What a training step minimises and an evaluation reports, for each kind of data.

`NextToken` is language modelling: the mean cross-entropy of next tokens, targets of
-100 left out (a corpus's windows have none; instruction examples mark their prompt and
padding so). `Classification` is the cross-entropy of one label per text, read from the
classifier head's pooled logits, with accuracy (and, for two classes, F1 of class 1) on
the validation split. An evaluation sums per-batch figures (`eval_sums`), the trainer
totals them over processes, and `finish` turns the totals into the loss and scores.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.model.gpt import IGNORE_INDEX


class Objective(Protocol):
    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor: ...

    def eval_sums(self, model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> dict[str, float]: ...

    def finish(self, totals: dict[str, float]) -> tuple[float, dict[str, float]]: ...


class NextToken:
    def __init__(self, weight_by_tokens: bool) -> None:
        # Corpus windows all hold the same number of targets, so a validation figure is
        # the mean of the windows' means; examples differ in length, so it is per token.
        self.weight_by_tokens = weight_by_tokens

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
        x, y = batch
        # The loss straight from the last hidden states: no (batch, seq, vocab) logits kept.
        _, loss = model(x.to(device), y.to(device), keep_logits=False)
        return loss

    def eval_sums(self, model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> dict[str, float]:
        x, y = batch
        weight = int((y != IGNORE_INDEX).sum()) if self.weight_by_tokens else len(x)
        return {"loss": self.loss(model, batch, device).item() * weight, "count": weight}

    def finish(self, totals: dict[str, float]) -> tuple[float, dict[str, float]]:
        return totals["loss"] / totals["count"], {}


class Classification:
    def __init__(self, head: Any, n_classes: int) -> None:
        self.head = head  # the model's ClassificationHead: it knows how to pool a row
        self.n_classes = n_classes

    def logits(self, model: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head.pool(model(x), lengths).float()

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
        x, lengths, labels = (t.to(device) for t in batch)
        return F.cross_entropy(self.logits(model, x, lengths), labels)

    def eval_sums(self, model: nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device) -> dict[str, float]:
        x, lengths, labels = (t.to(device) for t in batch)
        logits = self.logits(model, x, lengths)
        predicted = logits.argmax(-1)
        sums = {
            "loss": F.cross_entropy(logits, labels, reduction="sum").item(),
            "count": len(labels),
            "correct": int((predicted == labels).sum()),
        }
        if self.n_classes == 2:
            sums["tp"] = int(((predicted == 1) & (labels == 1)).sum())
            sums["fp"] = int(((predicted == 1) & (labels == 0)).sum())
            sums["fn"] = int(((predicted == 0) & (labels == 1)).sum())
        return sums

    def finish(self, totals: dict[str, float]) -> tuple[float, dict[str, float]]:
        scores = {"accuracy": totals["correct"] / totals["count"]}
        if self.n_classes == 2:
            tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
            scores["f1"] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        return totals["loss"] / totals["count"], scores
