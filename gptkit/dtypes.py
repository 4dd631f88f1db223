"""The precisions a config or command line may name, and the torch dtype each means.

Names only at import time (no torch), so the command line can offer them in `--help`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
# Ways to store a loaded model's weights in fewer bits for decoding (gptkit.kernels.quantize).
QUANTIZE_SCHEMES: tuple[str, ...] = ("int8",)


def torch_dtype(name: str) -> torch.dtype:
    """`torch.float32` for "float32", and so on for each of `DTYPE_NAMES`."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def dtype_name(dtype: torch.dtype) -> str:
    """"float32" for `torch.float32`, and so on: the name `torch_dtype` takes."""
    return str(dtype).removeprefix("torch.")
