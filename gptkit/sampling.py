"""Samplers: how the next token is picked from the model's logits.

A sampler is any callable mapping logits of shape (batch, vocab) to new logits;
a chain applies them in order and draws from the softmax of the result. Masking
with -inf (rather than renormalising probabilities) lets filters compose in any
order and keeps greedy decoding a special case: one finite logit is a certain draw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Sampler = Callable[[torch.Tensor], torch.Tensor]


class Greedy:
    """Keep only the most likely token."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        keep = logits == logits.max(dim=-1, keepdim=True).values
        # Ties keep the first maximum only, so greedy decoding is deterministic.
        first = keep.float().argmax(dim=-1, keepdim=True)
        return torch.full_like(logits, float("-inf")).scatter(-1, first, logits.gather(-1, first))


class Temperature:
    """Divide logits by `value`: below 1 sharpens the distribution, above 1 flattens it."""

    def __init__(self, value: float = 1.0) -> None:
        if value <= 0:
            raise ValueError(f"temperature must be > 0 (use the greedy sampler for 0), got {value}")
        self.value = value

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.value


class TopK:
    """Keep the `k` most likely tokens."""

    def __init__(self, k: int = 50) -> None:
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        self.k = k

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))


def apply_samplers(logits: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    for sampler in samplers:
        logits = sampler(logits)
    return logits


def draw(logits: torch.Tensor, samplers: Sequence[Sampler], generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row, shape (batch, 1)."""
    probs = torch.softmax(apply_samplers(logits.float(), samplers), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
