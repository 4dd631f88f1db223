"""gptkit.kernels.accelerate: the CPU speed paths change speed, never the model.

The plain model (nn.Linear, SDPA, F.cross_entropy) is the reference; the accelerated
one must hold the very same parameters and state dict, and compute the same logits
and loss up to float32 summation order (oneDNN and MKL add in different orders).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import randomize_weights
from torch import nn

from gptkit import GPTModel, ModelConfig, MultiHeadAttention, accelerate
from gptkit.kernels import KERNEL_CLASSES, is_accelerated
from gptkit.kernels.bf16_attention import CPUAttention
from gptkit.kernels.fused_loss import FusedLossGPTModel
from gptkit.kernels.lora_linear import CPULoRALinear
from gptkit.kernels.onednn_linear import OneDNNLinear
from gptkit.kernels.rowwise import KernelGELU, KernelLayerNorm
from gptkit.layers import LayerNorm
from gptkit.layers.lora import LoRALinear
from gptkit.training.lora import LoRASettings, wrap_lora

TOKENS = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(0))
TARGETS = torch.roll(TOKENS, -1, dims=1)


def small(**options: object) -> GPTModel:
    cfg = ModelConfig(vocab_size=97, emb_dim=32, n_heads=4, n_layers=2, context_length=16, **options)  # type: ignore[arg-type]
    return randomize_weights(GPTModel(cfg), 1)  # type: ignore[return-value]


@pytest.mark.parametrize("options", [{}, {"weight_tying": False, "qkv_bias": False}, {"norm": "rmsnorm", "ffn": "swiglu", "position": "rope"}])
def test_same_parameters_state_dict_and_logits_with_and_without(options: dict[str, object]) -> None:
    plain = small(**options)
    fast = copy.deepcopy(plain)
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    params_before = [p.data_ptr() for p in fast.parameters()]
    assert accelerate(fast)
    assert is_accelerated(fast) and not is_accelerated(plain)
    after = fast.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [p.data_ptr() for p in fast.parameters()] == params_before  # the same tensors, not copies
    with torch.no_grad():
        # Against the float64 model: each float32 path's own rounding, whatever order this CPU's kernels sum in
        # (a machine without AVX-512 sums a layer norm 8 lanes at a time, or one number at a time).
        exact = copy.deepcopy(plain).double()(TOKENS)
        fast_error = (fast(TOKENS).double() - exact).abs().max().item()
        plain_error = (plain(TOKENS).double() - exact).abs().max().item()
        assert fast_error <= 2 * plain_error, (fast_error, plain_error)
        _, fast_loss = fast(TOKENS, TARGETS, keep_logits=False)
        _, plain_loss = plain(TOKENS, TARGETS, keep_logits=False)
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-6, atol=1e-6)


def test_gradients_agree_in_float32_and_under_bf16_autocast() -> None:
    plain = small()
    fast = copy.deepcopy(plain)
    accelerate(fast)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        for model in (plain, fast):
            model.zero_grad()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                _, loss = model(TOKENS, TARGETS, keep_logits=False)
            loss.backward()
        for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=tolerance, atol=tolerance, msg=f"{dtype} {name}")


def test_stock_classes_get_their_kernels_and_nothing_else_changes() -> None:
    model = small(norm="rmsnorm")
    accelerate(model)
    assert type(model) is FusedLossGPTModel
    assert {type(b.att) for b in model.blocks} == {CPUAttention}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and {type(m) for m in linears} == {OneDNNLinear}
    assert type(model.final_norm).__name__ == "RMSNorm"  # no kernel for it: untouched
    assert {type(b.ff.activation) for b in model.blocks} == {KernelGELU}
    layer_normed = small()
    assert type(layer_normed.final_norm) is LayerNorm
    accelerate(layer_normed)
    assert {type(layer_normed.final_norm), *(type(b.norm1) for b in layer_normed.blocks)} == {KernelLayerNorm}
    assert set(KERNEL_CLASSES.values()) == {
        OneDNNLinear, CPUAttention, FusedLossGPTModel, CPULoRALinear, KernelLayerNorm, KernelGELU,
    }


def test_a_lora_model_gets_the_same_loss_and_adapter_gradients_accelerated() -> None:
    def loss_and_grads(model: nn.Module, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(TOKENS, TARGETS, keep_logits=False)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    errors: dict[str, list[float]] = {"fast": [], "plain": []}
    for draw in range(8):  # the adapters' initial values come from torch's global generator: drawn here, seeded
        with torch.random.fork_rng():
            torch.manual_seed(draw)
            plain = small()
            wrap_lora(plain, LoRASettings(rank=4, alpha=8.0, dropout=0.0, targets=("blocks.*.att.qkv", "blocks.*.att.out_proj")))
            with torch.no_grad():
                for m in plain.modules():
                    if isinstance(m, LoRALinear):
                        m.lora_B.normal_(0.0, 0.5)  # not zero, so the update shows in the loss and in A's gradient
        fast = copy.deepcopy(plain)
        accelerate(fast)
        adapters = [m for m in fast.modules() if isinstance(m, LoRALinear)]
        assert len(adapters) == 4 and {type(m) for m in adapters} == {CPULoRALinear}
        assert {type(m.base) for m in adapters} == {OneDNNLinear}  # the base linear keeps its own kernel

        ref_loss, ref = loss_and_grads(plain, bf16=False)
        assert len(ref) == 8  # lora_A and lora_B of four layers, nothing else
        loss, grads = loss_and_grads(fast, bf16=False)
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref[name], rtol=1e-5, atol=1e-5, msg=name)
        for label, model in (("fast", fast), ("plain", plain)):
            _, g = loss_and_grads(model, bf16=True)
            errors[label].append(max(((g[n] - ref[n]).abs().max() / ref[n].abs().max()).item() for n in ref))

    # Under bf16 autocast, against float32: no further off than the readable layer. These wide weights round a
    # lot, so one draw's error is 10% to 90% for either path, and which is ahead changes from draw to draw: the
    # two are compared over eight draws.
    mean = {label: sum(e) / len(e) for label, e in errors.items()}
    assert mean["fast"] <= 1.5 * mean["plain"] + 0.02, errors


def test_a_subclass_keeps_its_own_class() -> None:
    class Mine(MultiHeadAttention):
        pass

    block = nn.Sequential(Mine(8, 8, 4, 0.0, 2))
    accelerate(block)
    assert type(block[0]) is Mine
    assert type(block[0].qkv) is OneDNNLinear  # its plain linears still get theirs


def test_a_model_off_the_cpu_is_left_alone() -> None:
    with torch.device("meta"):
        model = GPTModel(ModelConfig(vocab_size=97, emb_dim=32, n_heads=4, n_layers=1, context_length=16))
    assert not accelerate(model)
    assert type(model) is GPTModel and not is_accelerated(model)


def test_accelerating_twice_changes_nothing_more() -> None:
    model = small()
    accelerate(model)
    classes = [type(m) for m in model.modules()]
    accelerate(model)
    assert [type(m) for m in model.modules()] == classes


def test_trainer_switches_kernels_by_run_kernels(tmp_path: Path) -> None:
    import config as run_config
    from gptkit.data.dataset import prepare_dataset
    from gptkit.data.tokenizer import Tokenizer
    from gptkit.plugins import default_registry
    from trainer import Trainer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400)))
    tokenizer = Tokenizer()
    data = prepare_dataset(str(corpus), tokenizer, tmp_path / "cache", 0.1)
    tiny = ["model.n_layers=1", "model.emb_dim=32", "model.n_heads=2", "model.context_length=16", "train.callbacks=[]", "run.device=cpu"]
    for kernels, expected in (("true", FusedLossGPTModel), ("false", GPTModel)):
        cfg = run_config.load_run_config(overrides=[*tiny, f"run.kernels={kernels}"])
        trainer = Trainer(cfg, tmp_path / kernels, data, tokenizer, default_registry())
        assert type(trainer.model) is expected


def test_an_accelerated_model_moved_off_the_cpu_gets_no_flat_decoder() -> None:
    from gptkit.kernels import flat_decoder

    model = small().eval()
    accelerate(model)
    assert flat_decoder(model) is not None
    model.to("meta")
    assert flat_decoder(model) is None
