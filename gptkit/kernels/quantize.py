"""`quantize_weights(model, scheme)`: a loaded model's linear weights in fewer bits, for decoding.

One scheme so far, "int8": every stock linear (the attention's and feed-forward's
projections and the output head) becomes an `Int8Linear`, weight-only with a
scale per output channel. The token embedding stays in the model's dtype (it is
looked up, not multiplied), so a tied head gets an int8 copy of it. Linears of
other classes (a LoRA adapter, a plugin's own layer) are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from gptkit.dtypes import QUANTIZE_SCHEMES
from gptkit.errors import GptkitError
from gptkit.kernels import int8_linear
from gptkit.kernels.int8_linear import Int8Linear
from gptkit.kernels.onednn_linear import OneDNNLinear

QUANTIZABLE: tuple[type[nn.Module], ...] = (nn.Linear, OneDNNLinear)  # exact classes, as the kernels switch


def check_quantize(scheme: str, device: str | torch.device = "cpu") -> None:
    """A `GptkitError` unless `scheme` is known and its kernel exists for `device` in this build."""
    if scheme not in QUANTIZE_SCHEMES:
        raise GptkitError(f"unknown quantization scheme {scheme!r}; valid schemes: {', '.join(QUANTIZE_SCHEMES)}")
    if str(device).split(":")[0] != "cpu":  # by name: an unknown device is load_model's to refuse
        raise GptkitError(f"--quantize {scheme} runs on the CPU only, got device {device}; on a GPU use --dtype bfloat16")
    if not int8_linear.INT8_KERNEL:
        raise GptkitError(
            f"--quantize {scheme} needs torch.ops.aten._weight_int8pack_mm, which this PyTorch build "
            f"({torch.__version__}) lacks; use --dtype bfloat16"
        )


def quantize_weights(model: nn.Module, scheme: str) -> int:
    """Replace `model`'s stock linears by their `scheme` versions in place; how many were replaced.

    Quantize a model loaded in float32, before casting it: the scales are then
    computed from the full-precision weights.
    """
    check_quantize(scheme, next(model.parameters()).device)
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in QUANTIZABLE
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear.from_linear(child))  # type: ignore[arg-type]
    return len(targets)
