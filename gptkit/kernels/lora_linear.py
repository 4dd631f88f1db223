"""CPULoRALinear: `LoRALinear` whose adapter shares the base's input cast and adds into its output in one matmul.

Under autocast a LoRA layer's input arrives in float32 (LayerNorm runs in float32 there),
and the readable layer hands it to two linears, the base and the adapter's A, each of
which casts it to bfloat16 for itself. Here it is cast once, for both. The update then
goes into the base's output as `addmm(base, x A^T, B^T, alpha=scale)`: one matmul
writing the sum, where `base + (x A^T B^T) * scale` made a (tokens, out) product, a
scaled copy of it and their sum. Same parameters, names and results (to rounding).
On GPT-2 124M's qkv shape (4 x 256 tokens, 768 -> 2304, rank 8, bf16 autocast), forward
and backward take about 0.87x the readable layer's time, interleaved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptkit.layers.lora import LoRALinear


class CPULoRALinear(LoRALinear):
    """`LoRALinear` with one input cast and the update added by `addmm`; `gptkit.kernels.accelerate` swaps it in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))  # once, for the base and the adapter
        base = self.base(x)
        down = F.linear(self.dropout(x), self.lora_A).reshape(-1, self.rank)
        return torch.addmm(base.reshape(-1, base.shape[-1]), down, self.lora_B.t(), alpha=self.scaling).view(base.shape)
