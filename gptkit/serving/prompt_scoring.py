"""Each token's log-probability under the model, and the likeliest alternatives, from forward passes.

What the completion API's `logprobs` report: for every token of a text after the
first, the model's log-probability of it given the tokens before it, and the
`top` tokens it found likeliest there. The numbers are the model's own
distribution, `log_softmax` of its logits in float32: before any sampler
(temperature, top-k, a repetition penalty) reshapes it, as OpenAI and vLLM report
them, so they say what the model thinks whatever the request sampled with.

A generated completion is scored afterwards, by passes over prompt and completion
together, rather than step by step during decoding: one exact computation, the
same for an echoed prompt and for generated tokens. Generation sees at most the
context window before each token (`gptkit.generation.generate` drops the oldest
tokens beyond it), and so does the scoring: one pass over the first window scores
every token up to it, and each token after it is scored by a pass over the window
that ends just before it, as decoding saw it.

No HTTP here, and no lock: the caller holds the model (`gptkit.serving.engine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gptkit.model.gpt import GPTModel


@dataclass(frozen=True)
class TokenScore:
    """One token's log-probability given those before it, and the `top` likeliest tokens there (id, log-probability)."""

    logprob: float
    top: list[tuple[int, float]]


def _next_token_logits(model: GPTModel, ids: torch.Tensor, first: int) -> torch.Tensor:
    """Logits predicting ids[first:], one row per token, each from at most a window of tokens before it."""
    window = model.cfg.context_length
    rows = []
    if first <= window:
        # Row p of a pass over ids[:window] predicts token p + 1: every token up to index `window`.
        rows.append(model(ids[None, :window])[0, first - 1 : len(ids) - 1])  # type: ignore[index]
    # Past the window each token is predicted from the `window` tokens just before it.
    rows += [model(ids[None, t - window : t], last_only=True)[0, -1:] for t in range(max(first, window + 1), len(ids))]  # type: ignore[index]
    return torch.cat(rows)


@torch.inference_mode()
def score_tokens(model: GPTModel, ids: Sequence[int], top: int, first: int = 1) -> list[TokenScore]:
    """The score of each of ids[first:] (`first` at least 1: the first token has nothing before it)."""
    if first < 1:
        raise ValueError(f"the first token has no log-probability: score from index 1 on, got {first}")
    if first >= len(ids):
        return []
    device = next(model.parameters()).device
    tokens = torch.tensor(list(ids), dtype=torch.long, device=device)
    logprobs = torch.log_softmax(_next_token_logits(model, tokens, first).float(), dim=-1)
    chosen = logprobs.gather(-1, tokens[first:, None])[:, 0].tolist()
    best = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
    return [
        TokenScore(lp, list(zip(top_ids, top_lps)))
        for lp, top_ids, top_lps in zip(chosen, best.indices.tolist(), best.values.tolist())
    ]
