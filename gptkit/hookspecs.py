"""Every hook a gptkit plugin can implement, in one place.

A plugin is a module (a file in `plugins/`, or a module named by an installed
distribution's `gptkit` entry point) that defines functions marked with
`gptkit.hookimpl` and named after the specs below. pluggy checks the names and
arguments when the plugin is registered, so a misspelt hook fails at load time
rather than being silently ignored.

Minimal plugin::

    from gptkit import ComponentParams, hookimpl

    class ScaledTanhParams(ComponentParams):
        scale: float = 1.0

    class ScaledTanh(torch.nn.Module): ...

    @hookimpl
    def gptkit_register_components(registry):
        registry.register("activation", "scaled_tanh",
                          lambda scale: ScaledTanh(scale), params=ScaledTanhParams,
                          description="tanh(x) * scale")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import torch
    from torch import nn

    from gptkit.data.instruction import Example, Message
    from gptkit.registry import Registry
    from gptkit.training.train_state import (
        CallbackContext,
        EvalMetrics,
        StepMetrics,
        TrainerView,
        TrainSummary,
    )

PROJECT = "gptkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- What each kind's factory receives and returns --------------------------------
# A factory is called with what the caller knows at build time (below) plus the
# component's own parameters, validated against its `params` model, as keyword
# arguments. Modules mark the linear layer that writes into the residual stream with
# ``is_residual_projection = True`` so GPT-2's scaled initialisation finds it, and one
# that should start at zero with ``starts_at_zero = True``. An attention with fewer
# key/value heads than query heads names their number in an ``n_kv_heads`` parameter:
# the KV cache holds that many.


class ModelShape(Protocol):
    """What a model part may read of the model's config (a `gptkit.ModelConfig` has it all)."""

    vocab_size: int
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    drop_rate: float
    qkv_bias: bool

    @property
    def head_dim(self) -> int: ...


class PositionEncoding(Protocol):
    """What the position kind builds (`gptkit.layers.embeddings.PositionEncoding` is the base class)."""

    def absolute(self, start_pos: int | torch.Tensor, seq_len: int) -> torch.Tensor | None:
        """(seq_len, emb_dim) vectors added to the token embeddings, or None."""

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start_pos: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys of shape (batch, heads, seq, head_dim), rotated by position."""


class LayerKVCache(Protocol):
    """One layer's key/value cache (`gptkit.layers.kv_cache.LayerKVCache`)."""

    length: int | torch.Tensor  # a tensor of each row's length for a ragged cache (rows decoded together)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys and values; return all of them so far."""

    def key_mask(self, window: int | None = None) -> torch.Tensor | None:
        """None when every row holds the same positions; else (rows, 1, 1, keys), True where a row's query
        may attend (`gptkit.layers.kv_cache.RaggedKVCache`). An attention plugin must apply it."""


class SelfAttention(Protocol):
    """What the attention and block kinds build: a module called like `MultiHeadAttention`."""

    def __call__(
        self, x: torch.Tensor, position: PositionEncoding | None = None, start_pos: int | torch.Tensor = 0,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor: ...


class NormFactory(Protocol):
    """``norm``: a module mapping (..., dim) to (..., dim)."""

    def __call__(self, dim: int, **params: Any) -> nn.Module: ...


class ActivationFactory(Protocol):
    """``activation``: an elementwise module."""

    def __call__(self, **params: Any) -> nn.Module: ...


class PositionFactory(Protocol):
    """``position``: a `PositionEncoding` (absolute vectors, a rotation of q and k, or neither)."""

    def __call__(self, cfg: ModelShape, **params: Any) -> PositionEncoding: ...


class AttentionFactory(Protocol):
    """``attention``: causal self-attention over (batch, seq, emb_dim)."""

    def __call__(self, cfg: ModelShape, **params: Any) -> SelfAttention: ...


class FFNFactory(Protocol):
    """``ffn``: a position-wise module over (batch, seq, emb_dim), given the built activation."""

    def __call__(self, cfg: ModelShape, activation: nn.Module, **params: Any) -> nn.Module: ...


class BlockFactory(Protocol):
    """``block``: one layer wiring the built parts, called like the attention."""

    def __call__(
        self, cfg: ModelShape, attention: nn.Module, ffn: nn.Module, norm1: nn.Module, norm2: nn.Module, **params: Any
    ) -> SelfAttention: ...


class HeadFactory(Protocol):
    """``head``: maps the final hidden states (batch, seq, emb_dim) to (batch, seq, outputs)."""

    def __call__(self, cfg: ModelShape, **params: Any) -> nn.Module: ...


Schedule = Callable[[int], float]  # optimizer step (0-based) -> learning rate


class SchedulerFactory(Protocol):
    """``scheduler``: the learning rate of each step, a pure function so resuming needs no state."""

    def __call__(self, *, max_lr: float, min_lr: float, total_steps: int | None, **params: Any) -> Schedule: ...


Sampler = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (logits (batch, vocab), tokens so far) -> logits


class SamplerFactory(Protocol):
    """``sampler``: one link of the chain that turns logits into the next token's distribution."""

    def __call__(self, **params: Any) -> Sampler: ...


class CallbackFactory(Protocol):
    """``callback``: an object whose `@hookimpl` methods are named after the training events below."""

    def __call__(self, context: CallbackContext, **params: Any) -> object: ...


class Tokenizer(Protocol):
    """What gptkit asks of a tokenizer (`gptkit.data.tokenizer.Tokenizer` is GPT-2's)."""

    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def decode_bytes(self, ids: list[int]) -> bytes: ...


class TokenizerFactory(Protocol):
    """``tokenizer``: built from its parameters alone; must work offline."""

    def __call__(self, **params: Any) -> Tokenizer: ...


class PromptStyle(Protocol):
    """How instruction examples are written as text (`gptkit.data.prompt_styles` has the built-ins)."""

    @property
    def stop(self) -> Sequence[str]:
        """Strings that end a generated reply: "<|endoftext|>", and a style's next-turn marker."""

    def segments(self, example: Example) -> list[tuple[str, bool]]:
        """The example's text in order; True marks response text (its closing "<|endoftext|>" too), which is trained on."""

    def prompt(self, messages: Sequence[Message]) -> str:
        """The conversation so far, ending where the assistant's reply begins, as `segments` would write it."""


class PromptStyleFactory(Protocol):
    """``prompt_style``: a `PromptStyle`, built from its parameters alone."""

    def __call__(self, **params: Any) -> PromptStyle: ...


FACTORY_CONTRACTS: dict[str, type] = {
    "norm": NormFactory,
    "activation": ActivationFactory,
    "position": PositionFactory,
    "attention": AttentionFactory,
    "ffn": FFNFactory,
    "block": BlockFactory,
    "head": HeadFactory,
    "scheduler": SchedulerFactory,
    "sampler": SamplerFactory,
    "callback": CallbackFactory,
    "tokenizer": TokenizerFactory,
    "prompt_style": PromptStyleFactory,
}


# --- Registering components -------------------------------------------------------


@hookspec
def gptkit_register_components(registry: Registry) -> None:
    """Add components to `registry` with `registry.register(kind, name, factory, ...)`.

    Called once per plugin, before the first name is looked up. Registering a
    name that is already taken raises unless `override=True` is passed. Each
    kind's factory follows its contract in `FACTORY_CONTRACTS` above.
    """


# --- Training events -------------------------------------------------------------
# Callbacks are objects (built from the "callback" registry kind) whose methods are
# marked with `@hookimpl` and named after these specs; the trainer registers them
# with its own pluggy manager and calls each event in turn. The loop itself knows
# nothing of terminals, files or pictures: all of that lives in callbacks.
#
# `trainer` is a `gptkit.training.train_state.TrainerView`: `.model`, `.state`,
# `.context`, `.request_stop(reason)` and `.save_checkpoint() -> Path`.


@hookspec
def gptkit_train_start(trainer: TrainerView) -> None:
    """Before the first step (also after a resume: `trainer.state.step` may be > 0)."""


@hookspec
def gptkit_step_end(trainer: TrainerView, metrics: StepMetrics) -> None:
    """After each optimizer step, with a `gptkit.training.train_state.StepMetrics`."""


@hookspec
def gptkit_eval_scores(trainer: TrainerView) -> dict[str, float]:
    """During each validation pass: figures of the callback's own (a benchmark's accuracy, a text's loss).

    Every callback's answers are merged into `EvalMetrics.scores`, which `gptkit_evaluate`
    then reports to the display, metrics.jsonl and the loss plot.
    """


@hookspec
def gptkit_evaluate(trainer: TrainerView, metrics: EvalMetrics) -> None:
    """After each validation pass, with a `gptkit.training.train_state.EvalMetrics`."""


@hookspec
def gptkit_checkpoint(trainer: TrainerView, path: Path) -> None:
    """After a checkpoint directory `path` was written completely."""


@hookspec
def gptkit_train_end(trainer: TrainerView, summary: TrainSummary) -> None:
    """Once, when training stops for any reason but an exception, with a `TrainSummary`."""


@hookspec
def gptkit_exception(trainer: TrainerView, error: BaseException) -> None:
    """When training is interrupted by an exception or Ctrl-C, before it propagates."""
