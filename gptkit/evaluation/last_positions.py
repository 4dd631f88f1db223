"""Logits for a sequence's last positions only: what scoring reads, at a fraction of the output head's cost.

Scoring a continuation or a window's new tokens reads the log-probabilities at its
last few positions. The output head is a (positions, vocab) matmul, a third of
GPT-2 124M's weights, and its logits are the largest tensor of a forward pass:
both cost in proportion to the positions it is given. `GPTModel` keeps the last
position alone for generation (`last_only`); this keeps the last `n`, by cutting
the final norm's output with a forward hook, so the model file stays as it is. The
norm works on each position alone (LayerNorm, RMSNorm), so the logits kept are
exactly those of the whole sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gptkit.model.gpt import GPTModel


@contextmanager
def logits_of_last(model: GPTModel, n: int) -> Iterator[None]:
    """Inside the block, `model(idx)` returns (batch, n, vocab): the logits of idx's last `n` positions."""
    handle = model.final_norm.register_forward_hook(lambda module, args, out: out[:, -n:])
    try:
        yield
    finally:
        handle.remove()
