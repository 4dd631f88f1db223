"""gptkit's own GPT-2 components, registered as a plugin like any other.

Each factory adapts a config to a block's plain constructor; the blocks in
`gptkit.layers` know nothing of configs or the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field
from torch import nn

from gptkit.hookspecs import hookimpl
from gptkit.layers import (
    GELU,
    FeedForward,
    LayerNorm,
    LearnedPositionEmbedding,
    MultiHeadAttention,
    PositionEncoding,
    TransformerBlock,
)
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.config import ModelConfig
    from gptkit.registry import Registry


class LayerNormParams(ComponentParams):
    eps: float = Field(1e-5, gt=0)
    bias: bool = True


class GELUParams(ComponentParams):
    approximate: Literal["tanh", "none"] = "tanh"


class AttentionParams(ComponentParams):
    use_sdpa: bool = Field(True, description="False: the explicit masked_fill path (slower, same result).")


class MLPParams(ComponentParams):
    hidden_dim: int | None = Field(None, gt=0, description="Default: 4 * emb_dim.")
    bias: bool = True


def build_mha(cfg: ModelConfig, use_sdpa: bool) -> MultiHeadAttention:
    return MultiHeadAttention(
        cfg.emb_dim, cfg.emb_dim, cfg.context_length, cfg.n_heads, cfg.drop_rate, cfg.qkv_bias, use_sdpa=use_sdpa
    )


def build_mlp(cfg: ModelConfig, activation: nn.Module, hidden_dim: int | None, bias: bool) -> FeedForward:
    return FeedForward(cfg.emb_dim, hidden_dim, activation, bias)


def build_pre_ln(cfg: ModelConfig, attention: nn.Module, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module) -> TransformerBlock:
    return TransformerBlock(
        cfg.emb_dim, cfg.n_heads, cfg.context_length, cfg.drop_rate,
        attention=attention, feed_forward=ffn, norm1=norm1, norm2=norm2,
    )


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("norm", "layernorm", LayerNorm, params=LayerNormParams, description="LayerNorm (GPT-2)")
    registry.register("activation", "gelu", GELU, params=GELUParams, description="GELU, tanh approximation by default (GPT-2)")
    registry.register("attention", "mha", build_mha, params=AttentionParams, description="Causal multi-head attention via SDPA (GPT-2)")
    registry.register("ffn", "mlp", build_mlp, params=MLPParams, description="Linear -> activation -> Linear, 4x wide (GPT-2)")
    registry.register(
        "position", "learned", lambda cfg: LearnedPositionEmbedding(cfg.context_length, cfg.emb_dim),
        description="Learned absolute position table added to token embeddings (GPT-2)",
    )
    registry.register("position", "none", lambda cfg: PositionEncoding(), description="No position encoding (NoPE): causal mask only")
    registry.register("block", "pre_ln", build_pre_ln, description="Pre-LN residual block (GPT-2)")
