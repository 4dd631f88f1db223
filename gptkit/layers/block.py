"""The pre-LN transformer block: GPT-2's repeating unit."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gptkit.hookspecs import hookimpl
from gptkit.layers.attention import MultiHeadAttention
from gptkit.layers.feed_forward import FeedForward
from gptkit.layers.layer_norm import LayerNorm

if TYPE_CHECKING:
    from gptkit.hookspecs import ModelShape
    from gptkit.layers.embeddings import PositionEncoding
    from gptkit.layers.kv_cache import LayerKVCache
    from gptkit.registry import Registry


class TransformerBlock(nn.Module):
    """x + attention(norm(x)), then x + ffn(norm(x)).

    Normalising *before* each sub-layer (pre-LN, as GPT-2 does, unlike the
    original Transformer) leaves the residual path an identity, which keeps
    gradients well scaled in deep stacks. Sub-modules default to GPT-2's; pass
    your own to swap any of them.
    """

    def __init__(
        self,
        emb_dim: int,
        num_heads: int,
        context_length: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        *,
        attention: nn.Module | None = None,
        feed_forward: nn.Module | None = None,
        norm1: nn.Module | None = None,
        norm2: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm1 if norm1 is not None else LayerNorm(emb_dim)
        self.att = attention if attention is not None else MultiHeadAttention(emb_dim, emb_dim, context_length, dropout, num_heads, qkv_bias)
        self.norm2 = norm2 if norm2 is not None else LayerNorm(emb_dim)
        self.ff = feed_forward if feed_forward is not None else FeedForward(emb_dim)
        self.drop_shortcut = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        position: PositionEncoding | None = None,
        start_pos: int | torch.Tensor = 0,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), position, start_pos, kv_cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


# --- registration: `model.block = "pre_ln"` ----------------------------------------


def build_pre_ln(cfg: ModelShape, attention: nn.Module, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module) -> TransformerBlock:
    return TransformerBlock(
        cfg.emb_dim, cfg.n_heads, cfg.context_length, cfg.drop_rate,
        attention=attention, feed_forward=ffn, norm1=norm1, norm2=norm2,
    )


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("block", "pre_ln", build_pre_ln, description="Pre-LN residual block (GPT-2)")
