"""Position-wise feed-forward network: widen, activate, project back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import nn

from gptkit.hookspecs import hookimpl
from gptkit.layers.gelu import GELU
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.hookspecs import ModelShape
    from gptkit.registry import Registry


class FeedForward(nn.Module):
    """Linear(emb_dim -> hidden_dim), activation, Linear(hidden_dim -> emb_dim).

    GPT-2 widens by four (``hidden_dim = 4 * emb_dim``): most of a block's
    parameters, and its per-token "memory", live here.
    """

    def __init__(self, emb_dim: int, hidden_dim: int | None = None, activation: nn.Module | None = None, bias: bool = True) -> None:
        super().__init__()
        hidden_dim = hidden_dim or 4 * emb_dim
        self.fc1 = nn.Linear(emb_dim, hidden_dim, bias=bias)
        self.activation = activation if activation is not None else GELU()
        self.fc2 = nn.Linear(hidden_dim, emb_dim, bias=bias)
        self.fc2.is_residual_projection = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


# --- registration: `model.ffn = "mlp"` ---------------------------------------------


class MLPParams(ComponentParams):
    hidden_dim: int | None = Field(None, gt=0, description="Default: 4 * emb_dim.")
    bias: bool = True


def build_mlp(cfg: ModelShape, activation: nn.Module, hidden_dim: int | None, bias: bool) -> FeedForward:
    return FeedForward(cfg.emb_dim, hidden_dim, activation, bias)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("ffn", "mlp", build_mlp, params=MLPParams, description="Linear -> activation -> Linear, 4x wide (GPT-2)")
