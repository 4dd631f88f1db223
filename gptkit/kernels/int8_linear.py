"""Int8Linear: a linear layer whose weight is int8 with one float scale per output channel.

Weight-only quantization for decoding: each row of the weight (one output channel)
is scaled so that its largest magnitude maps to 127 and rounded, `weight ≈ int8 *
scale[row]`; the activations keep the model's dtype. A decode step streams every
weight once per token, so a quarter of float32's bytes is what makes it faster.

A few rows at a time (a decode step: one row per sequence; a short prompt; up to `gemv.MAX_ROWS`)
go through gptkit's own kernel, `gptkit.kernels.gemv`, which streams each int8
weight row once and computes in float32 whatever the activations' dtype. It is used
because PyTorch's kernel for this layout, `aten._weight_int8pack_mm`, was slower on
this project's CPU: in float32 it has no vectorised path (a GPT-2 124M decode step
was 2.5x slower than plain float32), and in bfloat16 it read the int8 weights from
memory at about a third of the rate MKL reads float32 ones. Where that kernel
cannot be built (no C compiler), aten's serves, with two limits of its own (torch 2.13,
AVX-512 with BF16):

- in bfloat16 it needs `in_features` a multiple of 16: other widths gave garbage
  or crashed the process (K = 7, 8, 24, 100);
- in float32 its time grows with every row (3072 x 768: 8 ms for 1 row, 85 ms for
  64, where dequantizing and one matmul took 29 ms).

Elsewhere (many rows: a prompt, an evaluation window; an odd width without gptkit's
kernel) the weight is dequantized for the call and multiplied by `F.linear`: the
same numbers up to summation order, more slowly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.kernels import gemv

INT8_KERNEL = hasattr(torch.ops.aten, "_weight_int8pack_mm")
BF16_WIDTH_MULTIPLE = 16  # the kernel's bfloat16 path reads the input in blocks of this many
FLOAT32_KERNEL_ROWS = 4  # up to this many float32 rows the kernel beats dequantize-then-matmul
INT8_MAX = 127  # symmetric: -127..127, so that negating a row negates its int8 values


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, float32 scale per row) with `weight ≈ int8 * scale[:, None]`, rounding to nearest."""
    w = weight.detach().float()
    # An all-zero row would divide by zero: any positive scale gives it zeros.
    scales = (w.abs().amax(dim=1) / INT8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    int8 = torch.round(w / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return int8, scales


def dequantize_rows(int8_weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (int8_weight.to(scales.dtype) * scales[:, None]).to(dtype)


def _use_kernel(rows: torch.Tensor, int8_weight: torch.Tensor) -> bool:
    if not INT8_KERNEL or rows.device.type != "cpu" or rows.numel() == 0:
        return False
    if rows.dtype == torch.bfloat16:
        return int8_weight.shape[1] % BF16_WIDTH_MULTIPLE == 0
    return rows.dtype == torch.float32 and rows.shape[0] <= FLOAT32_KERNEL_ROWS


def int8_linear(
    x: torch.Tensor, int8_weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear(x, int8_weight * scales[:, None], bias)` in x's dtype, through the int8 kernel where it serves."""
    rows = x.reshape(-1, x.shape[-1])
    if gemv.serves(rows, int8_weight, bias, gemv.MAX_ROWS):
        out = gemv.int8_gemv(rows, int8_weight, scales, bias)
        return out.view(*x.shape[:-1], int8_weight.shape[0])
    if _use_kernel(rows, int8_weight):
        out = torch.ops.aten._weight_int8pack_mm(rows.contiguous(), int8_weight, scales.to(x.dtype))
    else:
        out = F.linear(rows, dequantize_rows(int8_weight, scales, x.dtype))
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], int8_weight.shape[0])


class Int8Linear(nn.Module):
    """A linear layer with an int8 weight (out, in), a scale per output channel and an optional bias.

    Not an `nn.Linear` subclass on purpose: code that reads `linear.weight` as a
    float matrix (the fused training loss, LoRA, the flat decode step) must not
    take it for one. The int8 weight is a parameter without a gradient, so the
    model's parameter count still counts it; the scales are a buffer.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.int8_weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """`linear`'s weight quantized from its values (in float32), its bias kept in its dtype."""
        dtype = linear.weight.dtype
        quantized = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype)
        int8, scales = quantize_rows(linear.weight)
        with torch.no_grad():
            quantized.int8_weight.copy_(int8)
            quantized.scales.copy_(scales)  # rounded to the layer's dtype: the kernel takes scales in x's dtype
            if linear.bias is not None:
                quantized.bias.copy_(linear.bias)  # type: ignore[union-attr]
        return quantized.train(linear.training).to(linear.weight.device)  # in the mode of the layer it replaces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.int8_weight, self.scales, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"
