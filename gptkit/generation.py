"""Text generation with a key/value cache.

The prompt is run through the model once (prefill); after that each new token
is a single-position forward pass against the cached keys and values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from gptkit.model import GPTModel
from gptkit.sampling import Sampler, draw


@torch.inference_mode()
def generate_tokens(
    model: GPTModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    samplers: Sequence[Sampler],
    *,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids, shape (batch, 1), one step at a time.

    When the context window is full the oldest tokens are dropped and the cache
    is rebuilt from the remaining window, so generation can go on indefinitely.
    """
    was_training = model.training
    model.eval()
    try:
        window = model.cfg.context_length
        tokens = prompt[:, -window:]
        cache = model.make_kv_cache(prompt.shape[0], window)
        logits = model(tokens, kv_cache=cache)[:, -1]
        finished = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        for _ in range(max_new_tokens):
            nxt = draw(logits, samplers, generator)
            yield nxt
            if eos_id is not None:
                finished |= nxt.squeeze(-1) == eos_id
                if bool(finished.all()):
                    return
            tokens = torch.cat([tokens, nxt], dim=1)
            if tokens.shape[1] > window:
                tokens = tokens[:, -window:]
                cache.reset()
                logits = model(tokens, kv_cache=cache)[:, -1]
            else:
                logits = model(nxt, start_pos=tokens.shape[1] - 1, kv_cache=cache)[:, -1]
    finally:
        model.train(was_training)


def generate(
    model: GPTModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    samplers: Sequence[Sampler],
    *,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """Prompt followed by up to `max_new_tokens` generated ids."""
    new = list(generate_tokens(model, prompt, max_new_tokens, samplers, generator=generator, eos_id=eos_id))
    return torch.cat([prompt, *new], dim=1) if new else prompt
