"""ReLU and SiLU as alternatives to GPT-2's GELU.

Select with ``model.activation=relu`` or ``model.activation=silu``.
"""

from __future__ import annotations

from torch import nn

from gptkit import Registry, hookimpl


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("activation", "relu", nn.ReLU, description="ReLU: max(0, x) (original Transformer)")
    registry.register("activation", "silu", nn.SiLU, description="SiLU / swish: x * sigmoid(x)")
