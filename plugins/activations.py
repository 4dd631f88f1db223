"""ReLU, SiLU and ReLU² as alternatives to GPT-2's GELU.

Select with ``model.activation=relu``, ``silu`` or ``relu2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptkit import Registry, hookimpl


class ReLUSquared(nn.Module):
    """relu(x)²: sparse like ReLU, smooth at zero (So et al., 2021, "Primer"; modded-nanogpt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("activation", "relu", nn.ReLU, description="ReLU: max(0, x) (original Transformer)")
    registry.register("activation", "silu", nn.SiLU, description="SiLU / swish: x * sigmoid(x)")
    registry.register("activation", "relu2", ReLUSquared, description="ReLU squared: max(0, x)^2 (Primer)")
