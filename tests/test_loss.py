"""The fused loss equals cross-entropy on full logits: value and gradients, ignored targets, autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptkit import GPTModel
from gptkit.kernels.fused_loss import (
    WEIGHT_GRAD_SLICE,
    chunk_rows_for,
    fused_next_token_loss,
    next_token_loss,
)


def reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Float64 cross-entropy through F.linear and F.cross_entropy, with its gradients."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    loss = F.cross_entropy(F.linear(h, w).flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    return loss, h.grad, w.grad


@pytest.mark.parametrize("vocab", [97, 50257])
def test_float32_value_and_gradients_match_float64_cross_entropy(vocab: int) -> None:
    torch.manual_seed(0)
    rows = chunk_rows_for(vocab) * 2 + 3  # several chunks, the last one short
    hidden = torch.randn(1, rows, 16, requires_grad=True)
    weight = (torch.randn(vocab, 16) * 0.5).requires_grad_()
    targets = torch.randint(0, vocab, (1, rows))
    targets[0, ::5] = -100
    loss = fused_next_token_loss(hidden, weight, targets)
    (loss * 3.0).backward()  # the incoming gradient scales both results
    ref_loss, ref_dh, ref_dw = reference(hidden, weight, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    torch.testing.assert_close(hidden.grad.double(), 3.0 * ref_dh, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(weight.grad.double(), 3.0 * ref_dw, rtol=1e-4, atol=1e-7)


def test_uniform_logits_give_log_vocab() -> None:
    """Zero weights: every token has probability 1/V, so the loss is ln V exactly."""
    loss = fused_next_token_loss(torch.randn(2, 5, 8), torch.zeros(1000, 8), torch.randint(0, 1000, (2, 5)))
    assert loss.item() == pytest.approx(math.log(1000), rel=1e-6)


def test_all_targets_ignored_gives_zero_not_nan() -> None:
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    loss = fused_next_token_loss(hidden, torch.randn(50, 8), torch.full((1, 4), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(hidden.grad) == 0


def test_no_grad_gives_the_same_value() -> None:
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(3, 7, 16), torch.randn(300, 16), torch.randint(0, 300, (3, 7))
    with torch.no_grad():
        value = fused_next_token_loss(hidden, weight, targets)
    assert value.item() == pytest.approx(next_token_loss(F.linear(hidden, weight), targets).item(), rel=1e-6)


@pytest.mark.parametrize("vocab", [500, 2 * WEIGHT_GRAD_SLICE + 300])  # one slice of the weight gradient; three, the last short
def test_bfloat16_autocast_matches_autocast_linear_within_bf16_rounding(vocab: int) -> None:
    torch.manual_seed(2)
    hidden = torch.randn(2, 40, 32, requires_grad=True)
    weight = (torch.randn(vocab, 32) * 0.2).requires_grad_()
    targets = torch.randint(0, vocab, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = fused_next_token_loss(hidden, weight, targets)
    fused.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = next_token_loss(F.linear(hidden, weight), targets)
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=2e-3)
    assert hidden.grad is not None and weight.grad is not None
    torch.testing.assert_close(grads[0], hidden.grad, rtol=0.05, atol=2e-3)
    torch.testing.assert_close(grads[1], weight.grad, rtol=0.05, atol=2e-3)
    assert grads[0].dtype == torch.float32 and grads[1].dtype == torch.float32


def test_model_keep_logits_false_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(3)
    model = GPTModel.from_preset("cpu-small", n_layers=2, emb_dim=64, n_heads=2, context_length=32)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 32))
    targets = torch.randint(0, model.cfg.vocab_size, (2, 32))
    logits, loss = model(idx, targets)
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    none, fused = model(idx, targets, keep_logits=False)
    fused.backward()
    assert none is None and logits.shape == (2, 32, model.cfg.vocab_size)
    assert fused.item() == pytest.approx(loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-7, msg=name)


def test_ignored_positions_get_no_gradient_and_do_not_change_the_loss() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 12, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (2, 12))
    targets[0, :7] = -100  # a prompt
    targets[1, 9:] = -100  # padding
    loss = fused_next_token_loss(hidden, weight, targets)
    loss.backward()
    # The reference: float64 logits of every position, the ignored ones left out by cross_entropy.
    ref_hidden, ref_weight = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    expected = F.cross_entropy(F.linear(ref_hidden, ref_weight).flatten(0, 1), targets.flatten(), ignore_index=-100)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), ref_hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad.double(), ref_weight.grad, rtol=1e-5, atol=1e-6)
    assert hidden.grad is not None and not hidden.grad[targets == -100].any()
