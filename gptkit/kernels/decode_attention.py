"""One query per row against a KV cache: a decode step's attention on CPU, in bfloat16 from float32 copies.

`F.scaled_dot_product_attention` runs one bfloat16 query on the CPU through its
flash-attention kernel, whose time grows with the cache far faster than float32's:
one query, 12 heads of 64, 2 threads, AMD EPYC: 132 µs at 144 keys and 962 µs at
1000, where the same call on float32 copies of q, k and v takes 69 and 304 µs,
copies included; a batch of 8 rows at 16 keys, 131 against 76 µs. Below about 64
keys in all (rows x keys) the bfloat16 kernel is the faster (one row, 32 keys: 37
against 48 µs). So from `FLOAT32_FROM_ROW_KEYS` on, a bfloat16 query is attended in
float32 and the result rounded once to bfloat16; that is also the more exact of the
two. Float32 queries, and smaller caches, take SDPA as they come.

`CPUAttention` (one-query decoding) and the flat decode step both call this, so
the two give the same logits bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLOAT32_FROM_ROW_KEYS = 64


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q·kᵀ / sqrt(head_dim))·v for q (batch, heads, 1, head_dim) and k, v (batch, heads, keys, head_dim).

    `key_mask`, (batch, 1, 1, keys) booleans, keeps each row to its own keys (a ragged batch); without
    it every key is attended, which is the causal mask for a query at the newest position.
    """
    if q.dtype == torch.bfloat16 and q.shape[0] * k.shape[-2] >= FLOAT32_FROM_ROW_KEYS:
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=key_mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
