"""Frozen weights cast to the autocast dtype once, not at every step.

Autocast keeps a cast copy of a weight only while one autocast region lasts, and
only for a weight that requires a gradient. A frozen weight (a LoRA run's whole
base model) is therefore cast afresh by every forward pass: GPT-2 124M's 124M
float32 numbers read and written as bfloat16 each step, for a value that never
changes. `cast_frozen` keeps that copy between steps, for as long as the weight is
neither changed in place (its version counter) nor replaced (its storage).

The copy is the same `.to(dtype)` autocast makes, so results are bit for bit
autocast's; it costs the copy's memory (2 bytes a number for bfloat16).
"""

from __future__ import annotations

import weakref

import torch

# id(weight) -> (a weak reference to it, its storage, its version, dtype, the cast copy). By id with a
# weak reference, not a WeakKeyDictionary: that compares keys with `==`, elementwise for tensors. The
# reference's callback drops the entry, so a dropped model drops its copies.
_CASTS: dict[int, tuple[weakref.ref[torch.Tensor], int, int, torch.dtype, torch.Tensor]] = {}


def cast_frozen(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight.to(dtype)`, kept from the last call while `weight` is unchanged; for frozen weights only."""
    if weight.requires_grad or weight.dtype == dtype or torch.compiler.is_compiling():
        return weight.to(dtype)
    key = (weight.untyped_storage().data_ptr(), weight._version, dtype)
    kept = _CASTS.get(id(weight))
    if kept is not None and kept[0]() is weight and kept[1:4] == key:
        return kept[4]
    cast = weight.detach().to(dtype)
    ident = id(weight)
    _CASTS[ident] = (weakref.ref(weight, lambda _: _CASTS.pop(ident, None)), *key, cast)
    return cast


def autocast_frozen_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would cast `weight` to for a matmul with `x`, when `weight` is frozen; else None."""
    device = x.device.type
    if weight.requires_grad or not torch.is_autocast_enabled(device) or torch.compiler.is_compiling():
        return None
    dtype = torch.get_autocast_dtype(device)
    return dtype if weight.dtype == torch.float32 and dtype in (torch.bfloat16, torch.float16) else None
