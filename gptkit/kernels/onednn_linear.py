"""OneDNNLinear: `nn.Linear` whose float32 CPU matmuls go through oneDNN instead of the default BLAS.

On CPUs with AVX-512, PyTorch's default float32 matmul (MKL's sgemm through `addmm`)
reaches well under half of what oneDNN's float32 kernels do for the shapes of a GPT
step on an AMD EPYC, and a decode step's one-row products stream the weights about 1.8x
as fast there (GPT-2 124M, all matrices of a step: 23 ms against 42 ms; MKL's matrix-vector
path is fastest with the weight stored transposed, and still takes 33 ms). oneDNN is
already what PyTorch uses for bfloat16, and `_linear_pointwise` (the
op inductor emits for CPU linears) exposes it for float32 too. It computes in float32
throughout, so results match `F.linear` to rounding (the summation order differs).

The forward and both backward matmuls (input and weight gradients) all take that path.
Parameters, names and state dicts are exactly `nn.Linear`'s. Anything else — CUDA,
other dtypes, autocast (which must see `F.linear` to cast it), `torch.compile`
tracing (inductor lowers linears itself), or a build without oneDNN — uses `F.linear`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.kernels import gemv
from gptkit.kernels.frozen_cast import autocast_frozen_dtype, cast_frozen
from gptkit.kernels.native import cpu_flags, cpu_vendor

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# MKL picks slow code paths on CPUs not made by Intel, which is where oneDNN wins (the
# figures above, an AMD EPYC). On Intel's own CPUs it is the other way round: on a
# Sapphire Rapids VM a GPT-2 124M decode step took 28 ms through MKL against 36 ms
# through oneDNN, a training step (4 x 256, fp32) 4.9 s against 5.6 s, interleaved. So
# the oneDNN path is taken where it is available and the CPU is not Intel's.
def prefers_onednn(vendor: str) -> bool:
    return _ONEDNN and vendor != "GenuineIntel"


PREFER_ONEDNN = prefers_onednn(cpu_vendor())


def _matmul_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T in float32 through oneDNN; a is (m, k), b is (n, k), either may be strided."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], weight.shape[0])


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x.reshape(-1, x.shape[-1]), weight)
        ctx.has_bias = bias is not None
        ctx.input_shape = x.shape
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, weight = ctx.saved_tensors
        g2 = grad_out.reshape(-1, weight.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_t(g2, weight.t()).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_w = _matmul_t(g2.t(), x2.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        PREFER_ONEDNN
        # First: inductor lowers linears itself, and a test on a symbolic size would be a guard.
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
    )


# Up to how many rows gptkit's streaming kernel (`gemv.float_gemv`) beats the library for a product with
# nothing to differentiate: all 49 products of a GPT-2 124M decode step, 2 threads.
# float32, AMD EPYC, against oneDNN: 14.7 against 23.6 ms for 4 rows, 24.5 against 30.6 for 16, equal at 32
# (one thread: 40.5 against 47.7 for 16, 71.6 against 69.1 for 32). Intel Xeon (Sapphire Rapids), against
# MKL: equal for 1 row (19.6 against 19.3), 23.3 against 48.9 for 8, 33.9 against 49.4 for 16; oneDNN is
# slower than MKL there. bfloat16 against oneDNN's bfloat16 instructions, where the kernel multiplies
# bfloat16 pairs too (`gemv.bf16_pairs`), AMD: 7.1 against 18.2 ms for 8 rows, 10.3 against 19.0 for 16
# (one thread: 19.1 against 23.7), 38.3 against 33.3 for 32 on one thread. Where the CPU has AMX tiles,
# oneDNN multiplies many rows on them: Intel, 18.7 against 19.2 for 8 rows, 22.7 against 17.8 for 12.
# Where the kernel widens each weight to float32 instead, oneDNN is as fast from 8 rows. Where the CPU has
# AVX2 but not AVX-512 (AMD Zen 3, 1 thread), oneDNN has no bfloat16 instructions to use and the kernel's
# 8-wide vectors win at every size: 69 against 252 ms for 8 rows, 278 against 1038 for 32 (float32 there:
# 99 against oneDNN's 131 for 8 rows, 169 against 175 for 16, 282 against 242 for 32).
GEMV_ROWS = {torch.float32: 16}
BF16_GEMV_ROWS = {"pairs": 16, "pairs+amx": 8, "widened": 4, "widened-avx2": gemv.MAX_ROWS}  # by `bf16_gemv_kind()`


@functools.cache
def bf16_gemv_kind() -> str:
    """How the kernel and the library multiply bfloat16 here: the key of `BF16_GEMV_ROWS`."""
    if not gemv.bf16_pairs():
        return "widened-avx2" if gemv.vector_lanes() == 8 else "widened"
    return "pairs+amx" if "amx_bf16" in cpu_flags() else "pairs"


def gemv_rows(dtype: torch.dtype) -> int:
    """Up to how many rows `linear` sends a product in `dtype` to `gemv.float_gemv` (0: never)."""
    if dtype == torch.bfloat16:
        return BF16_GEMV_ROWS[bf16_gemv_kind()]
    return GEMV_ROWS.get(dtype, 0)


def use_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear` sends this product to `gemv.float_gemv`: a few rows (a decode step), no gradient."""
    rows = gemv_rows(x.dtype)
    return weight.dtype == x.dtype and rows > 0 and gemv.serves(x, weight, bias, rows)


def widen_bf16(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear` multiplies these bfloat16 rows in float32: many rows (a prompt, an evaluation window)
    with nothing to differentiate, on a CPU whose vectors have no bfloat16 arithmetic (`widened-avx2`).

    There PyTorch's bfloat16 matmul emulates it: all 49 products of a GPT-2 124M step for 128 rows took
    1.78 s on a Zen 3, against 0.42 s with rows and weight widened to float32 first (7.5 s against 1.5 s
    for 512). The result is rounded to bfloat16 once, as the bfloat16 matmul's float32 sums are.
    """
    return (
        x.dtype == weight.dtype == torch.bfloat16
        and (bias is None or bias.dtype == torch.bfloat16)
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
        and bf16_gemv_kind() == "widened-avx2"
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, through gptkit's streaming kernel for a decode step's few rows (`gemv_rows`), and
    through oneDNN where that is faster (float32 on CPUs not made by Intel)."""
    if use_gemv(x, weight, bias):
        out = gemv.float_gemv(x.reshape(-1, x.shape[-1]), weight, bias)
        return out.view(*x.shape[:-1], weight.shape[0])
    if widen_bf16(x, weight, bias):
        return linear(x.float(), weight.float(), None if bias is None else bias.float()).to(torch.bfloat16)
    if not use_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _OneDNNLinear.apply(x, weight, bias)
    # Nothing to differentiate (generation, evaluation): a decode step makes 49 of these
    # calls, and the autograd Function's own cost was 2.4 ms of a 34 ms step.
    return _onednn_linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """`nn.Linear` with the float32 CPU path of `linear`, and a frozen weight's autocast copy kept
    between steps (`gptkit.kernels.frozen_cast`); `gptkit.kernels.accelerate` swaps it in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_frozen_dtype(x, self.weight)
        if dtype is not None and (self.bias is None or not self.bias.requires_grad):
            bias = None if self.bias is None else cast_frozen(self.bias, dtype)
            return F.linear(x.to(dtype), cast_frozen(self.weight, dtype), bias)
        return linear(x, self.weight, self.bias)
