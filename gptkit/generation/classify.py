"""A classification run put to use: texts in, labels and their probabilities out.

A batch may come padded on either side: `classify_ids` takes a mask of the real tokens
and moves each row's tokens to the start before the forward pass, so a row's label
never depends on how it was padded (a causal model's real tokens then never see the
padding, and every real token keeps its position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gptkit.errors import GptkitError
from gptkit.model.gpt import GPTModel


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float
    probabilities: dict[str, float]  # every label's, in class order


def check_classifier(model: GPTModel, where: str) -> None:
    if not hasattr(model.out_head, "pool"):
        raise GptkitError(
            f"{where} is not a classifier (model.head {model.cfg.head.name}); classify needs a run trained with data.format=classification"
        )


@torch.no_grad()
def classify_ids(model: GPTModel, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Class probabilities (batch, classes) of (batch, seq) `ids` whose real tokens `real` marks, padded on any side."""
    lengths = real.sum(1)
    if bool((lengths == 0).any()):
        raise GptkitError("a text to classify has no tokens")
    packed = torch.zeros((len(ids), int(lengths.max())), dtype=ids.dtype, device=ids.device)
    for row in range(len(ids)):
        packed[row, : lengths[row]] = ids[row][real[row]]
    logits = model.out_head.pool(model(packed), lengths)  # type: ignore[operator]
    return logits.float().softmax(-1)


def classify_texts(model: GPTModel, tokenizer: Any, texts: list[str], labels: list[str]) -> list[Prediction]:
    """Each text's most likely label; texts longer than the context keep their first tokens, as training did."""
    ctx = model.cfg.context_length
    encoded = [tokenizer.encode(text)[:ctx] for text in texts]
    width = max(len(ids) for ids in encoded)
    ids = torch.zeros((len(texts), max(width, 1)), dtype=torch.long)
    real = torch.zeros_like(ids, dtype=torch.bool)
    for row, row_ids in enumerate(encoded):
        ids[row, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        real[row, : len(row_ids)] = True
    probabilities = classify_ids(model.eval(), ids, real)
    out = []
    for row in probabilities.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append(Prediction(labels[best], row[best], dict(zip(labels, row))))
    return out
