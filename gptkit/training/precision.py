"""The precision a run trains in: `run.dtype`, unless this device cannot do it at speed.

bfloat16 autocast on a CPU is fast only where oneDNN has bfloat16 matrix kernels for it: x86
CPUs with AVX-512 (BW, VL and DQ) and Arm CPUs with BF16. Elsewhere, an AVX2-only x86 CPU for
one, PyTorch multiplies bfloat16 matrices one element at a time, and most of all in the backward
pass: one GPT-2 124M step on 256 tokens took 4.2 s forward and 115 s backward on an AVX2 Zen 3,
against 0.8 s and 1.5 s in float32. As `torch.autocast` does itself when a CUDA device lacks the
dtype asked for, such a run trains in float32 instead, and says so.
"""

from __future__ import annotations

import torch


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has oneDNN's bfloat16 matrix kernels (AVX-512 BW/VL/DQ, or Arm's BF16)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_dtype(requested: torch.dtype, device: torch.device) -> tuple[torch.dtype, str | None]:
    """The dtype to autocast to on `device` for `run.dtype` = `requested`, and a note for the user
    when that is not `requested`."""
    if requested == torch.bfloat16 and device.type == "cpu" and not cpu_has_bf16_matmul():
        return torch.float32, (
            "run.dtype=bfloat16 trains in float32 on this CPU: it has no bfloat16 matrix kernels "
            "(AVX-512 or Arm BF16), so bfloat16 steps would run tens of times slower than float32; "
            "set run.dtype=float32 to say so in the config"
        )
    return requested, None
