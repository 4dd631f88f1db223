"""Key/value cache: keys and values of tokens already seen, kept for decoding.

Without it, generating token n recomputes attention inputs for all n - 1
earlier tokens; with it, each step computes one token's keys and values and
appends them.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """Preallocated keys and values of one attention layer, filled left to right."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys and values; return all of them so far."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; {end} requested")
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reset(self) -> None:
        self.length = 0


class KVCache:
    """One `LayerKVCache` per transformer block."""

    def __init__(self, n_layers: int, batch: int, heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.layers = [LayerKVCache(batch, heads, max_len, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
