"""Activation checkpointing: `run.activation_checkpointing`, memory traded for compute.

A training forward keeps every block's intermediate tensors (normed inputs, q/k/v,
attention weights, the 4x-wide feed-forward activations) for the backward pass; for
GPT-2 those are most of a step's memory beyond the weights and optimizer state.
A checkpointed block keeps only its input: the backward pass runs its forward once
more to get the rest back (`torch.utils.checkpoint`, non-reentrant), about a third
more compute for that block.

`run.activation_checkpointing = k` checkpoints every k-th block (blocks 0, k, 2k, ...;
1 is every block, 0 none). Each chosen block's class is swapped for a subclass whose
`forward` runs through the checkpoint, as `gptkit.kernels.accelerate` swaps classes:
parameters, their names, state-dict keys and checkpoints stay exactly as they were,
and FSDP's and DDP's hooks, which wrap the call of the block, see a block as before.
The recomputation replays the random state the first forward drew its dropout masks
from (torch's `preserve_rng_state`), so gradients are the same bit for bit. In
evaluation mode or without gradients (validation, generation) a block runs its plain forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gptkit.errors import ConfigError


class CheckpointedForward(nn.Module):
    """Mixed in before a block's own class: its forward, recomputed in the backward pass."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(*args, **kwargs)
        # Non-reentrant: the reentrant variant loses the parameters' gradients when no
        # input needs one (a frozen embedding before block 0).
        return checkpoint(super().forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


_checkpointed_classes: dict[type[nn.Module], type[nn.Module]] = {}


def checkpointed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """The checkpointed subclass of `cls`, made once per class (a plugin's block gets one too)."""
    if issubclass(cls, CheckpointedForward):
        return cls
    if cls not in _checkpointed_classes:
        _checkpointed_classes[cls] = type(f"Checkpointed{cls.__name__}", (CheckpointedForward, cls), {"__module__": cls.__module__})
    return _checkpointed_classes[cls]


def checkpointed_indices(n_blocks: int, every: int) -> list[int]:
    """The blocks that `every` selects: none for 0, else 0, every, 2 * every, ..."""
    if every < 0 or every > n_blocks:
        raise ConfigError(
            f"run.activation_checkpointing={every} does not fit the model's {n_blocks} blocks; "
            f"use 0 (off), 1 (every block) or k from 2 to {n_blocks} (every k-th block)"
        )
    return list(range(0, n_blocks, every)) if every else []


def apply_activation_checkpointing(model: nn.Module, every: int) -> list[int]:
    """Checkpoint every `every`-th block of `model.blocks` in place; returns the indices checkpointed."""
    blocks = getattr(model, "blocks", None)
    if not every:
        return []
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"run.activation_checkpointing needs a model with a list of blocks; {type(model).__name__} has none")
    indices = checkpointed_indices(len(blocks), every)
    for i in indices:
        blocks[i].__class__ = checkpointed_class(type(blocks[i]))
    return indices


def is_checkpointed(module: nn.Module) -> bool:
    return isinstance(module, CheckpointedForward)
