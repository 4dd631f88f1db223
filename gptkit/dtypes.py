"""The precisions a config or command line may name, and the torch dtype each means."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Weights to decode with: float16 weights without a gradient scaler's range checks overflow
# GPT-2's activations, so generation offers the two that are safe everywhere.
INFERENCE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
