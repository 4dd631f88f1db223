"""The causal mask: which keys each query may attend to."""

from __future__ import annotations

import torch


def causal_mask(q_len: int, k_len: int, device: torch.device | None = None) -> torch.Tensor:
    """True where query i may attend to key j.

    With a KV cache the queries are the *last* q_len of k_len positions, so the
    diagonal is shifted by k_len - q_len rather than starting at the top left.
    """
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)
