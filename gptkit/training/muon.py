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

import math
from collections.abc import Iterable
from typing import Any

import torch

# The quintic's coefficients from modded-nanogpt: chosen to raise small singular values
# fast (a steep slope at 0) rather than to converge exactly to 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(update: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately `U V^T` for `update = U S V^T`, by Newton-Schulz iteration in bfloat16."""
    a, b, c = NS_COEFFICIENTS
    x = update.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide side: X X^T is then the smaller product
        x = x.T.contiguous()  # contiguous: a transposed bfloat16 operand misses oneDNN's fast matmul (~100x slower on CPU)
    x = x / (x.norm() + 1e-7)  # the spectral norm is at most the Frobenius norm: all singular values <= 1
    for _ in range(steps):
        gram = x @ x.T
        # x <- a x + (b G + c G^2) x, as two addmm calls: the scaling rides in the matmuls, because
        # bfloat16 elementwise arithmetic on CPU costs more than the matmuls themselves.
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    if tall:
        x = x.T
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
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["use_muon"]:
                    self._muon_update(p, group)
                else:
                    self._adamw_update(p, group)
        return loss

    def _muon_update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        direction = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        # Orthogonal updates have unit singular values whatever the shape; scaling by
        # sqrt(rows / cols) for tall matrices keeps the per-element size comparable.
        scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(orthogonalize(direction, group["ns_steps"]), alpha=-group["lr"] * scale)

    def _adamw_update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if "step" not in state:
            # A tensor, not an int: the checkpoint stores an optimizer's tensors only.
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))
