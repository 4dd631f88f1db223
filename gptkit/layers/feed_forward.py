"""Position-wise feed-forward network: widen, activate, project back."""

from __future__ import annotations

import torch
from torch import nn

from gptkit.layers.gelu import GELU
from gptkit.layers.linear import Linear


class FeedForward(nn.Module):
    """Linear(emb_dim -> hidden_dim), activation, Linear(hidden_dim -> emb_dim).

    GPT-2 widens by four (``hidden_dim = 4 * emb_dim``): most of a block's
    parameters, and its per-token "memory", live here.
    """

    def __init__(self, emb_dim: int, hidden_dim: int | None = None, activation: nn.Module | None = None, bias: bool = True) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * emb_dim
        self.fc1 = Linear(emb_dim, hidden_dim, bias=bias)
        self.activation = activation if activation is not None else GELU()
        self.fc2 = Linear(hidden_dim, emb_dim, bias=bias)
        self.fc2.is_residual_projection = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))
