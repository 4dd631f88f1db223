"""gptkit's own schedulers, samplers and tokenizer, registered as a plugin like any other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptkit import schedulers
from gptkit.callbacks.checkpoint import CheckpointCallback, CheckpointParams
from gptkit.hookspecs import hookimpl
from gptkit.sampling import (
    Greedy,
    MinP,
    MinPParams,
    RepetitionPenalty,
    RepetitionPenaltyParams,
    Temperature,
    TemperatureParams,
    TopK,
    TopKParams,
    TopP,
    TopPParams,
)
from gptkit.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gptkit.registry import Registry


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    # Scheduler factories are called as factory(max_lr=, min_lr=, total_steps=, **params).
    registry.register("scheduler", "cosine", schedulers.cosine, params=schedulers.WarmupParams, description="Linear warm-up, cosine decay to min_lr (GPT-2/3)")
    registry.register("scheduler", "linear", schedulers.linear, params=schedulers.WarmupParams, description="Linear warm-up, linear decay to min_lr")
    registry.register("scheduler", "constant", schedulers.constant, params=schedulers.WarmupParams, description="Linear warm-up, then constant lr")
    registry.register("scheduler", "wsd", schedulers.warmup_stable_decay, params=schedulers.WSDParams, description="Warm-up, stable plateau, linear decay at the end")
    # Sampler factories are called with their parameters only.
    registry.register("sampler", "greedy", Greedy, description="Always the most likely token")
    registry.register("sampler", "temperature", Temperature, params=TemperatureParams, description="Scale logits by 1/temperature")
    registry.register("sampler", "top_k", TopK, params=TopKParams, description="Keep the k most likely tokens")
    registry.register("sampler", "top_p", TopP, params=TopPParams, description="Nucleus: keep the most likely tokens up to probability mass p")
    registry.register("sampler", "min_p", MinP, params=MinPParams, description="Keep tokens at least p times as likely as the top one")
    registry.register(
        "sampler", "repetition_penalty", RepetitionPenalty, params=RepetitionPenaltyParams,
        description="CTRL penalty on tokens already seen: positive logits / penalty, negative * penalty",
    )
    # Callback factories are called as factory(context, **params).
    registry.register("callback", "checkpoint", CheckpointCallback, params=CheckpointParams, description="Save every N steps, at the end and on Ctrl-C; keep the last K")
    registry.register("tokenizer", "gpt2", Tokenizer, description="GPT-2 BPE (tiktoken, shipped ranks, offline)")
