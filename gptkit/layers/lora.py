"""LoRA: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021).

Finetuning changes a weight matrix W (out x in) by some ΔW. LoRA bets that ΔW has
low rank and learns it as two thin matrices, B (out x r) and A (r x in):

    y = W x + (alpha / r) · B A x

Only A and B train: for GPT-2 124M's fused qkv projection at r = 8 that is
8 · (768 + 2304) = 24,576 numbers instead of 1.8 million. B starts at zero, so
the wrapped layer starts out computing exactly what the base layer did; A starts
Gaussian, as in the paper (standard deviation 1/r, PEFT's "gaussian" choice), so
B's first gradients are not all zero. `alpha / r` keeps the update's size steady
when r changes: a run tuned at one rank needs no new learning rate at another.

`base` is any module with a `weight` of shape (out, in) and a forward from
(..., in) to (..., out): `nn.Linear` or a subclass (gptkit's kernels swap in a faster
one), or a quantized linear whose `weight` reports the shape while it stores its
numbers otherwise (the seam for QLoRA). Merging needs a float weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """`base(x) + (alpha / rank) · B(A(dropout(x)))`, with `base` frozen and B starting at zero."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {alpha}")
        out_features, in_features = base.weight.shape
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, device=base.weight.device))
        nn.init.normal_(self.lora_A, mean=0.0, std=1.0 / rank)
        # Dropout on the adapter's input only: the base path computes what it always did.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for param in base.parameters():
            param.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls (in -> r -> out) rather than one with the full B @ A: r is small.
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (alpha / rank) · B A, shaped like the base weight (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Module:
        """The base layer with ΔW added into its weight, the adapter gone: same outputs, no extra matmuls."""
        with torch.no_grad():
            self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"
