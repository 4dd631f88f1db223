"""bench/lora.py compares like with like: PEFT adapts the same linears as gptkit, with the same adapters.

On a tiny model, PEFT's own list of adapted modules must be the attention's two
projections of every block (never the MLP's c_proj), the two sides must train the
same numbers and take the same two float32 steps, and the benchmark's check must
refuse a PEFT side whose adapters were not copied from gptkit's (the second step
shows it: B starts at zero, so the first cannot).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
import torch
from conftest import REPO_ROOT, randomize_weights

from gptkit import GPTModel, ModelConfig

pytest.importorskip("transformers")
pytest.importorskip("peft")


def load_bench_lora() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_lora", REPO_ROOT / "bench" / "lora.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench_lora()

TINY = {"vocab_size": 96, "context_length": 24, "emb_dim": 32, "n_heads": 2, "n_layers": 2}
WORK = bench.Workload("tiny", batch=3, seq_len=20)


def tiny_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return randomize_weights(GPTModel(ModelConfig(**TINY)), seed).train()


def batch(source: GPTModel) -> tuple[torch.Tensor, torch.Tensor]:
    return bench.bench_train.random_batch(source.cfg, WORK)


def test_peft_adapts_exactly_the_attention_projections() -> None:
    gptkit, peft_side = bench.make_variants(tiny_model(), ["gptkit-lora", "peft-lora"], None)
    adapted = {name for name, module in peft_side.model.named_modules() if hasattr(module, "lora_A") and hasattr(module, "base_layer")}
    assert adapted == {f"base_model.model.transformer.h.{i}.attn.{part}" for i in range(2) for part in ("c_attn", "c_proj")}
    # 2 blocks x (8 x (32 + 96) for qkv + 8 x (32 + 32) for the output projection), counted by hand.
    assert bench.trained_numbers(gptkit) == bench.trained_numbers(peft_side) == 2 * (8 * 128 + 8 * 64)
    theirs = peft_side.model.base_model.model.transformer.h[1].attn.c_attn
    assert theirs.scaling["default"] == 16 / 8 and theirs.fan_in_fan_out
    assert torch.equal(theirs.lora_A["default"].weight, gptkit.model.blocks[1].att.qkv.lora_A)


def test_both_lora_sides_take_the_same_float32_steps() -> None:
    found = bench.check_losses(tiny_model(), *batch(tiny_model()))
    assert max(found["differences"]) < 1e-5
    first, second = found["losses"]["gptkit-lora"]
    assert second < first - 1e-3  # the step moved the adapters, so the second loss checks them


def test_check_refuses_a_peft_side_with_other_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    own_init = bench.peft_model
    monkeypatch.setattr(bench, "peft_model", lambda hf, lora_model: own_init(hf, None))  # PEFT's own random A
    with pytest.raises(bench.LossesDisagree, match="differ by"):
        bench.check_losses(tiny_model(), *batch(tiny_model()))


def test_command_line_defaults_and_checks() -> None:
    args = bench.parse_args([])
    assert (args.preset, args.rounds, args.warmup, args.dtype) == ("gpt2", 5, 1, "bfloat16")
    assert args.variants == ["gptkit-lora", "peft-lora", "gptkit-full"]
    assert bench.parse_args(["--skip-peft", "--skip-full"]).variants == ["gptkit-lora"]
    assert (bench.WORKLOADS["gpt2-medium"].batch, bench.WORKLOADS["gpt2-medium"].seq_len) == (4, 256)
    for bad in (["--rounds", "0"], ["--warmup", "-1"], ["--preset", "gpt2-xl"], ["--dtype", "float16"]):
        with pytest.raises(SystemExit) as err:
            bench.parse_args(bad)
        assert err.value.code == 2, bad
