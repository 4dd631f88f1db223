"""gptkit: GPT-2 from readable, swappable parts.

Import a block on its own (`from gptkit import MultiHeadAttention`), or build a
whole model from a config (`GPTModel(model_preset("gpt2"))`). The folders:
`layers` (the blocks), `model` (GPTModel, its config and presets), `data`,
`training`, `generation`, `serving`, `interop` (Hugging Face) and `kernels`
(the CPU speed paths, switched on by `accelerate`); docs/architecture.md maps them.

Names are imported on first use, so `import gptkit` alone does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # layers: the building blocks
    "LayerNorm": "gptkit.layers.layer_norm",
    "GELU": "gptkit.layers.gelu",
    "causal_mask": "gptkit.layers.causal_mask",
    "MultiHeadAttention": "gptkit.layers.attention",
    "FeedForward": "gptkit.layers.feed_forward",
    "PositionEncoding": "gptkit.layers.embeddings",
    "LearnedPositionEmbedding": "gptkit.layers.embeddings",
    "KVCache": "gptkit.layers.kv_cache",
    "LayerKVCache": "gptkit.layers.kv_cache",
    "TransformerBlock": "gptkit.layers.block",
    "ClassificationHead": "gptkit.layers.heads",
    "LoRALinear": "gptkit.layers.lora",
    # the model
    "ModelConfig": "gptkit.model.config",
    "ComponentSpec": "gptkit.model.config",
    "PRESETS": "gptkit.model.config",
    "model_preset": "gptkit.model.config",
    "config_json_schema": "gptkit.model.config",
    "describe_validation_error": "gptkit.model.config",
    "GPTModel": "gptkit.model.gpt",
    # finetuning data and starting points
    "Example": "gptkit.data.instruction",
    "Message": "gptkit.data.instruction",
    "read_examples": "gptkit.data.instruction_files",
    "read_labelled": "gptkit.data.classification",
    "resolve_init_source": "gptkit.training.init_from",
    "load_initial_weights": "gptkit.training.init_from",
    "apply_trainable": "gptkit.training.freezing",
    "classify_texts": "gptkit.generation.classify",
    # the speed switch
    "accelerate": "gptkit.kernels",
    # registry and plugins
    "Registry": "gptkit.registry",
    "Component": "gptkit.registry",
    "ComponentParams": "gptkit.registry",
    "NoParams": "gptkit.registry",
    "hookimpl": "gptkit.hookspecs",
    "hookspec": "gptkit.hookspecs",
    "build_registry": "gptkit.plugins",
    "default_registry": "gptkit.plugins",
    "reset_default_registry": "gptkit.plugins",
    # errors
    "GptkitError": "gptkit.errors",
    "ConfigError": "gptkit.errors",
    "DataError": "gptkit.errors",
    "CheckpointError": "gptkit.errors",
    "PluginError": "gptkit.errors",
    "RegistryError": "gptkit.errors",
}

# Spelt out, so that tools reading the file see the public names (a test keeps it equal to _EXPORTS).
__all__ = [
    "GELU",
    "PRESETS",
    "CheckpointError",
    "ClassificationHead",
    "Component",
    "ComponentParams",
    "ComponentSpec",
    "ConfigError",
    "DataError",
    "Example",
    "FeedForward",
    "GPTModel",
    "GptkitError",
    "KVCache",
    "LayerKVCache",
    "LayerNorm",
    "LearnedPositionEmbedding",
    "LoRALinear",
    "Message",
    "ModelConfig",
    "MultiHeadAttention",
    "NoParams",
    "PluginError",
    "PositionEncoding",
    "Registry",
    "RegistryError",
    "TransformerBlock",
    "accelerate",
    "apply_trainable",
    "build_registry",
    "causal_mask",
    "classify_texts",
    "config_json_schema",
    "default_registry",
    "describe_validation_error",
    "hookimpl",
    "hookspec",
    "load_initial_weights",
    "model_preset",
    "read_examples",
    "read_labelled",
    "reset_default_registry",
    "resolve_init_source",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gptkit' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from gptkit.data.classification import read_labelled
    from gptkit.data.instruction import Example, Message
    from gptkit.data.instruction_files import read_examples
    from gptkit.errors import (
        CheckpointError,
        ConfigError,
        DataError,
        GptkitError,
        PluginError,
        RegistryError,
    )
    from gptkit.generation.classify import classify_texts
    from gptkit.hookspecs import hookimpl, hookspec
    from gptkit.kernels import accelerate
    from gptkit.layers.attention import MultiHeadAttention
    from gptkit.layers.block import TransformerBlock
    from gptkit.layers.causal_mask import causal_mask
    from gptkit.layers.embeddings import LearnedPositionEmbedding, PositionEncoding
    from gptkit.layers.feed_forward import FeedForward
    from gptkit.layers.gelu import GELU
    from gptkit.layers.heads import ClassificationHead
    from gptkit.layers.kv_cache import KVCache, LayerKVCache
    from gptkit.layers.layer_norm import LayerNorm
    from gptkit.layers.lora import LoRALinear
    from gptkit.model.config import (
        PRESETS,
        ComponentSpec,
        ModelConfig,
        config_json_schema,
        describe_validation_error,
        model_preset,
    )
    from gptkit.model.gpt import GPTModel
    from gptkit.plugins import build_registry, default_registry, reset_default_registry
    from gptkit.registry import Component, ComponentParams, NoParams, Registry
    from gptkit.training.freezing import apply_trainable
    from gptkit.training.init_from import load_initial_weights, resolve_init_source
