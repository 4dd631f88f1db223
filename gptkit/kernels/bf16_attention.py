"""Causal attention for bfloat16 on CPU: float32 scores and softmax, bfloat16 products.

`F.scaled_dot_product_attention` on CPU runs bfloat16 through a flash-attention
kernel built for long sequences; at GPT-2's training lengths (a few hundred
tokens) batched matmuls do the same work 1.2-1.4x faster: forward and backward
of one layer for GPT-2 124M's 4 x 256 benchmark batch took 17.6-21.5 ms against
24.7-27.8 on 2 cores (`python bench/attention.py`), ~80 ms of a 2.6 s step.

The numerics are FlashAttention's. The scores q·kᵀ are float32 (a bfloat16 score
of 20 is off by up to 0.06, which moves its softmax weight by 6%) and so is the
softmax; the probabilities are rounded to bfloat16 only to weight the values. The
backward pass takes the probabilities' gradient and softmax's backward in float32
too, and only the three products that follow (dq, dk, dv) in bfloat16 with float32
accumulation. Trained this way, bf16 stays within 1.6% of float32's loss curve over
bench/loss_curve.py's 200 steps (through SDPA's kernel: 1.95%).

Memory: the float32 probabilities are kept for the backward pass, one
(batch, heads, q_len, k_len) tensor per layer (12.6 MB for the batch above) where
the flash kernel recomputes them.
"""

from __future__ import annotations

from typing import Any

import torch

from gptkit.kernels.decode_attention import one_query_attention
from gptkit.layers.attention import MultiHeadAttention
from gptkit.layers.causal_mask import causal_mask


def _causal_bias(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """0 where `causal_mask` allows, -inf where not.

    Added to the scores rather than `masked_fill`ed: a broadcast add runs three times faster.
    """
    return torch.zeros(q_len, k_len, device=device).masked_fill_(~causal_mask(q_len, k_len, device), float("-inf"))


class _BF16CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
    ) -> torch.Tensor:
        # Under autocast the float32 matmul would be cast back to bfloat16, losing the point.
        with torch.autocast(q.device.type, enabled=False):
            # The scale goes on the float32 copy of q: a (seq, head_dim) pass, not a (seq, seq) one.
            scores = torch.matmul(q.float().mul_(scale), k.float().transpose(-2, -1))
            scores.add_(_causal_bias(q.shape[-2], k.shape[-2], q.device))
            probs = torch.softmax(scores, dim=-1)
            del scores
            out = torch.matmul(probs.to(q.dtype), v)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, probs = ctx.saved_tensors
        # Called inside an autocast block, backward would have its float32 products cast down too.
        with torch.autocast(q.device.type, enabled=False):
            grad_out = grad_out.to(q.dtype)
            grad_v = torch.matmul(probs.to(q.dtype).transpose(-2, -1), grad_out)
            # softmax's backward, p * (dp - sum(p * dp)), in float32 throughout. Where the values
            # share a large common part (as a layer's usually do), dp is that part's product plus
            # small differences, and the gradient is made of the differences: rounding dp or p to
            # bfloat16 first loses them (bench/loss_curve.py: bf16 2.8% behind float32 after 200
            # steps with dp rounded, 1.6% this way; tests/test_bf16_attention.py measures it).
            # The scale is applied to grad_out, the small operand, not to the (seq, seq) result.
            grad_probs = torch.matmul(grad_out.float().mul_(ctx.scale), v.float().transpose(-2, -1))
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).to(q.dtype)
            del grad_probs
            grad_q = torch.matmul(grad_scores, k)
            grad_k = torch.matmul(grad_scores.transpose(-2, -1), q)
        return grad_q, grad_k, grad_v, None


def bf16_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q·kᵀ / sqrt(head_dim))·v for bfloat16 (batch, heads, seq, head_dim) tensors.

    With fewer queries than keys (a KV cache), the queries are the last positions.
    No dropout: callers with attention dropout in training use SDPA.
    """
    if q.dtype != torch.bfloat16 or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"bf16_causal_attention takes bfloat16 tensors, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-2] > k.shape[-2]:
        raise ValueError(f"more queries ({q.shape[-2]}) than keys ({k.shape[-2]})")
    return _BF16CausalAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), q.shape[-1] ** -0.5)


class CPUAttention(MultiHeadAttention):
    """`MultiHeadAttention` whose CPU attention without dropout runs gptkit's kernels: `bf16_causal_attention`
    for bfloat16 sequences, `one_query_attention` for a decode step's one query in any dtype.

    SDPA's CPU flash kernel for bfloat16 is about half as fast at GPT-2's training
    lengths (`bench/attention.py`), and several times slower for one query against a
    cache; float32 sequences, dropout and other devices keep the plain path.
    `gptkit.kernels.accelerate` swaps it in.
    """

    def _kernels_apply(self, q: torch.Tensor) -> bool:
        return q.device.type == "cpu" and not (self.training and self.dropout) and not q.requires_grad

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self._kernels_apply(q) and q.shape[-2] == 1:
            return one_query_attention(q, k, v)
        dropout = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] > 1 and not dropout:
            return bf16_causal_attention(q, k, v)
        return super()._sdpa(q, k, v)

    def attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        if self.use_sdpa and self._kernels_apply(q):
            return one_query_attention(q, k, v, key_mask)
        return super().attend_rows(q, k, v, key_mask)
