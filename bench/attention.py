"""Benchmark: bf16 causal attention on CPU, gptkit's path against SDPA's kernel.

    python bench/attention.py [--rounds 9] [--threads N]

One attention layer's forward and backward in bfloat16, as a training step runs
it: q, k and v are views of one fused projection's output, the malloc policy is
the Trainer's (`gptkit.kernels.cpu_allocator`), and the two implementations alternate,
warm-up first, medians reported. Shapes: the `gpt2` preset's (4 x 256 tokens, 12
heads of 64) and `cpu-small`'s (8 x 256, 4 heads of 64). Also prints each one's
relative error against float64, for the output and the q, k, v gradients.
Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gptkit.kernels.cpu_allocator import retain_freed_memory
from gptkit.kernels.bf16_attention import bf16_causal_attention

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SHAPES = {"gpt2": (4, 256, 12, 64), "cpu-small": (8, 256, 4, 64)}  # batch, seq, heads, head_dim
METHODS: dict[str, Attention] = {
    "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "gptkit": bf16_causal_attention,
}


def layer_step(fn: Attention, qkv: torch.Tensor, grad: torch.Tensor, heads: int) -> torch.Tensor:
    """Forward and backward through one layer's attention; returns the output."""
    batch, seq, width = grad.shape
    q, k, v = qkv.view(batch, seq, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = fn(q, k, v).transpose(1, 2).reshape(batch, seq, width)
    out.backward(grad)
    return out


def errors(fn: Attention, qkv: torch.Tensor, grad: torch.Tensor, heads: int) -> tuple[float, float]:
    """Relative errors of the output and of the fused q/k/v gradient against float64."""
    exact = qkv.detach().double().requires_grad_()
    want = layer_step(METHODS["sdpa"], exact, grad.double(), heads)
    qkv.grad = None
    got = layer_step(fn, qkv, grad, heads)
    assert qkv.grad is not None and exact.grad is not None
    out_err = ((got.double() - want).norm() / want.norm()).item()
    grad_err = ((qkv.grad.double() - exact.grad).norm() / exact.grad.norm()).item()
    qkv.grad = None
    return out_err, grad_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"bf16 attention, forward + backward of one layer, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds of 5 calls\n")
    print("| shape | SDPA ms | gptkit ms | speed-up | rel. error SDPA out / grad | rel. error gptkit out / grad |")
    print("|---|---:|---:|---:|---|---|")
    g = torch.Generator().manual_seed(0)
    with retain_freed_memory():
        for name, (batch, seq, heads, head_dim) in SHAPES.items():
            width = heads * head_dim
            qkv = torch.randn(batch, seq, 3 * width, generator=g).to(torch.bfloat16).requires_grad_()
            grad = torch.randn(batch, seq, width, generator=g).to(torch.bfloat16)
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for round_ in range(args.rounds + 1):  # round 0 warms up
                for method, fn in METHODS.items():
                    start = time.perf_counter()
                    for _ in range(5):
                        layer_step(fn, qkv, grad, heads)
                    if round_:
                        times[method].append((time.perf_counter() - start) / 5 * 1000)
                    qkv.grad = None
            ms = {m: statistics.median(t) for m, t in times.items()}
            err = {m: errors(fn, qkv, grad, heads) for m, fn in METHODS.items()}
            print(f"| {name} {batch}x{seq}, {heads} heads | {ms['sdpa']:.1f} | {ms['gptkit']:.1f} | "
                  f"{ms['sdpa'] / ms['gptkit']:.2f}x | {err['sdpa'][0]:.1e} / {err['sdpa'][1]:.1e} | "
                  f"{err['gptkit'][0]:.1e} / {err['gptkit'][1]:.1e} |")


if __name__ == "__main__":
    main()
