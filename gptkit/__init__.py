"""gptkit: GPT-2 from readable, swappable parts.

Import a block on its own (`from gptkit import MultiHeadAttention`), or build a
whole model from a config (`GPTModel(model_preset("gpt2"))`).
"""

from gptkit.config import ComponentSpec, ModelConfig, PRESETS, config_json_schema, describe_validation_error, model_preset
from gptkit.decode_step import StockDecoder
from gptkit.distributed import ProcessInfo, init_distributed, shutdown_distributed
from gptkit.errors import CheckpointError, ConfigError, DataError, GptkitError, PluginError, RegistryError
from gptkit.hookspecs import hookimpl, hookspec
from gptkit.huge_pages import move_to_huge_pages
from gptkit.layers import (
    GELU,
    FeedForward,
    KVCache,
    LayerKVCache,
    LayerNorm,
    LearnedPositionEmbedding,
    Linear,
    MultiHeadAttention,
    PositionEncoding,
    TransformerBlock,
    bf16_causal_attention,
    causal_mask,
)
from gptkit.model import GPTModel
from gptkit.plugins import build_registry, default_registry, reset_default_registry
from gptkit.registry import Component, ComponentParams, NoParams, Registry

__version__ = "0.1.0"

__all__ = [
    "GELU",
    "PRESETS",
    "CheckpointError",
    "Component",
    "ComponentParams",
    "ComponentSpec",
    "ConfigError",
    "DataError",
    "FeedForward",
    "GPTModel",
    "GptkitError",
    "KVCache",
    "LayerKVCache",
    "LayerNorm",
    "LearnedPositionEmbedding",
    "Linear",
    "ModelConfig",
    "MultiHeadAttention",
    "NoParams",
    "PluginError",
    "PositionEncoding",
    "ProcessInfo",
    "Registry",
    "RegistryError",
    "StockDecoder",
    "TransformerBlock",
    "bf16_causal_attention",
    "build_registry",
    "causal_mask",
    "config_json_schema",
    "default_registry",
    "describe_validation_error",
    "hookimpl",
    "hookspec",
    "init_distributed",
    "model_preset",
    "move_to_huge_pages",
    "reset_default_registry",
    "shutdown_distributed",
]
