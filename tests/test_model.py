"""GPTModel: GPT-2 initialisation, weight tying, parameter counts, forward/loss, KV cache, component selection."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptkit import GPTModel, LayerNorm, ModelConfig, model_preset

TINY = dict(vocab_size=256, context_length=32, emb_dim=64, n_layers=2, n_heads=4)


def tiny(**overrides: object) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


def build(seed: int = 0, **overrides: object) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(tiny(**overrides))


# --- GPT-2 initialisation, checked by statistics of fresh weights -------------------------


@pytest.fixture(scope="module")
def fresh() -> GPTModel:
    """Big enough for stable statistics; untied so the head's own init is visible."""
    torch.manual_seed(1234)
    cfg = ModelConfig(vocab_size=1024, context_length=128, emb_dim=256, n_layers=4, n_heads=4, weight_tying=False)
    return GPTModel(cfg)


def pooled(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


def assert_normal(values: torch.Tensor, std: float) -> None:
    assert abs(values.mean().item()) < 0.05 * std
    assert values.std().item() == pytest.approx(std, rel=0.03)
    # a normal puts 68.3% within one std (a uniform of the same std: 57.7%)
    assert (values.abs() < std).float().mean().item() == pytest.approx(0.6827, abs=0.01)


def test_init_linear_and_embedding_weights_have_std_002(fresh: GPTModel) -> None:
    assert_normal(pooled([b.att.qkv.weight for b in fresh.blocks]), 0.02)
    assert_normal(pooled([b.ff.fc1.weight for b in fresh.blocks]), 0.02)
    assert_normal(fresh.tok_emb.weight.detach().flatten(), 0.02)
    assert_normal(fresh.pos_emb.weight.detach().flatten(), 0.02)
    assert_normal(fresh.out_head.weight.detach().flatten(), 0.02)


def test_init_residual_projections_are_scaled_by_depth(fresh: GPTModel) -> None:
    expected = 0.02 / math.sqrt(2 * 4)
    assert_normal(pooled([b.att.out_proj.weight for b in fresh.blocks]), expected)
    assert_normal(pooled([b.ff.fc2.weight for b in fresh.blocks]), expected)


def test_init_biases_are_zero_and_norms_identity(fresh: GPTModel) -> None:
    for block in fresh.blocks:
        for linear in (block.att.qkv, block.att.out_proj, block.ff.fc1, block.ff.fc2):
            assert torch.count_nonzero(linear.bias) == 0
    norms = [m for m in fresh.modules() if isinstance(m, LayerNorm)]
    assert len(norms) == 2 * 4 + 1
    for norm in norms:
        assert torch.equal(norm.weight.detach(), torch.ones(256))
        assert torch.equal(norm.bias.detach(), torch.zeros(256))


def test_exactly_two_residual_projections_per_layer(fresh: GPTModel) -> None:
    flagged = [m for m in fresh.modules() if isinstance(m, nn.Linear) and getattr(m, "is_residual_projection", False)]
    assert len(flagged) == 2 * 4


def test_fresh_model_predicts_nearly_uniformly() -> None:
    model = build().eval()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (4, 16), generator=gen)
    targets = torch.randint(0, 256, (4, 16), generator=gen)
    _, loss = model(idx, targets)
    assert loss.item() == pytest.approx(math.log(256), abs=0.1)


# --- weight tying, qkv bias, parameter counts ---------------------------------------------


def test_weight_tying_shares_one_tensor() -> None:
    model = build()
    assert model.out_head.weight is model.tok_emb.weight
    assert model.out_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    with torch.no_grad():
        model.tok_emb.weight[3, 5] = 7.0
    assert model.out_head.weight[3, 5].item() == 7.0


def test_weight_tying_off_gives_separate_head() -> None:
    model = build(weight_tying=False)
    assert model.out_head.weight is not model.tok_emb.weight
    assert model.out_head.weight.data_ptr() != model.tok_emb.weight.data_ptr()
    assert not torch.equal(model.out_head.weight, model.tok_emb.weight)


def test_tied_weights_stay_tied_through_training_steps() -> None:
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        _, loss = model(idx, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.out_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_qkv_bias_option(qkv_bias: bool) -> None:
    model = build(qkv_bias=qkv_bias)
    assert all((b.att.qkv.bias is not None) == qkv_bias for b in model.blocks)


def expected_parameter_count(v: int, c: int, e: int, n_layers: int, tied: bool, qkv_bias: bool = True) -> int:
    per_block = (
        2 * (2 * e)  # two LayerNorms, weight + bias
        + e * 3 * e + (3 * e if qkv_bias else 0)  # qkv
        + e * e + e  # out_proj
        + e * 4 * e + 4 * e  # fc1
        + 4 * e * e + e  # fc2
    )
    return v * e + c * e + n_layers * per_block + 2 * e + (0 if tied else v * e)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_num_parameters_counts_tied_weights_once(tied: bool, qkv_bias: bool) -> None:
    model = build(weight_tying=tied, qkv_bias=qkv_bias)
    assert model.num_parameters() == expected_parameter_count(256, 32, 64, 2, tied, qkv_bias)
    assert model.num_parameters(non_embedding=True) == expected_parameter_count(256, 32, 64, 2, tied, qkv_bias) - 256 * 64 - 32 * 64


def test_gpt2_124m_has_the_published_parameter_count() -> None:
    with torch.device("meta"):
        model = GPTModel(model_preset("gpt2"))
    assert model.num_parameters() == 124_439_808  # Hugging Face's count for "gpt2"
    assert model.num_parameters(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768
    assert model.out_head.weight is model.tok_emb.weight
    assert model.tok_emb.weight.shape == (50257, 768) and model.pos_emb.weight.shape == (1024, 768)
    assert len(model.blocks) == 12 and model.blocks[0].att.num_heads == 12


# --- forward and loss -------------------------------------------------------------------


def test_forward_returns_logits_and_mean_cross_entropy() -> None:
    model = build().eval()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (3, 10), generator=gen)
    targets = torch.randint(0, 256, (3, 10), generator=gen)
    logits = model(idx)
    assert logits.shape == (3, 10, 256)
    logits2, loss = model(idx, targets)
    torch.testing.assert_close(logits2, logits)
    log_probs = torch.log_softmax(logits, dim=-1)
    by_hand = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    torch.testing.assert_close(loss, by_hand)


def test_loss_ignores_targets_of_minus_100() -> None:
    model = build().eval()
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 256, (2, 6), generator=gen)
    targets = torch.randint(0, 256, (2, 6), generator=gen)
    targets[0, 3:] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    log_probs = torch.log_softmax(logits[keep], dim=-1)
    by_hand = -log_probs[torch.arange(int(keep.sum())), targets[keep]].mean()
    torch.testing.assert_close(loss, by_hand)


def test_forward_refuses_more_positions_than_context() -> None:
    model = build()
    with pytest.raises(ValueError, match=re.escape("33 positions exceed the context length 32")):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("34 positions exceed the context length 32")):
        model(torch.zeros(1, 4, dtype=torch.long), start_pos=30)


def test_model_is_causal() -> None:
    model = build().eval()
    idx = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % 256
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_model_dropout_active_in_train_and_off_in_eval() -> None:
    model = build(drop_rate=0.3)
    reference = build(drop_rate=0.0)
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    model.train()
    assert not torch.allclose(model(idx), model(idx))
    model.eval()
    reference.eval()
    torch.testing.assert_close(model(idx), reference(idx))


@pytest.mark.parametrize("position", ["learned", "rope", "none"])
def test_kv_cache_decoding_equals_full_forward(position: str) -> None:
    model = build(position=position).eval()
    idx = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    full = model(idx)
    cache = model.make_kv_cache(batch=2)
    pieces = [model(idx[:, :5], kv_cache=cache, start_pos=0)]
    for pos in range(5, 12):
        pieces.append(model(idx[:, pos : pos + 1], kv_cache=cache, start_pos=pos))
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_kv_cache_refuses_a_start_pos_it_does_not_hold() -> None:
    model = build().eval()
    cache = model.make_kv_cache(batch=1)
    model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=re.escape("start_pos 0 does not match the KV cache, which holds 4 positions")):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)
    assert cache.length == 4  # the refused call left the cache alone


# --- components selected by name ------------------------------------------------------------


def test_rope_model_builds_no_learned_table() -> None:
    model = build(position="rope")
    assert "pos_emb.weight" not in model.state_dict()
    assert not hasattr(model.pos_emb, "weight")
    assert list(model.pos_emb.parameters()) == []
    assert model.num_parameters() == expected_parameter_count(256, 32, 64, 2, True) - 32 * 64


def test_position_none_adds_nothing() -> None:
    model = build(position="none")
    assert list(model.pos_emb.parameters()) == []
    assert model.pos_emb.absolute(0, 4) is None


def module_in_use(model: GPTModel, slot: str) -> str:
    block = model.blocks[0]
    return {
        "norm": type(model.final_norm).__name__,
        "ffn": type(block.ff).__name__,
        "position": type(model.pos_emb).__name__,
        "activation": type(getattr(block.ff, "activation", None)).__name__,
    }[slot]


@pytest.mark.parametrize(
    ("slot", "name", "module"),
    [
        ("norm", "layernorm", "LayerNorm"),
        ("norm", "rmsnorm", "RMSNorm"),
        ("ffn", "swiglu", "SwiGLU"),
        ("position", "rope", "RotaryPositionEncoding"),
        ("activation", "relu", "ReLU"),
        ("activation", "silu", "SiLU"),
    ],
)
def test_selected_component_trains(slot: str, name: str, module: str) -> None:
    model = build(**{slot: name})
    assert module_in_use(model, slot) == module
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 32), generator=gen)
    y = torch.randint(0, 256, (4, 32), generator=gen)
    losses = []
    for _ in range(10):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(256), abs=0.15)
    assert losses[-1] < losses[0] - 1.0, losses
    assert all(math.isfinite(v) for v in losses)


def test_rmsnorm_is_used_for_every_norm() -> None:
    model = build(norm={"name": "rmsnorm", "eps": 1e-4})
    norms = [model.final_norm] + [n for b in model.blocks for n in (b.norm1, b.norm2)]
    assert {type(n).__name__ for n in norms} == {"RMSNorm"}
    assert {n.eps for n in norms} == {1e-4}


def test_component_params_from_config_reach_the_modules() -> None:
    model = build(
        norm={"name": "layernorm", "eps": 1e-3, "bias": False},
        activation={"name": "gelu", "approximate": "none"},
        ffn={"name": "mlp", "hidden_dim": 100},
        attention={"name": "mha", "use_sdpa": False},
    )
    block = model.blocks[0]
    assert block.norm1.eps == 1e-3 and block.norm1.bias is None and model.final_norm.bias is None
    assert block.ff.activation.approximate == "none"
    assert block.ff.fc1.out_features == 100
    assert block.att.use_sdpa is False


def test_explicit_attention_model_equals_sdpa_model() -> None:
    sdpa = build(attention={"name": "mha", "use_sdpa": True}).eval()
    explicit = build(attention={"name": "mha", "use_sdpa": False}).eval()
    explicit.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sdpa(idx), explicit(idx), rtol=1e-5, atol=1e-5)


def test_from_preset_applies_overrides() -> None:
    torch.manual_seed(0)
    model = GPTModel.from_preset("cpu-small", n_layers=1, vocab_size=64)
    assert model.cfg.emb_dim == 256 and model.cfg.n_heads == 4 and model.cfg.context_length == 128
    assert len(model.blocks) == 1 and model.tok_emb.weight.shape == (64, 256)
    assert F.softmax(model(torch.zeros(1, 3, dtype=torch.long)), dim=-1).shape == (1, 3, 64)
