"""SwiGLU feed-forward (Shazeer, 2020), as in LLaMA and PaLM.

Select with ``model.ffn=swiglu``. The gate is SiLU by definition, so the
config's ``activation`` slot does not apply to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptkit import ComponentParams, ModelConfig, Registry, hookimpl


def swiglu_hidden_dim(emb_dim: int, multiple_of: int = 64) -> int:
    """Two thirds of GPT-2's 4x width, rounded up: three matrices then cost what two did."""
    hidden = int(2 * 4 * emb_dim / 3)
    return multiple_of * -(-hidden // multiple_of)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): a learned, input-dependent gate on the hidden units."""

    def __init__(self, emb_dim: int, hidden_dim: int | None = None, bias: bool = False) -> None:
        super().__init__()
        hidden_dim = hidden_dim or swiglu_hidden_dim(emb_dim)
        self.gate = nn.Linear(emb_dim, hidden_dim, bias=bias)
        self.up = nn.Linear(emb_dim, hidden_dim, bias=bias)
        self.down = nn.Linear(hidden_dim, emb_dim, bias=bias)
        self.down.is_residual_projection = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class SwiGLUParams(ComponentParams):
    hidden_dim: int | None = Field(None, gt=0, description="Default: 8/3 * emb_dim rounded up to 64.")
    bias: bool = False


def build_swiglu(cfg: ModelConfig, activation: nn.Module, hidden_dim: int | None, bias: bool) -> SwiGLU:
    return SwiGLU(cfg.emb_dim, hidden_dim, bias)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("ffn", "swiglu", build_swiglu, params=SwiGLUParams, description="SwiGLU gated feed-forward (LLaMA)")
