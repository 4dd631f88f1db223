"""Causal multi-head self-attention.

Each token's query is compared with the keys of itself and every earlier token;
the softmax of those scores weights the values. Heads do this in parallel on
slices of the embedding, and a final projection mixes them back together.

A cache whose rows hold different numbers of positions (`RaggedKVCache`) hands
attention a key mask as well: which of the returned keys belong to each row. A
uniform cache hands none, and the mask-free paths run as before.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptkit.hookspecs import hookimpl
from gptkit.layers.causal_mask import causal_mask
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.hookspecs import ModelShape
    from gptkit.layers.embeddings import PositionEncoding
    from gptkit.layers.kv_cache import LayerKVCache
    from gptkit.registry import Registry


class MultiHeadAttention(nn.Module):
    """Causal self-attention with `num_heads` heads (GPT-2's "c_attn"/"c_proj").

    The arguments are those of Raschka's book, in its order. ``use_sdpa=False``
    runs the computation written out with `masked_fill`, as the book does;
    ``True`` (the default) gives the same result through
    `F.scaled_dot_product_attention`, which picks a fused kernel (flash attention
    on a GPU) and never materialises the (seq, seq) weights when it can avoid it.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        qkv_bias: bool = False,
        *,
        use_sdpa: bool = True,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out = d_out
        self.context_length = context_length
        self.num_heads = num_heads
        self.head_dim = d_out // num_heads
        self.dropout = dropout
        self.use_sdpa = use_sdpa
        # One matmul for queries, keys and values together: three times wider, one launch.
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out, bias=proj_bias)
        self.out_proj.is_residual_projection = True  # type: ignore[assignment]
        self.attn_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        position: PositionEncoding | None = None,
        start_pos: int | torch.Tensor = 0,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        # (batch, seq, 3, heads, head_dim) -> three tensors of (batch, heads, seq, head_dim)
        q, k, v = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if position is not None:
            q, k = position.rotate(q, k, start_pos)
        key_mask = None
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
            key_mask = kv_cache.key_mask()
        context = self.attend(q, k, v) if key_mask is None else self.attend_rows(q, k, v, key_mask)
        context = context.transpose(1, 2).reshape(batch, seq_len, self.d_out)
        return self.out_proj(context)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q·kᵀ / sqrt(head_dim))·v under the causal mask, per head."""
        return self._sdpa(q, k, v) if self.use_sdpa else self._explicit(q, k, v)

    def attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """`attend` for one query per row against the keys `key_mask` (batch, 1, 1, keys) allows that row.

        Each query is its row's newest position, so its row's keys are all earlier:
        the mask is the causal mask too.
        """
        if not self.use_sdpa:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            return self.attn_dropout(torch.softmax(scores.masked_fill(~key_mask, float("-inf")), dim=-1)) @ v
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        allowed = causal_mask(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        return weights @ v

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q_len, k_len = q.shape[-2], k.shape[-2]
        dropout = self.dropout if self.training else 0.0
        if q_len == k_len:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        # Decoding against a cache: is_causal would align the mask top-left, which is wrong here.
        mask = None if q_len == 1 else causal_mask(q_len, k_len, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


# --- registration: `model.attention = "mha"` ---------------------------------------


class AttentionParams(ComponentParams):
    use_sdpa: bool = Field(True, description="False: the explicit masked_fill path (slower, same result).")


def build_mha(cfg: ModelShape, use_sdpa: bool) -> MultiHeadAttention:
    return MultiHeadAttention(
        cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads, cfg.qkv_bias, use_sdpa=use_sdpa
    )


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("attention", "mha", build_mha, params=AttentionParams, description="Causal multi-head attention via SDPA (GPT-2)")
