"""bfloat16 causal attention on CPU: as accurate as SDPA's kernel against float64, used where it should be."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import gptkit.kernels.bf16_attention as attention_module
from gptkit import accelerate
from gptkit.kernels.bf16_attention import bf16_causal_attention
from gptkit.layers import MultiHeadAttention

BF16 = torch.bfloat16


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention in float64, queries aligned to the last positions, written out by hand."""
    q, k, v = q.double(), k.double(), v.double()
    q_len, k_len = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    for i in range(q_len):
        scores[..., i, k_len - q_len + i + 1 :] = float("-inf")
    return torch.softmax(scores, dim=-1) @ v


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


def bf16_inputs(q_len: int = 64, k_len: int = 64, spread: float = 3.0) -> list[torch.Tensor]:
    # spread 3 gives scores with a standard deviation of about 9, where bfloat16 rounding of
    # the scores themselves shows up in the result (see the last assertion of the first test).
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 3, q_len, 32), (2, 3, k_len, 32), (2, 3, k_len, 32)]
    scales = [spread, spread, 1.0]
    return [(torch.randn(s, generator=g) * c).to(BF16).requires_grad_() for s, c in zip(shapes, scales)]


def errors(fn, inputs: list[torch.Tensor]) -> list[float]:  # type: ignore[no-untyped-def]
    """Relative errors of fn's output and of the q, k, v gradients, against float64."""
    exact = [t.detach().double().requires_grad_() for t in inputs]
    want = reference(*exact)
    grad_out = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).to(BF16)
    want.backward(grad_out.double())
    got = fn(*inputs)
    got.backward(grad_out)
    result = [relative_error(got, want.detach())]
    for t, e in zip(inputs, exact):
        result.append(relative_error(t.grad, e.grad))
        t.grad = None
    return result


def test_output_and_gradients_are_as_close_to_float64_as_sdpa() -> None:
    inputs = bf16_inputs()
    ours = errors(bf16_causal_attention, inputs)
    sdpa = errors(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), inputs)
    # bfloat16 keeps 8 bits: a relative error of a few 1e-3 is its rounding.
    assert max(ours) < 8e-3, ours
    assert all(o < 2 * s + 1e-3 for o, s in zip(ours, sdpa)), (ours, sdpa)

    # Control: the same products with the scores rounded to bfloat16 miss the bound.
    def rounded_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        hidden = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        return torch.softmax(scores.masked_fill(hidden, float("-inf")).float(), dim=-1).to(BF16) @ v

    assert errors(rounded_scores, inputs)[0] > 8e-3


def test_gradients_keep_the_small_differences_between_values() -> None:
    # Values share a large common part, as a layer's usually do: the probabilities' gradient
    # is that part's product plus small differences, and the gradient is the differences.
    g = torch.Generator().manual_seed(2)
    q, k = (torch.randn(2, 3, 64, 32, generator=g).to(BF16).requires_grad_() for _ in range(2))
    common = 4 * torch.randn(2, 3, 1, 32, generator=g)
    v = (common + 0.1 * torch.randn(2, 3, 64, 32, generator=g)).to(BF16).requires_grad_()
    ours = errors(bf16_causal_attention, [q, k, v])
    assert max(ours) < 8e-3, ours

    # Control: float32 scores and softmax, but the probabilities' gradient left in bfloat16
    # (autograd through probs.to(bf16) @ v) loses the differences.
    def bf16_probability_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5
        hidden = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        return torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1).to(BF16) @ v

    control = errors(bf16_probability_grad, [q, k, v])
    assert min(control[1:3]) > 3e-2, control  # the q and k gradients


def test_fewer_queries_than_keys_are_the_last_positions() -> None:
    q, k, v = bf16_inputs(q_len=5, k_len=12, spread=1.0)
    got = bf16_causal_attention(q, k, v)
    assert relative_error(got, reference(q, k, v)) < 8e-3
    # The last query sees every key; the first sees all but the last four.
    changed = v.detach().clone()
    changed[..., -4:, :] += 1
    again = bf16_causal_attention(q, k, changed)
    assert torch.equal(got[..., 0, :], again[..., 0, :])
    assert not torch.equal(got[..., 1, :], again[..., 1, :])


def test_autocast_does_not_round_the_float32_scores() -> None:
    q, k, v = (t.detach() for t in bf16_inputs())
    plain = bf16_causal_attention(q, k, v)
    with torch.autocast("cpu", dtype=BF16):
        under_autocast = bf16_causal_attention(q, k, v)
    assert torch.equal(plain, under_autocast)


def test_refuses_other_dtypes_and_more_queries_than_keys() -> None:
    x = torch.randn(1, 1, 4, 8)
    with pytest.raises(TypeError, match=re.escape("takes bfloat16 tensors, got torch.float32")):
        bf16_causal_attention(x, x, x)
    b = x.to(BF16)
    with pytest.raises(ValueError, match=re.escape("more queries (4) than keys (2)")):
        bf16_causal_attention(b, b[..., :2, :], b[..., :2, :])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Query lengths bf16_causal_attention was called with from an accelerated MultiHeadAttention."""
    seen: list[int] = []

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.append(q.shape[-2])
        return bf16_causal_attention(q, k, v)

    monkeypatch.setattr(attention_module, "bf16_causal_attention", spy)
    return seen


def test_attention_module_uses_it_for_bf16_on_cpu_without_dropout(calls: list[int]) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 32, 16, 0.0, 4)
    assert accelerate(mha)
    x = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=BF16):
        trained = mha(x)
        trained.float().sum().backward()  # inside the autocast block, as some training loops call it
    assert calls == [9]
    assert mha.qkv.weight.grad is not None
    torch.testing.assert_close(trained.float(), mha(x), atol=3e-2, rtol=3e-2)
    mha.eval()
    with torch.autocast("cpu", dtype=BF16):
        mha(x[:, :1])  # one query: SDPA needs no mask there
    mha.to(BF16)(x.to(BF16))  # bfloat16 weights, no autocast
    assert calls == [9, 9]


def test_attention_module_keeps_sdpa_for_dropout_and_float32(calls: list[int]) -> None:
    mha = MultiHeadAttention(32, 32, 16, 0.1, 4)
    assert accelerate(mha)
    x = torch.randn(2, 9, 32)
    with torch.autocast("cpu", dtype=BF16):
        mha(x)  # training with attention dropout
    mha(x)  # float32
    assert calls == []
    mha.eval()
    with torch.autocast("cpu", dtype=BF16):
        mha(x)  # dropout is off in eval
    assert calls == [9]


def test_plain_attention_never_uses_it(calls: list[int]) -> None:
    mha = MultiHeadAttention(32, 32, 16, 0.0, 4)
    with torch.autocast("cpu", dtype=BF16):
        mha(torch.randn(2, 9, 32))
    assert calls == []
