"""GPT-2's building blocks, one per file, each usable with plain constructor arguments."""

from gptkit.layers.attention import MultiHeadAttention
from gptkit.layers.bf16_attention import bf16_causal_attention
from gptkit.layers.causal_mask import causal_mask
from gptkit.layers.block import TransformerBlock
from gptkit.layers.embeddings import LearnedPositionEmbedding, PositionEncoding
from gptkit.layers.feed_forward import FeedForward
from gptkit.layers.gelu import GELU
from gptkit.layers.kv_cache import KVCache, LayerKVCache
from gptkit.layers.layer_norm import LayerNorm
from gptkit.layers.linear import Linear

__all__ = [
    "GELU",
    "FeedForward",
    "KVCache",
    "LayerKVCache",
    "LayerNorm",
    "LearnedPositionEmbedding",
    "Linear",
    "MultiHeadAttention",
    "PositionEncoding",
    "TransformerBlock",
    "bf16_causal_attention",
    "causal_mask",
]
