"""Grouped-query attention, with QK-norm and a sliding window as options: the attention of recent open models.

Select with ``model.attention=gqa`` (``{"name": "gqa", "n_kv_heads": 2}``),
``model.attention=qk_norm`` or ``{"name": "sliding_window", "window": 64}``.

- Grouped-query attention (Ainslie et al., 2023; LLaMA 2/3, Mistral): the query
  heads share ``n_kv_heads`` key/value heads, each serving an equal group of them.
  The KV cache then holds ``n_kv_heads`` heads instead of ``n_heads``, which is
  what bounds decoding memory. ``n_kv_heads=1`` is multi-query attention (Shazeer,
  2019); ``n_kv_heads=n_heads`` is GPT-2's multi-head attention, weight for weight.
- QK-norm (Qwen 3, Gemma 3, OLMo 2): RMSNorm on each head's query and key before
  the position rotation, one learned scale per channel shared by the heads. Scores
  then cannot grow without bound, which keeps the softmax from saturating at high
  learning rates.
- Sliding window (Longformer; Mistral): each query sees its own key and the
  ``window - 1`` before it. A window of the context length or longer masks nothing.

The three are one module because they change three different steps of one forward
pass (the projection's width, q and k after it, the mask) and models combine them;
the three names are that module with different defaults, and each takes all three
options: ``{"name": "gqa", "n_kv_heads": 2, "qk_norm": true, "window": 64}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from gptkit import ComponentParams, ModelConfig, Registry, hookimpl
from gptkit.hookspecs import LayerKVCache, PositionEncoding
from gptkit.layers.causal_mask import causal_mask


def sliding_window_mask(q_len: int, k_len: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """True where query i may attend to key j: causal, and fewer than `window` positions back.

    As in `causal_mask`, the queries are the last q_len of k_len positions.
    """
    recent = torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu(diagonal=k_len - q_len - window + 1)
    return causal_mask(q_len, k_len, device) & recent


class GroupedQueryAttention(nn.Module):
    """Causal self-attention whose `num_heads` query heads share `n_kv_heads` key/value heads.

    The projection is one linear, as in `MultiHeadAttention`, laid out as all the
    queries, then the keys, then the values; with `n_kv_heads == num_heads` its
    weights are `MultiHeadAttention`'s, in the same order.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        context_length: int,
        dropout: float,
        num_heads: int,
        n_kv_heads: int,
        qkv_bias: bool = False,
        *,
        qk_norm: bool = False,
        window: int | None = None,
    ) -> None:
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        if num_heads % n_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by n_kv_heads ({n_kv_heads})")
        self.d_out = d_out
        self.context_length = context_length
        self.num_heads = num_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_out // num_heads
        self.dropout = dropout
        self.window = window
        kv_dim = n_kv_heads * self.head_dim
        self.split_sizes = (d_out, kv_dim, kv_dim)
        self.qkv = nn.Linear(d_in, d_out + 2 * kv_dim, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6) if qk_norm else None
        self.out_proj = nn.Linear(d_out, d_out)
        self.out_proj.is_residual_projection = True  # type: ignore[assignment]

    def forward(
        self,
        x: torch.Tensor,
        position: PositionEncoding | None = None,
        start_pos: int | torch.Tensor = 0,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        q, k, v = self.qkv(x).split(self.split_sizes, dim=-1)
        # (batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)
        q = q.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            # Each gain in the activations' dtype, as plugins/rmsnorm.py does: under bf16 autocast a
            # float32 gain sends torch past its fused kernel.
            q = F.rms_norm(q, (self.head_dim,), self.q_norm.weight.to(q.dtype), self.q_norm.eps)
            k = F.rms_norm(k, (self.head_dim,), self.k_norm.weight.to(k.dtype), self.k_norm.eps)
        if position is not None:
            q, k = position.rotate(q, k, start_pos)
        key_mask = None
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # the cache holds n_kv_heads heads, not num_heads
            key_mask = kv_cache.key_mask(self.window)  # rows of their own lengths: each row's keys, in the window
        context = self.attend(q, k, v) if key_mask is None else self.attend_rows(q, k, v, key_mask)
        return self.out_proj(context.transpose(1, 2).reshape(batch, seq_len, self.d_out))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q·kᵀ / sqrt(head_dim))·v per query head, against its group's key/value head."""
        q_len, k_len = q.shape[-2], k.shape[-2]
        dropout = self.dropout if self.training else 0.0
        # enable_gqa: query head h reads key/value head h // (num_heads / n_kv_heads), without copying them.
        if self.window is None and q_len == k_len:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, enable_gqa=True)
        mask = causal_mask(q_len, k_len, q.device) if self.window is None else sliding_window_mask(q_len, k_len, self.window, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=True)

    def attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """`attend` for one query per row, each against the keys `key_mask` (batch, 1, 1, keys) allows it."""
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout, enable_gqa=True)


# --- registration: three names, one module with different defaults ------------------------


class GroupedQueryParams(ComponentParams):
    n_kv_heads: int | None = Field(1, gt=0, description="Key/value heads; 1 (the default) is multi-query attention, None: n_heads.")
    qk_norm: bool = Field(False, description="RMSNorm on each head's queries and keys.")
    window: int | None = Field(None, gt=0, description="Keys each query sees (its own included); None: all earlier ones.")

    def check_model(self, cfg: ModelConfig) -> None:
        if self.n_kv_heads is not None and cfg.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({cfg.n_heads}) must be divisible by attention n_kv_heads ({self.n_kv_heads})")


class QKNormParams(GroupedQueryParams):
    n_kv_heads: int | None = Field(None, gt=0, description="Key/value heads; None (the default): n_heads.")
    qk_norm: bool = Field(True, description="RMSNorm on each head's queries and keys.")


class SlidingWindowParams(GroupedQueryParams):
    n_kv_heads: int | None = Field(None, gt=0, description="Key/value heads; None (the default): n_heads.")
    window: int | None = Field(256, gt=0, description="Keys each query sees (its own included); longer than the context: all.")


def build_gqa(cfg: ModelConfig, n_kv_heads: int | None, qk_norm: bool, window: int | None) -> GroupedQueryAttention:
    return GroupedQueryAttention(
        cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.drop_rate, cfg.n_heads, n_kv_heads or cfg.n_heads, cfg.qkv_bias,
        qk_norm=qk_norm, window=window,
    )


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register(
        "attention", "gqa", build_gqa, params=GroupedQueryParams,
        description="Grouped-query attention: n_kv_heads key/value heads shared by the query heads (LLaMA 2/3)",
    )
    registry.register(
        "attention", "qk_norm", build_gqa, params=QKNormParams,
        description="Attention with RMSNorm on each head's queries and keys (Qwen 3, OLMo 2)",
    )
    registry.register(
        "attention", "sliding_window", build_gqa, params=SlidingWindowParams,
        description="Attention over the last `window` keys only (Mistral)",
    )
