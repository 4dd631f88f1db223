"""A frozen weight's autocast copy kept between steps: autocast's results bit for bit, refreshed when the weight changes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.kernels import accelerate
from gptkit.kernels import frozen_cast as fc


def frozen_linear() -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    layer.requires_grad_(False)
    accelerate(layer)
    return layer


def autocast_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """What autocast itself computes: plain F.linear, every operand cast to bfloat16."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return F.linear(x, layer.weight, layer.bias)


def test_a_frozen_linear_under_autocast_is_autocasts_and_casts_its_weight_once() -> None:
    layer = frozen_linear()
    x = torch.randn(3, 5, 24, requires_grad=True)
    expected = autocast_linear(x, layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = layer(x)
        made = fc._CASTS[id(layer.weight)][-1]  # the layer's forward kept its copy
        kept = fc.cast_frozen(layer.weight, torch.bfloat16)
        second = layer(x)
    assert first.dtype == torch.bfloat16 and torch.equal(first, expected) and torch.equal(second, expected)
    # The copy the first step made is the one every later step gets, autocast's cast to the bit.
    assert kept is made and fc.cast_frozen(layer.weight, torch.bfloat16) is kept
    assert torch.equal(kept, layer.weight.to(torch.bfloat16))
    second.float().sum().backward()  # the input still gets its gradient through the kept copy
    assert x.grad is not None and layer.weight.grad is None


def test_the_kept_copy_follows_a_weight_changed_in_place_or_replaced() -> None:
    layer = frozen_linear()
    x = torch.randn(4, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # as load_state_dict or a LoRA merge writes it: the version counter moves
    with torch.autocast("cpu", dtype=torch.bfloat16):
        changed = layer(x)
    assert torch.equal(changed, autocast_linear(x, layer))
    layer.weight.data = torch.randn(40, 24)  # new storage, same Parameter
    with torch.autocast("cpu", dtype=torch.bfloat16):
        replaced = layer(x)
    assert torch.equal(replaced, autocast_linear(x, layer))


def test_a_weight_that_trains_is_cast_afresh_and_gets_its_gradient() -> None:
    layer = frozen_linear()
    layer.requires_grad_(True)
    x = torch.randn(4, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().sum().backward()
    assert layer.weight.grad is not None
    assert all(entry[0]() is not layer.weight for entry in fc._CASTS.values())


def test_a_dropped_weight_drops_its_copy() -> None:
    layer = frozen_linear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(2, 24))
    ident = id(layer.weight)
    assert ident in fc._CASTS
    del layer
    assert ident not in fc._CASTS
