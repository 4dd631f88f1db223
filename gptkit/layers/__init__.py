"""GPT-2's building blocks, one per file, each usable with plain constructor arguments.

Read them in this order: layer_norm, gelu, causal_mask, attention, feed_forward,
embeddings, kv_cache, block. Each is plain PyTorch; the speed paths live in
`gptkit.kernels`.
"""

from gptkit.layers.attention import MultiHeadAttention
from gptkit.layers.block import TransformerBlock
from gptkit.layers.causal_mask import causal_mask
from gptkit.layers.embeddings import LearnedPositionEmbedding, PositionEncoding
from gptkit.layers.feed_forward import FeedForward
from gptkit.layers.gelu import GELU
from gptkit.layers.kv_cache import KVCache, LayerKVCache
from gptkit.layers.layer_norm import LayerNorm

__all__ = [
    "GELU",
    "FeedForward",
    "KVCache",
    "LayerKVCache",
    "LayerNorm",
    "LearnedPositionEmbedding",
    "MultiHeadAttention",
    "PositionEncoding",
    "TransformerBlock",
    "causal_mask",
]
