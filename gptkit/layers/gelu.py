"""GELU activation, in the tanh approximation GPT-2 was trained with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.registry import Registry


class GELU(nn.Module):
    """x * Phi(x), where Phi is the standard normal CDF.

    GPT-2 used the tanh approximation
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))),
    so loading its weights needs ``approximate="tanh"``; ``"none"`` is the exact erf form.
    """

    def __init__(self, approximate: Literal["tanh", "none"] = "tanh") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)


# --- registration: `model.activation = "gelu"` -------------------------------------


class GELUParams(ComponentParams):
    approximate: Literal["tanh", "none"] = "tanh"


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("activation", "gelu", GELU, params=GELUParams, description="GELU, tanh approximation by default (GPT-2)")
