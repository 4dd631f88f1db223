"""The fused loss under a frozen head (LoRA's base): the hidden states' gradient as cross-entropy's, no weight gradient made."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptkit.kernels import fused_loss
from gptkit.kernels.fused_loss import chunk_rows_for, fused_next_token_loss


def refuse_weight_gradient(*args: object) -> torch.Tensor:
    raise AssertionError("the head's weight gradient was computed for a frozen head")


@pytest.mark.parametrize("autocast", [False, True])
def test_a_frozen_head_gets_no_weight_gradient_and_hidden_gets_cross_entropys(autocast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    vocab = 500
    rows = chunk_rows_for(vocab) + 5  # two chunks, the last one short
    hidden = torch.randn(1, rows, 16, requires_grad=True)
    weight = torch.randn(vocab, 16) * 0.5  # frozen: requires_grad is False
    targets = torch.randint(0, vocab, (1, rows))
    targets[0, ::4] = -100
    monkeypatch.setattr(fused_loss, "_head_weight_grad", refuse_weight_gradient)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = fused_next_token_loss(hidden, weight, targets)
    (loss * 2.0).backward()
    assert weight.grad is None
    h = hidden.detach().double().requires_grad_()
    F.cross_entropy(F.linear(h, weight.double()).flatten(0, 1), targets.flatten(), ignore_index=-100).backward()
    tolerance = {"rtol": 2e-2, "atol": 2e-4} if autocast else {"rtol": 1e-4, "atol": 1e-7}
    torch.testing.assert_close(hidden.grad.double(), 2.0 * h.grad, **tolerance)
