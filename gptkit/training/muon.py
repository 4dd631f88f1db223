"""Muon: momentum whose update is orthogonalised, for the hidden weight matrices; AdamW for the rest.

Muon (Keller Jordan, 2024; modded-nanogpt's speedrun records, nanochat) keeps
SGD momentum for a weight matrix and replaces the update by the nearest
semi-orthogonal matrix, `U V^T` of the update's SVD `U S V^T`: every direction
the gradient points in moves by the same amount, instead of a few dominant ones
taking the whole step. The SVD is too slow to take each step, so a few
Newton-Schulz iterations of an odd quintic polynomial push the singular values
towards 1 (not exactly: to roughly 0.7 .. 1.2, which trains as well and costs
five matmul triples).

The update only makes sense for 2-D matrices that are transforms of hidden
states. Embeddings (a lookup table), the output head, norms' gains and biases
keep AdamW, as both modded-nanogpt and nanochat do; each parameter group says
which it is (`use_muon`), so one optimizer, one `state_dict` and one resume path
hold both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.adamw import adamw

# The quintic's coefficients from modded-nanogpt: chosen to raise small singular values
# fast (a steep slope at 0) rather than to converge exactly to 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately `U V^T` for `update = U S V^T`, by Newton-Schulz iteration in bfloat16.

    `update` is one matrix or a stack of same-shaped ones (`(n, rows, cols)`), each
    orthogonalised on its own: a stack goes through the iteration as batched matmuls,
    the same arithmetic in a third as many calls for a GPT's per-block matrices.
    """
    a, b, c = NS_COEFFICIENTS
    x = update.bfloat16()
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)
    tall = x.size(1) > x.size(2)
    if tall:  # iterate on the wide side: X X^T is then the smaller product
        x = x.mT.contiguous()  # contiguous: a transposed bfloat16 operand misses oneDNN's fast matmul (~100x slower on CPU)
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)  # the spectral norm is at most the Frobenius norm: all singular values <= 1
    for _ in range(steps):
        gram = x @ x.mT
        # x <- a x + (b G + c G^2) x, as two baddbmm calls: the scaling rides in the matmuls, because
        # bfloat16 elementwise arithmetic on CPU costs more than the matmuls themselves.
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    if tall:
        x = x.mT
    if single:
        x = x.squeeze(0)
    return x.to(update.dtype)


class Muon(torch.optim.Optimizer):
    """Muon on the groups with `use_muon` set, AdamW (decoupled weight decay) on the others.

    Every group has its own `lr`, `weight_decay`; Muon groups use `momentum`,
    `nesterov` and `ns_steps`, AdamW groups `betas` and `eps`.
    """

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
            "betas": betas, "eps": eps, "weight_decay": weight_decay, "use_muon": False,
        }
        super().__init__(list(param_groups), defaults)
        for group in self.param_groups:
            if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
                shapes = sorted({tuple(p.shape) for p in group["params"] if p.dim() != 2})
                raise ValueError(f"Muon updates 2-D weight matrices only; its group holds parameters of shape {shapes}")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["use_muon"]:
                self._muon_update(params, group)
            else:
                self._adamw_update(params, group)
        return loss

    def _muon_update(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        directions = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            directions.append(p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf)
        # Same-shaped matrices (each block's qkv, its projection, ...) are orthogonalised as one stack.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape), []).append(index)
        for shape, indices in by_shape.items():
            updates = orthogonalize(torch.stack([directions[i] for i in indices]), group["ns_steps"])
            # Orthogonal updates have unit singular values whatever the shape; scaling by
            # sqrt(rows / cols) for tall matrices keeps the per-element size comparable.
            scale = max(1.0, shape[0] / shape[1]) ** 0.5
            for i, update in zip(indices, updates, strict=True):
                params[i].mul_(1 - group["lr"] * group["weight_decay"])
                params[i].add_(update, alpha=-group["lr"] * scale)

    def _adamw_update(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        for p in params:
            state = self.state[p]
            if "step" not in state:
                # A tensor, not an int: the checkpoint stores an optimizer's tensors only.
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        if not params:
            return
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        # torch's own AdamW arithmetic; the fused kernel takes the whole update in one pass over each
        # tensor, several times faster on CPU than an operation at a time over a GPT's embedding.
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params)
        adamw(
            params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
            [s["step"] for s in states], foreach=None if fused else False, fused=fused or None, amsgrad=False,
            beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
        )
