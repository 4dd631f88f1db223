"""RMSNorm (Zhang & Sennrich, 2019): LayerNorm without centring or bias, as in LLaMA.

Select with ``model.norm=rmsnorm`` or ``{"name": "rmsnorm", "eps": 1e-6}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptkit import ComponentParams, Registry, hookimpl


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight.

    Dropping the mean subtraction saves a reduction and, empirically, costs nothing
    in quality: the re-scaling is what stabilises training.
    """

    def __init__(self, emb_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The gain in the input's dtype: under bf16 autocast a float32 gain would send
        # torch past its fused kernel to a slower composite of several passes.
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)


class RMSNormParams(ComponentParams):
    eps: float = Field(1e-6, gt=0)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("norm", "rmsnorm", RMSNorm, params=RMSNormParams, description="RMSNorm: scale only, no centring (LLaMA)")
