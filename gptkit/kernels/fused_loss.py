"""Next-token cross-entropy, from logits or straight from the final hidden states.

A 50257-token vocabulary makes the logits the largest tensor of a GPT-2 step: for a
batch of 8 x 256 tokens, 411 MB in float32, written by the output head, read by the
log-softmax, and matched by a gradient of the same size in the backward pass — about
2 GB of fresh memory a step, each page of it faulted in and zeroed by the kernel.
`fused_next_token_loss` holds a few rows of logits at a time: each chunk's
log-softmax becomes its loss and, when gradients are wanted, its rows of the
logits' gradient, written in place into one buffer; the head's two gradient
matmuls follow at once and the backward pass only scales them. Results match
`next_token_loss` on full logits to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.kernels.frozen_cast import cast_frozen
from gptkit.kernels.onednn_linear import linear
from gptkit.model.gpt import GPTModel

IGNORE_INDEX = -100
WEIGHT_GRAD_SLICE = 2048  # vocabulary rows of the head's weight gradient computed at a time


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets that are not -100, always returned in float32.

    Low-precision logits keep their dtype through the log-softmax (whose kernel
    accumulates in float32) instead of being upcast as autocast would do: with a
    50257-token vocabulary that upcast copy, and a float32 softmax over it, cost
    more than the rest of a small model's step. Only the picked log-probabilities
    are summed in float32, so the rounding of each is averaged out, not the mean's.
    """
    logits, targets = logits.flatten(0, 1), targets.flatten()
    if logits.dtype == torch.float32:
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    with torch.autocast(logits.device.type, enabled=False):
        log_probs = torch.log_softmax(logits, dim=-1)
    keep = targets != IGNORE_INDEX
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
    return -(picked * keep).sum() / keep.sum().clamp(min=1)


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def chunk_rows_for(vocab_size: int, element_bytes: int = 4, budget_bytes: int = 96 << 20) -> int:
    """Rows of logits that fit the budget (about 500 float32 rows of GPT-2's vocabulary).

    Larger chunks make the head's matmul more efficient (on 2 CPU cores, 500 float32
    rows of 256 or 768 features run the chunk loop 10% faster than 166); smaller ones
    hold less memory at once, and with the gradient written in place a chunk's logits
    are all there is. Either way, the allocator reuses one chunk's memory for the next.
    """
    return max(8, budget_bytes // (element_bytes * vocab_size))


def _head_weight_grad(grad_logits: torch.Tensor, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad_logits.T @ h as a contiguous (vocab, emb) tensor of `dtype`.

    For bfloat16 on CPU it is built in slices of the vocabulary, each product
    copied into the float32 result while it is still in cache: faster than one
    whole product followed by its conversion (GPT-2 124M, 1024 tokens, 2 cores:
    199 vs 241 ms), and than slices computed transposed (263 ms). For float32
    there is no conversion to hide, and oneDNN is pathologically slow on column
    slices, so the plain product stays.
    """
    if h.device.type != "cpu" or h.dtype == torch.float32:
        return torch.mm(grad_logits.t(), h).to(dtype)
    vocab = grad_logits.shape[1]
    out = torch.empty(vocab, h.shape[1], dtype=dtype, device=h.device)
    for start in range(0, vocab, WEIGHT_GRAD_SLICE):
        part = slice(start, start + WEIGHT_GRAD_SLICE)
        out[part].copy_(torch.mm(grad_logits[:, part].t(), h))
    return out


class _FusedLoss(torch.autograd.Function):
    """Loss and both gradients in the forward pass; backward scales them by the incoming gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        want_grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        h, w = hidden.to(dtype), cast_frozen(weight, dtype)  # a frozen head (LoRA's) is cast once, not each step
        keep = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0).unsqueeze(-1)
        rows_per_chunk = chunk_rows_for(w.shape[0], w.element_size())
        # Where each row's target sits in a flattened chunk of logits.
        target_offsets = torch.arange(rows_per_chunk, device=h.device) * w.shape[0]
        # Gradient of the summed loss w.r.t. the logits, filled chunk by chunk.
        grad_logits = h.new_empty(h.shape[0], w.shape[0]) if want_grads else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for start in range(0, h.shape[0], rows_per_chunk):
                rows = slice(start, start + rows_per_chunk)
                # Low-precision logits stay so: log_softmax accumulates in float32 anyway,
                # and an upcast copy would double the bytes every later step reads.
                logits = linear(h[rows], w)
                # With gradients wanted, the log-probabilities go straight into their rows of
                # the gradient buffer and become probabilities there: no chunk-sized temporary.
                out = grad_logits[rows] if grad_logits is not None else None
                log_probs = torch.log_softmax(logits, dim=-1, out=out)
                del logits
                picked = log_probs.gather(-1, safe_targets[rows]).squeeze(-1).float()
                total -= (picked * keep[rows]).sum()
                if grad_logits is not None:
                    # d(-log p_t)/d logits = softmax - onehot(t); zero for ignored targets.
                    probs = log_probs.exp_()
                    # index_add_ on the flat view, not scatter_add_: on CPU, bfloat16 scatter_add_
                    # copies the whole chunk (2 ms per 166 x 50257 chunk) to change 166 values.
                    n = probs.shape[0]
                    probs.view(-1).index_add_(0, target_offsets[:n] + safe_targets[rows, 0], probs.new_full((n,), -1.0))
                    ignored = (~keep[rows]).nonzero().squeeze(-1)
                    if ignored.numel():
                        probs.index_fill_(0, ignored, 0.0)
            if grad_logits is not None:
                # Plain mm, not oneDNN: BLAS reads the transposed operands in place, where
                # oneDNN would first copy the (tokens, vocab) buffer (206 MB for 4 x 256
                # GPT-2 tokens) into another layout; the two take the same time here.
                grad_hidden = torch.mm(grad_logits, w).to(hidden.dtype) if ctx.needs_input_grad[0] else None
                # A frozen head (LoRA's base, tied to the frozen embedding) needs no weight gradient:
                # skipping it saves a (vocab x emb x tokens) matmul, a third of the head's work.
                grad_weight = _head_weight_grad(grad_logits, h, weight.dtype) if ctx.needs_input_grad[1] else None
                ctx.save_for_backward(grad_hidden, grad_weight)
        count = keep.sum().clamp(min=1)
        ctx.count = count
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.count
        return (None if grad_hidden is None else grad_hidden.mul_(scale),
                None if grad_weight is None else grad_weight.mul_(scale), None, None)


def fused_next_token_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`next_token_loss(hidden @ weight.T, targets)` without keeping the logits.

    `hidden` is (..., emb) and `targets` the matching (...) with -100 for ignored
    positions. Under autocast the head's matmuls run in the autocast dtype, as
    they would through `F.linear`; the log-softmax accumulates in float32
    and the summed loss is float32. Memory: one
    (tokens, vocab) gradient buffer instead of logits, log-probabilities and
    their gradients. Backward may be called once (the gradients are scaled in place).

    Positions whose target is -100 are left out before the head: an instruction batch's
    prompt and padding (often most of its tokens) cost no head matmul, forward or backward,
    and their hidden states get a zero gradient, as they would from the full logits.
    """
    dtype = _compute_dtype(hidden)
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    keep = targets != IGNORE_INDEX
    if not bool(keep.all()):
        rows = keep.nonzero().squeeze(-1)
        hidden, targets = hidden.index_select(0, rows), targets.index_select(0, rows)
    return _FusedLoss.apply(hidden, weight, targets, dtype)


class FusedLossGPTModel(GPTModel):
    """`GPTModel` whose training loss comes from `fused_next_token_loss`; `gptkit.kernels.accelerate` swaps it in."""

    def head_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or not isinstance(self.out_head, nn.Linear):
            # inductor fuses the plain head and loss itself, and cannot trace the custom backward;
            # a head that is more than its weight (a LoRA adapter around it) must run its own forward.
            return super().head_loss(hidden, targets)
        return fused_next_token_loss(hidden, self.out_head.weight, targets)
