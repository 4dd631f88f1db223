"""Perplexity of a model on a text: a sliding window over the whole token stream.

A window holds up to `context` tokens and moves by `stride`; each window scores only
the tokens no earlier window scored, so every token after the first is scored once,
with as much preceding text as the window leaves it (at least context - stride
tokens once the first window is past; with a stride of the whole context, the first
token of each window has nothing before it and goes unscored). This is the computation of Hugging Face's
perplexity guide, with one difference: the guide weights each window's mean loss by
its scored tokens minus one, while here every token's negative log-likelihood is
summed exactly, so the mean is the plain mean over the scored tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptkit.errors import GptkitError
from gptkit.evaluation.last_positions import logits_of_last
from gptkit.model.gpt import IGNORE_INDEX, GPTModel


@dataclass(frozen=True)
class PerplexityResult:
    loss: float  # mean negative log-likelihood per scored token, in nats
    tokens: int  # how many tokens were scored
    windows: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window: tokens [begin, end) go in, those from first_scored on are scored.

    As in the guide, a window is `context` tokens and predicts the tokens inside it
    (its last position's prediction, past the window, goes unused).
    """
    if not 0 < stride <= context:
        raise GptkitError(f"--stride must be between 1 and the context length {context}, got {stride}")
    out, scored_to = [], 1  # the first token has nothing before it to be predicted from
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        out.append((begin, end, scored_to))
        scored_to = end
        if end == n_tokens:
            break
    return out


@torch.inference_mode()
def sliding_window_loss(
    model: GPTModel, ids: torch.Tensor, stride: int | None = None, progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """The mean per-token loss of `model` on the 1-D token ids `ids` (see the module's docstring)."""
    context = model.cfg.context_length
    stride = stride or max(1, context // 2)
    if len(ids) < 2:
        raise GptkitError(f"the text has {len(ids)} token(s); perplexity needs at least 2")
    plan = windows(len(ids), context, stride)
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for i, (begin, end, first) in enumerate(plan):
        if end - begin < 2:
            continue  # one token and nothing before it in the window: nothing to score (stride = context)
        chunk = ids[begin:end].to(device)
        targets = chunk[1:].clone()
        targets[: max(first - begin - 1, 0)] = IGNORE_INDEX  # scored by an earlier window
        scored = int((targets != IGNORE_INDEX).sum())  # the window's last positions
        # The output head runs on the scored positions alone: half the window at the default stride.
        with logits_of_last(model, scored):
            logits = model(chunk[None, :-1])[0].float()
        total += F.cross_entropy(logits, targets[-scored:], reduction="sum").item()
        count += scored
        if progress is not None:
            progress(i + 1, len(plan))
    return PerplexityResult(total / count, count, len(plan))
