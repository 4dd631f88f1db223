"""Layer normalisation, as GPT-2 places it before attention, MLP and the head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.registry import Registry


class LayerNorm(nn.Module):
    """Normalise the last dimension to zero mean and unit variance, then scale and shift.

    y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias, with the biased
    variance (divide by n, not n - 1), as in the original paper and GPT-2.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(emb_dim))
        self.bias = nn.Parameter(torch.zeros(emb_dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm computes the formula above in one fused kernel; written out
        # with mean/var it would allocate three temporaries per call.
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


# --- registration: `model.norm = "layernorm"` --------------------------------------


class LayerNormParams(ComponentParams):
    eps: float = Field(1e-5, gt=0)
    bias: bool = True


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("norm", "layernorm", LayerNorm, params=LayerNormParams, description="LayerNorm (GPT-2)")
