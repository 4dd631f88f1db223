"""The architecture parts in plugins/: grouped-query and multi-query attention, QK-norm, a sliding
window, ReLU² and a zero-initialised untied head.

Each is checked against a computation written here from its definition (queries, keys and
values sliced out of the projection by hand, keys and values repeated per group, a mask
built entry by entry, the RMSNorm formula), generation with the KV cache against
recomputing the context, and the Hugging Face export against transformers' GPT-2.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_weights
from pydantic import ValidationError
from test_cli_generate import (  # helpers, not tests: nothing here is collected twice
    run_main,
    write_run,
)
from test_generation import recompute_greedy

from gptkit import (
    GptkitError,
    GPTModel,
    ModelConfig,
    default_registry,
    describe_validation_error,
)
from gptkit.generation.generate import generate
from gptkit.generation.samplers import Greedy
from gptkit.interop.hf_checkpoint import export_hf
from gptkit.interop.hf_convert import hf_config_dict, to_hf_state_dict
from gptkit.kernels import accelerate
from gptkit.kernels.decode_step import StockDecoder

DOUBLE = torch.float64
SHAPE = {"vocab_size": 97, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "context_length": 16, "weight_tying": False}


def attention(spec: str | dict[str, Any], **shape: Any) -> torch.nn.Module:
    """One attention module as a model of `SHAPE` would build it, in float64 with random weights."""
    cfg = ModelConfig(**{**SHAPE, **shape, "attention": spec})
    module = default_registry().create("attention", cfg.attention, cfg).to(DOUBLE)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=DOUBLE) * 0.3 + (1.0 if "norm" in name else 0.0))
    return module.eval()


def reference_attention(
    module: torch.nn.Module, x: torch.Tensor, n_kv_heads: int, allowed: torch.Tensor, qk_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v written out: each query head h reads key/value head h // (heads / n_kv_heads).

    `allowed[i, j]` says whether query i may see key j; `qk_scale` (q's, k's) is the QK-norm weight.
    """
    heads, d = 4, 8
    w, b = module.qkv.weight, module.qkv.bias
    q = (x @ w[: heads * d].T + b[: heads * d]).unflatten(-1, (heads, d))
    k = (x @ w[heads * d : (heads + n_kv_heads) * d].T + b[heads * d : (heads + n_kv_heads) * d]).unflatten(-1, (n_kv_heads, d))
    v = (x @ w[(heads + n_kv_heads) * d :].T + b[(heads + n_kv_heads) * d :]).unflatten(-1, (n_kv_heads, d))
    if qk_scale is not None:
        q = q / torch.sqrt((q**2).mean(-1, keepdim=True) + 1e-6) * qk_scale[0]
        k = k / torch.sqrt((k**2).mean(-1, keepdim=True) + 1e-6) * qk_scale[1]
    group = heads // n_kv_heads
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    context = torch.einsum("bhij,bjhd->bihd", weights, v).flatten(-2)
    return context @ module.out_proj.weight.T + module.out_proj.bias


def mask_by_rule(q_len: int, k_len: int, window: int | None) -> torch.Tensor:
    """Entry by entry: query i stands at position k_len - q_len + i and sees key j at or before it, within the window."""
    mask = torch.zeros(q_len, k_len, dtype=torch.bool)
    for i in range(q_len):
        p = k_len - q_len + i
        for j in range(k_len):
            mask[i, j] = j <= p and (window is None or p - j < window)
    return mask


# --- attention against the hand computation -----------------------------------------------


def test_gqa_with_every_head_its_own_equals_mha_weight_for_weight() -> None:
    mha, gqa = attention("mha"), attention({"name": "gqa", "n_kv_heads": 4})
    gqa.load_state_dict(mha.state_dict())  # strict: the same names and shapes
    x = torch.randn(2, 10, 32, dtype=DOUBLE)
    torch.testing.assert_close(gqa(x), mha(x))
    # and in a whole model: mha's weights load into the gqa model and give its logits
    plain = randomize_weights(GPTModel(ModelConfig(**SHAPE)), 3)
    grouped = GPTModel(ModelConfig(**SHAPE, attention={"name": "gqa", "n_kv_heads": 4})).eval()
    grouped.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(grouped(ids), plain(ids))


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_grouped_and_multi_query_attention_match_sdpa_on_repeated_keys_and_values(n_kv_heads: int) -> None:
    module = attention({"name": "gqa", "n_kv_heads": n_kv_heads})
    assert module.qkv.weight.shape == ((4 + 2 * n_kv_heads) * 8, 32)  # the queries' width, and two narrower
    x = torch.randn(2, 9, 32, dtype=DOUBLE)
    w, b = module.qkv.weight, module.qkv.bias
    q = (x @ w[:32].T + b[:32]).view(2, 9, 4, 8).transpose(1, 2)
    k, v = (x @ w[32:].T + b[32:]).view(2, 9, 2, n_kv_heads, 8).permute(2, 0, 3, 1, 4)
    group = 4 // n_kv_heads
    context = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), is_causal=True)
    expected = context.transpose(1, 2).flatten(-2) @ module.out_proj.weight.T + module.out_proj.bias
    torch.testing.assert_close(module(x), expected)
    torch.testing.assert_close(module(x), reference_attention(module, x, n_kv_heads, mask_by_rule(9, 9, None)))


def test_qk_norm_is_rmsnorm_on_each_heads_queries_and_keys() -> None:
    module = attention({"name": "qk_norm"})
    assert [n for n, _ in module.named_parameters() if "norm" in n] == ["q_norm.weight", "k_norm.weight"]
    assert module.q_norm.weight.shape == (8,)  # one scale per channel of a head, shared by the heads
    x = torch.randn(2, 7, 32, dtype=DOUBLE) * 3
    scale = (module.q_norm.weight, module.k_norm.weight)
    torch.testing.assert_close(module(x), reference_attention(module, x, 4, mask_by_rule(7, 7, None), scale))
    both = attention({"name": "gqa", "n_kv_heads": 2, "qk_norm": True, "window": 3})
    scale = (both.q_norm.weight, both.k_norm.weight)
    torch.testing.assert_close(both(x), reference_attention(both, x, 2, mask_by_rule(7, 7, 3), scale))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_sliding_window_matches_a_mask_built_entry_by_entry(window: int) -> None:
    module = attention({"name": "sliding_window", "window": window})
    x = torch.randn(2, 11, 32, dtype=DOUBLE)
    torch.testing.assert_close(module(x), reference_attention(module, x, 4, mask_by_rule(11, 11, window)))
    assert not torch.allclose(module(x), attention("mha")(x))


def test_sliding_window_mask_with_a_cache_is_shifted_like_the_causal_one() -> None:
    default_registry()  # loads plugins/gqa.py as gptkit_plugins.gqa
    from gptkit_plugins.gqa import sliding_window_mask

    for q_len, k_len, window in [(1, 9, 4), (3, 9, 4), (9, 9, 2), (2, 5, 7)]:
        assert torch.equal(sliding_window_mask(q_len, k_len, window), mask_by_rule(q_len, k_len, window)), (q_len, k_len, window)


def test_a_window_of_the_context_or_longer_masks_nothing() -> None:
    # By design, not a refusal: one config may keep its window while the context length changes.
    x = torch.randn(2, 16, 32, dtype=DOUBLE)
    mha = attention("mha")
    for window in (16, 17, 4096):
        module = attention({"name": "sliding_window", "window": window})
        module.load_state_dict(mha.state_dict())
        torch.testing.assert_close(module(x), mha(x))
    assert ModelConfig(**SHAPE, attention="sliding_window").attention.params["window"] == 256  # the default, > 16


# --- generation with the cache ------------------------------------------------------------


CACHE_VARIANTS: dict[str, dict[str, Any]] = {
    "mqa": {"attention": "gqa"},
    "gqa-2": {"attention": {"name": "gqa", "n_kv_heads": 2}},
    "qk_norm+rope": {"attention": "qk_norm", "position": "rope"},
    "window-4": {"attention": {"name": "sliding_window", "window": 4}},
    "window-1": {"attention": {"name": "sliding_window", "window": 1}},
    "gqa+qk_norm+window+rope+relu2": {
        "attention": {"name": "gqa", "n_kv_heads": 2, "qk_norm": True, "window": 5}, "position": "rope", "activation": "relu2",
    },
    "relu2": {"activation": "relu2"},
}


@pytest.mark.parametrize("components", CACHE_VARIANTS.values(), ids=CACHE_VARIANTS.keys())
def test_cached_greedy_equals_recomputing_the_context(components: dict[str, Any]) -> None:
    model = randomize_weights(GPTModel(ModelConfig(**SHAPE, **components)), 5)
    prompts = torch.tensor([[5, 17, 3, 42, 8, 61], [9, 9, 30, 2, 77, 1]])
    # 30 new tokens after 6: several windows past the sliding window, and the context of 16 slides too.
    out = generate(model, prompts, 30, [Greedy()])
    for row in range(2):
        assert out[row, 6:].tolist() == recompute_greedy(model, prompts[row].tolist(), 30)
    assert len(set(out[0, 6:].tolist())) > 3, "a near-constant output would not test the cache"
    accelerate(model)  # the CPU kernels leave these parts alone, and the flat decode step refuses them
    assert torch.equal(generate(model, prompts, 30, [Greedy()]), out)


def test_the_cache_holds_the_key_value_heads_only() -> None:
    for spec, heads in [("gqa", 1), ({"name": "gqa", "n_kv_heads": 2}, 2), ("qk_norm", 4), ("sliding_window", 4), ("mha", 4)]:
        cache = GPTModel(ModelConfig(**SHAPE, attention=spec)).make_kv_cache(3)
        assert cache.layers[0].keys.shape == (3, heads, 16, 8), spec


@pytest.mark.parametrize(
    "components",
    [{"attention": "gqa"}, {"attention": "qk_norm"}, {"attention": {"name": "sliding_window", "window": 4}}, {"activation": "relu2"}],
    ids=["gqa", "qk_norm", "sliding_window", "relu2"],
)
def test_the_flat_decode_step_refuses_these_parts(components: dict[str, Any]) -> None:
    stock = GPTModel(ModelConfig(**SHAPE)).eval()
    accelerate(stock)
    assert StockDecoder.for_model(stock) is not None  # the same shape with GPT-2's parts gets one
    model = GPTModel(ModelConfig(**SHAPE, **components)).eval()
    accelerate(model)
    assert StockDecoder.for_model(model) is None


# --- ReLU² and the zero-initialised head ----------------------------------------------------


def test_relu2_is_relu_squared() -> None:
    x = torch.linspace(-4, 4, 33, dtype=DOUBLE)
    expected = torch.tensor([max(0.0, v) ** 2 for v in x.tolist()], dtype=DOUBLE)
    torch.testing.assert_close(default_registry().create("activation", "relu2")(x), expected)


def test_a_zero_initialised_head_starts_every_token_equally_likely() -> None:
    cfg = ModelConfig(**SHAPE, head={"name": "lm", "zero_init": True})
    model = GPTModel(cfg)
    assert torch.count_nonzero(model.out_head.weight) == 0
    assert model.out_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)  # the rest is GPT-2's initialisation
    ids = torch.randint(0, 97, (2, 16))
    _, loss = model(ids[:, :-1], ids[:, 1:])
    assert loss.item() == pytest.approx(math.log(97), abs=1e-6)
    loss.backward()
    assert torch.count_nonzero(model.out_head.weight.grad) > 0  # it learns from the first step
    assert torch.count_nonzero(GPTModel(ModelConfig(**SHAPE)).out_head.weight) > 0  # off by default


def test_a_zero_initialised_head_exports_as_an_untied_gpt2_head() -> None:
    # Only the first weights differ; a trained zero_init head is an ordinary untied GPT-2 head.
    transformers = pytest.importorskip("transformers")
    model = randomize_weights(GPTModel(ModelConfig(**SHAPE, head={"name": "lm", "zero_init": True})), 4)
    hf_cfg = {k: v for k, v in hf_config_dict(model.cfg).items() if k != "gptkit"}
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg)).eval()
    hf.load_state_dict(to_hf_state_dict(model), strict=False)
    ids = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max().item() < 1e-4


# --- refusals --------------------------------------------------------------------------------


def problems(**model: Any) -> str:
    with pytest.raises(ValidationError) as err:
        ModelConfig(**{**SHAPE, **model})
    return describe_validation_error(err.value, "model")


def test_n_heads_not_divisible_by_n_kv_heads_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert problems(attention={"name": "gqa", "n_kv_heads": 3}) == "model: n_heads (4) must be divisible by attention n_kv_heads (3)"
    assert problems(attention={"name": "sliding_window", "n_kv_heads": 8}) == "model: n_heads (4) must be divisible by attention n_kv_heads (8)"
    assert problems(attention={"name": "sliding_window", "window": 0}) == "model.attention.window: Input should be greater than 0"
    code, out, err = run_main(monkeypatch, ["config", "--set", "model.n_heads=4", "--set", 'model.attention={"name": "gqa", "n_kv_heads": 3}'])
    assert (code, out, err) == (2, "", "error: invalid config:\nmodel: n_heads (4) must be divisible by attention n_kv_heads (3)\n")


def test_a_zero_initialised_tied_head_is_refused() -> None:
    assert problems(weight_tying=True, head={"name": "lm", "zero_init": True}) == (
        "model: head 'lm' zero_init needs weight_tying=false: a tied head is the token embedding, which cannot start at zero"
    )


@pytest.mark.parametrize(
    ("components", "named"),
    [
        ({"attention": {"name": "gqa", "n_kv_heads": 4}}, "attention 'gqa' has no GPT-2 equivalent (GPT-2 uses 'mha')"),
        ({"attention": "qk_norm"}, "attention 'qk_norm' has no GPT-2 equivalent (GPT-2 uses 'mha')"),
        ({"attention": "sliding_window"}, "attention 'sliding_window' has no GPT-2 equivalent (GPT-2 uses 'mha')"),
        ({"activation": "relu2"}, "activation 'relu2' has no GPT-2 equivalent (GPT-2 uses 'gelu')"),
    ],
)
def test_export_to_hugging_face_refuses_naming_the_part(tmp_path, components: dict[str, Any], named: str) -> None:
    with pytest.raises(GptkitError) as err:
        export_hf(GPTModel(ModelConfig(**SHAPE, **components)), tmp_path / "out")
    assert str(err.value) == f"cannot export to Hugging Face GPT-2: {named}"
    assert not any(tmp_path.iterdir())


def test_the_export_command_refuses_a_gqa_run_with_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    section = {"vocab_size": 50257, "emb_dim": 32, "n_heads": 2, "n_layers": 1, "context_length": 32, "attention": {"name": "gqa", "n_kv_heads": 1}}
    run = write_run(tmp_path / "gqa", GPTModel(ModelConfig(**section)), section)
    code, out, err = run_main(monkeypatch, ["export", "--run", str(run), "--out", str(tmp_path / "hf")])
    assert (code, out) == (2, "")
    assert err == (
        f"error: {run} (step_000002): cannot export to Hugging Face GPT-2: attention 'gqa' has no GPT-2 equivalent (GPT-2 uses 'mha')\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gqa"]
