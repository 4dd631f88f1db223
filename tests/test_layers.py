"""GPT-2's building blocks, each built from plain constructor arguments (no config, no registry).

Every check compares against something written independently here: PyTorch's own
modules, the published formulas, or a reference attention spelt out with a
triangular mask.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from gptkit import (
    GELU,
    FeedForward,
    KVCache,
    LayerKVCache,
    LayerNorm,
    LearnedPositionEmbedding,
    MultiHeadAttention,
    PositionEncoding,
    TransformerBlock,
    causal_mask,
)

DOUBLE = torch.float64


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter non-trivial values (norm weights not 1, biases not 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


def grads(output: torch.Tensor, inputs: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    """Gradients of <output, g> for a fixed random g (a plain .sum() could hide sign errors)."""
    g = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=output.dtype)
    return list(torch.autograd.grad((output * g).sum(), inputs))


# --- LayerNorm -------------------------------------------------------------------


def layer_norm_formula(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased: divide by n
    y = (x - mean) / torch.sqrt(var + eps) * weight
    return y if bias is None else y + bias


def test_layernorm_starts_as_identity_scale_and_zero_shift() -> None:
    ln = LayerNorm(6)
    assert torch.equal(ln.weight.detach(), torch.ones(6))
    assert ln.bias is not None and torch.equal(ln.bias.detach(), torch.zeros(6))


def test_layernorm_matches_torch_layernorm_and_formula() -> None:
    ours = randomize_(LayerNorm(16).to(DOUBLE))
    ref = nn.LayerNorm(16, eps=1e-5).to(DOUBLE)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16, dtype=DOUBLE) * 3 + 1
    out = ours(x)
    torch.testing.assert_close(out, ref(x))
    torch.testing.assert_close(out, layer_norm_formula(x, ours.weight, ours.bias, 1e-5))


def test_layernorm_gradients_match_torch_layernorm() -> None:
    ours = randomize_(LayerNorm(16).to(DOUBLE))
    ref = nn.LayerNorm(16).to(DOUBLE)
    ref.load_state_dict(ours.state_dict())
    x = (torch.randn(4, 16, dtype=DOUBLE) * 2).requires_grad_()
    got = grads(ours(x), [x, ours.weight, ours.bias])
    want = grads(ref(x), [x, ref.weight, ref.bias])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    # and against autograd through the written-out formula
    formula = grads(layer_norm_formula(x, ours.weight, ours.bias, 1e-5), [x, ours.weight, ours.bias])
    for g, w in zip(got, formula):
        torch.testing.assert_close(g, w)


def test_layernorm_without_bias_has_no_bias_parameter_and_matches_formula() -> None:
    ln = randomize_(LayerNorm(8, bias=False).to(DOUBLE))
    assert ln.bias is None
    assert [name for name, _ in ln.named_parameters()] == ["weight"]
    x = torch.randn(2, 8, dtype=DOUBLE).requires_grad_()
    out = ln(x)
    torch.testing.assert_close(out, layer_norm_formula(x, ln.weight, None, 1e-5))
    ref = nn.LayerNorm(8, bias=False).to(DOUBLE)
    ref.load_state_dict(ln.state_dict())
    for g, w in zip(grads(out, [x, ln.weight]), grads(ref(x), [x, ref.weight])):
        torch.testing.assert_close(g, w)


def test_layernorm_uses_its_eps() -> None:
    x = torch.randn(4, 8, dtype=DOUBLE) * 0.1  # variance comparable to eps
    ln = LayerNorm(8, eps=0.5).to(DOUBLE)
    torch.testing.assert_close(ln(x), layer_norm_formula(x, ln.weight, ln.bias, 0.5))
    assert not torch.allclose(ln(x), layer_norm_formula(x, ln.weight, ln.bias, 1e-5))


# --- GELU ------------------------------------------------------------------------


def gelu_tanh_formula(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf_formula(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def test_gelu_defaults_to_gpt2_tanh_approximation() -> None:
    x = torch.linspace(-6, 6, 241, dtype=DOUBLE)
    torch.testing.assert_close(GELU()(x), gelu_tanh_formula(x))
    torch.testing.assert_close(GELU("tanh")(x), gelu_tanh_formula(x))


def test_gelu_none_is_exact_erf_form_and_differs_from_tanh() -> None:
    x = torch.linspace(-6, 6, 241, dtype=DOUBLE)
    exact = GELU("none")(x)
    torch.testing.assert_close(exact, gelu_erf_formula(x))
    assert (exact - GELU("tanh")(x)).abs().max() > 1e-5  # the two really are different functions


def test_gelu_gradients_match_formulas() -> None:
    x = torch.linspace(-5, 5, 101, dtype=DOUBLE).requires_grad_()
    (g_tanh,) = grads(GELU("tanh")(x), [x])
    (w_tanh,) = grads(gelu_tanh_formula(x), [x])
    torch.testing.assert_close(g_tanh, w_tanh)
    # exact GELU: d/dx x*Phi(x) = Phi(x) + x*phi(x), written in closed form
    (g_exact,) = torch.autograd.grad(GELU("none")(x).sum(), [x])
    xd = x.detach()
    phi = torch.exp(-0.5 * xd**2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(xd / math.sqrt(2)))
    torch.testing.assert_close(g_exact, cdf + xd * phi)


# --- causal mask -----------------------------------------------------------------


def test_causal_mask_square_is_lower_triangle() -> None:
    expected = torch.tensor(
        [
            [1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(causal_mask(4, 4), expected)


@pytest.mark.parametrize(("q_len", "k_len"), [(1, 5), (2, 5), (3, 7), (6, 6)])
def test_causal_mask_aligns_queries_with_the_last_keys(q_len: int, k_len: int) -> None:
    mask = causal_mask(q_len, k_len)
    assert mask.shape == (q_len, k_len) and mask.dtype == torch.bool
    for i in range(q_len):
        position = k_len - q_len + i  # queries are the last q_len positions
        for j in range(k_len):
            assert bool(mask[i, j]) == (j <= position), (i, j)


# --- multi-head attention ----------------------------------------------------------


def reference_attention(x: torch.Tensor, mha: MultiHeadAttention) -> torch.Tensor:
    """Causal attention written out head by head: q, k, v are consecutive column blocks of qkv (GPT-2 c_attn)."""
    _, t, _ = x.shape
    d, hd = mha.d_out, mha.head_dim
    qkv = x @ mha.qkv.weight.T
    if mha.qkv.bias is not None:
        qkv = qkv + mha.qkv.bias
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    heads = []
    for h in range(mha.num_heads):
        cols = slice(h * hd, (h + 1) * hd)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(hd)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        heads.append(weights @ v[..., cols])
    out = torch.cat(heads, dim=-1) @ mha.out_proj.weight.T
    return out + mha.out_proj.bias if mha.out_proj.bias is not None else out


def make_mha(qkv_bias: bool = True, dropout: float = 0.0, d_in: int = 12, d_out: int = 16, heads: int = 4) -> MultiHeadAttention:
    torch.manual_seed(0)
    return randomize_(MultiHeadAttention(d_in, d_out, 10, dropout, heads, qkv_bias).to(DOUBLE))


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_attention_both_paths_match_reference(qkv_bias: bool) -> None:
    mha = make_mha(qkv_bias).eval()
    x = torch.randn(2, 7, 12, dtype=DOUBLE)
    want = reference_attention(x, mha)
    for use_sdpa in (True, False):
        mha.use_sdpa = use_sdpa
        got = mha(x)
        assert got.shape == (2, 7, 16)
        torch.testing.assert_close(got, want)


def test_attention_gradients_match_reference_on_both_paths() -> None:
    mha = make_mha().eval()
    x = torch.randn(2, 6, 12, dtype=DOUBLE).requires_grad_()
    params = list(mha.parameters())
    want = grads(reference_attention(x, mha), [x, *params])
    for use_sdpa in (True, False):
        mha.use_sdpa = use_sdpa
        got = grads(mha(x), [x, *params])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_attention_is_causal(use_sdpa: bool) -> None:
    mha = make_mha().eval()
    mha.use_sdpa = use_sdpa
    x = torch.randn(1, 8, 12, dtype=DOUBLE)
    changed = x.clone()
    changed[:, 5] = torch.randn(12, dtype=DOUBLE)
    a, b = mha(x), mha(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, 5:], b[:, 5:])  # the change itself is seen from position 5 on


def test_attention_qkv_bias_toggles_bias() -> None:
    assert MultiHeadAttention(8, 8, 4, 0.0, 2, qkv_bias=True).qkv.bias is not None
    assert MultiHeadAttention(8, 8, 4, 0.0, 2, qkv_bias=False).qkv.bias is None


def test_attention_marks_out_proj_as_residual_projection() -> None:
    mha = MultiHeadAttention(8, 8, 4, 0.0, 2)
    assert getattr(mha.out_proj, "is_residual_projection", False) is True
    assert not getattr(mha.qkv, "is_residual_projection", False)


def test_attention_refuses_heads_that_do_not_divide_width() -> None:
    with pytest.raises(ValueError, match=re.escape("d_out (10) must be divisible by num_heads (4)")):
        MultiHeadAttention(8, 10, 4, 0.0, 4)


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("chunks", [[1] * 7, [3, 2, 1, 1], [7]])
def test_attention_with_kv_cache_equals_full_sequence(use_sdpa: bool, chunks: list[int]) -> None:
    mha = make_mha().eval()
    mha.use_sdpa = use_sdpa
    x = torch.randn(2, 7, 12, dtype=DOUBLE)
    full = mha(x)
    cache = LayerKVCache(2, mha.num_heads, 10, mha.head_dim, dtype=DOUBLE, device="cpu")
    outs, start = [], 0
    for n in chunks:
        outs.append(mha(x[:, start : start + n], None, start, cache))
        start += n
    assert cache.length == 7
    torch.testing.assert_close(torch.cat(outs, dim=1), full)


def test_kv_cache_refuses_to_overflow_and_resets() -> None:
    cache = LayerKVCache(1, 2, 4, 3, dtype=torch.float32, device="cpu")
    k = torch.randn(1, 2, 3, 3)
    keys, values = cache.update(k, k * 2)
    assert torch.equal(keys, k) and torch.equal(values, k * 2) and cache.capacity == 4
    with pytest.raises(ValueError, match=re.escape("KV cache holds 4 positions; 5 requested")):
        cache.update(torch.randn(1, 2, 2, 3), torch.randn(1, 2, 2, 3))
    cache.reset()
    assert cache.length == 0
    whole = KVCache(3, 1, 2, 4, 3)
    assert len(whole.layers) == 3 and whole.length == 0


def test_attention_dropout_is_active_in_train_and_off_in_eval() -> None:
    for use_sdpa in (True, False):
        mha = make_mha(dropout=0.5)
        mha.use_sdpa = use_sdpa
        x = torch.randn(2, 6, 12, dtype=DOUBLE)
        mha.train()
        torch.manual_seed(1)
        first = mha(x)
        torch.manual_seed(2)
        second = mha(x)
        assert not torch.allclose(first, second)
        assert not torch.allclose(first, reference_attention(x, mha))
        mha.eval()
        torch.testing.assert_close(mha(x), reference_attention(x, mha))


# --- feed-forward ------------------------------------------------------------------


def test_feed_forward_defaults_to_4x_gelu_mlp() -> None:
    ff = randomize_(FeedForward(6).to(DOUBLE))
    assert ff.fc1.weight.shape == (24, 6) and ff.fc2.weight.shape == (6, 24)
    x = torch.randn(3, 6, dtype=DOUBLE)
    hidden = gelu_tanh_formula(x @ ff.fc1.weight.T + ff.fc1.bias)
    torch.testing.assert_close(ff(x), hidden @ ff.fc2.weight.T + ff.fc2.bias)
    assert getattr(ff.fc2, "is_residual_projection", False) is True


def test_feed_forward_custom_width_activation_and_no_bias() -> None:
    ff = randomize_(FeedForward(6, hidden_dim=10, activation=nn.ReLU(), bias=False).to(DOUBLE))
    assert ff.fc1.bias is None and ff.fc2.bias is None
    x = torch.randn(3, 6, dtype=DOUBLE)
    expected = torch.clamp(x @ ff.fc1.weight.T, min=0) @ ff.fc2.weight.T
    torch.testing.assert_close(ff(x), expected)


# --- transformer block ---------------------------------------------------------------


def test_block_defaults_to_gpt2_submodules() -> None:
    block = TransformerBlock(16, 4, 10, qkv_bias=True)
    assert isinstance(block.norm1, LayerNorm) and isinstance(block.norm2, LayerNorm)
    assert isinstance(block.att, MultiHeadAttention) and isinstance(block.ff, FeedForward)
    assert block.att.qkv.bias is not None
    assert block.ff.fc1.out_features == 64


def test_block_is_pre_ln_residual_composition_of_its_submodules() -> None:
    block = randomize_(TransformerBlock(16, 4, 10, qkv_bias=True).to(DOUBLE)).eval()
    x = torch.randn(2, 5, 16, dtype=DOUBLE)
    h = x + block.att(block.norm1(x))
    expected = h + block.ff(block.norm2(h))
    torch.testing.assert_close(block(x), expected)
    # and fully by hand, through the reference attention and formulas
    h_ref = x + reference_attention(layer_norm_formula(x, block.norm1.weight, block.norm1.bias, 1e-5), block.att)
    n2 = layer_norm_formula(h_ref, block.norm2.weight, block.norm2.bias, 1e-5)
    ff = block.ff
    mlp = gelu_tanh_formula(n2 @ ff.fc1.weight.T + ff.fc1.bias) @ ff.fc2.weight.T + ff.fc2.bias
    torch.testing.assert_close(block(x), h_ref + mlp)


def test_block_uses_submodules_passed_in() -> None:
    norm = nn.Identity()
    ffn = nn.Linear(8, 8)
    attention = MultiHeadAttention(8, 8, 6, 0.0, 2)
    block = TransformerBlock(8, 2, 6, attention=attention, feed_forward=ffn, norm1=norm, norm2=norm).eval()
    assert block.att is attention and block.ff is ffn and block.norm1 is norm
    x = torch.randn(1, 4, 8)
    h = x + attention(x)
    torch.testing.assert_close(block(x), h + ffn(h))


def test_block_dropout_is_active_in_train_and_off_in_eval() -> None:
    block = randomize_(TransformerBlock(16, 4, 10, dropout=0.5).to(DOUBLE))
    x = torch.randn(2, 5, 16, dtype=DOUBLE)
    block.train()
    assert not torch.allclose(block(x), block(x))
    block.eval()
    h = x + reference_attention(block.norm1(x), block.att)
    torch.testing.assert_close(block(x), h + block.ff(block.norm2(h)))
    torch.testing.assert_close(block(x), block(x), rtol=0, atol=0)


# --- position embeddings ---------------------------------------------------------------


def test_learned_position_embedding_returns_a_slice_of_its_table() -> None:
    pos = LearnedPositionEmbedding(8, 4)
    assert pos.weight.shape == (8, 4)
    got = pos.absolute(2, 3)
    expected = torch.stack([pos.weight[2], pos.weight[3], pos.weight[4]])
    assert torch.equal(got, expected)
    assert torch.equal(pos.absolute(0, 8), pos.weight)
    # only the rows used receive gradient
    got.sum().backward()
    assert pos.weight.grad is not None
    assert torch.equal(pos.weight.grad[2:5], torch.ones(3, 4))
    assert torch.equal(pos.weight.grad[:2], torch.zeros(2, 4)) and torch.equal(pos.weight.grad[5:], torch.zeros(3, 4))


def test_learned_position_embedding_refuses_positions_beyond_context() -> None:
    pos = LearnedPositionEmbedding(8, 4)
    with pytest.raises(ValueError, match=re.escape("positions 6..8 exceed the learned table of 8; crop the input to the context length")):
        pos.absolute(6, 3)


def test_learned_position_embedding_does_not_rotate() -> None:
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    q2, k2 = LearnedPositionEmbedding(8, 4).rotate(q, k, 0)
    assert q2 is q and k2 is k


def test_base_position_encoding_is_nope() -> None:
    pos = PositionEncoding()
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    assert pos.absolute(0, 3) is None
    assert pos.rotate(q, k, 5) == (q, k)
    assert list(pos.parameters()) == []


def test_attention_takes_the_books_positional_order() -> None:
    # LLMs-from-scratch ch03/ch04: MultiHeadAttention(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
    att = MultiHeadAttention(8, 12, 16, 0.25, 3, True)
    assert (att.qkv.in_features, att.d_out, att.context_length) == (8, 12, 16)
    assert (att.dropout, att.num_heads, att.head_dim) == (0.25, 3, 4)
    assert att.qkv.bias is not None
