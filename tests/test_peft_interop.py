"""LoRA adapters and Hugging Face PEFT, both ways, checked against a real `peft.PeftModel` on the same base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_hf_gpt2
from safetensors.torch import save_file
from test_cli_generate import run_main

from gptkit.errors import CheckpointError, ConfigError
from gptkit.interop.hf_checkpoint import import_hf
from gptkit.training.checkpoint import load_run_model
from gptkit.training.lora import apply_peft_adapter

hf = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

# Untied, so that the output head can carry an adapter too.
HF_SHAPE = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 50257, "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hf_gpt2(tmp_path_factory, HF_SHAPE)


def ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(seed))


def test_an_exported_adapter_gives_peftmodel_gptkits_logits(monkeypatch: pytest.MonkeyPatch, base_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "notes.txt"
    corpus.write_text("".join(f"note {i}: the adapter goes to Hugging Face.\n" for i in range(200)))
    lora = json.dumps({"rank": 4, "alpha": 16, "targets": ["blocks.*.att.*", "blocks.1.ff.*", "out_head"]})
    items = [
        "train.batch_size=4", "train.eval_batches=2", "train.eval_every=100", "run.dtype=float32", 'train.callbacks=["checkpoint"]',
        "train.max_steps=2", "train.lr=1e-2", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"run.out_dir={tmp_path}",
        "run.name=lora", f"train.lora={lora}",
    ]
    code, text, err = run_main(monkeypatch, ["train", "--init-from", str(base_dir), *[a for i in items for a in ("--set", i)]])
    assert code == 0, text + err
    code, text, err = run_main(monkeypatch, ["export", "--run", str(tmp_path / "lora"), "--out", str(tmp_path / "adapter"), "--adapter"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    theirs = peft.PeftModel.from_pretrained(hf.GPT2LMHeadModel.from_pretrained(base_dir), tmp_path / "adapter").eval()
    adapted = {name for name, module in theirs.named_modules() if hasattr(module, "lora_A")}
    assert len(adapted) == 2 * 2 + 2 + 1  # both layers' c_attn and attn.c_proj, layer 1's MLP, lm_head
    with torch.no_grad():
        expected = load_run_model(tmp_path / "lora")(ids(0))
        got = theirs(ids(0)).logits
        base = hf.GPT2LMHeadModel.from_pretrained(base_dir).eval()(ids(0)).logits
    assert (got - expected).abs().max() < 1e-4
    assert (base - expected).abs().max() > 1e-3  # the adapter is not a no-op


def peft_adapter(base_dir: Path, folder: Path, **settings: object) -> torch.nn.Module:
    """An adapter trained (here: drawn) on a Hugging Face GPT-2 and saved by PEFT itself."""
    torch.manual_seed(3)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True, **settings)
    model = peft.get_peft_model(hf.GPT2LMHeadModel.from_pretrained(base_dir), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # B starts at zero; a trained adapter's is not
    model.save_pretrained(folder)
    return model.eval()


def test_a_peft_adapter_gives_gptkit_peftmodels_logits(base_dir: Path, tmp_path: Path) -> None:
    theirs = peft_adapter(base_dir, tmp_path / "adapter")
    ours = apply_peft_adapter(import_hf(base_dir), tmp_path / "adapter").eval()
    assert len([n for n, p in ours.named_parameters() if ".lora_" in n]) == 2 * 2 * 4  # c_attn, two c_proj, c_fc per layer
    with torch.no_grad():
        assert (ours(ids(1)) - theirs(ids(1)).logits).abs().max() < 1e-4


def test_an_adapter_for_another_architecture_is_refused(base_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llama-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32)}, folder / "adapter_model.safetensors")
    with pytest.raises(ConfigError) as refused:
        apply_peft_adapter(import_hf(base_dir), folder)
    assert str(refused.value) == (
        f"{folder} is an adapter for another architecture: 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' is not a "
        "LoRA matrix of a GPT-2 linear (expected base_model.model.transformer.h.N.attn.c_attn.lora_A.weight and the like)"
    )


def test_a_config_peft_rejects_or_gptkit_cannot_compute_is_refused(base_dir: Path, tmp_path: Path) -> None:
    peft_adapter(base_dir, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    # PEFT's own check: LoraConfig(layers_pattern="h") without layers_to_transform raises ValueError.
    config_path.write_text(json.dumps({**config, "layers_pattern": "h"}))
    with pytest.raises(ValueError, match="layers_to_transform"):
        peft.LoraConfig(**{**{k: v for k, v in config.items() if k != "peft_type"}, "layers_pattern": "h"})
    with pytest.raises(ConfigError) as refused:
        apply_peft_adapter(import_hf(base_dir), tmp_path / "adapter")
    assert str(refused.value) == (
        f"{config_path}: PEFT refuses this config (When `layers_pattern` is specified, `layers_to_transform` must also be specified. )"
    )
    config_path.write_text(json.dumps({**config, "r": 0}))
    with pytest.raises(ConfigError, match=r"adapter_config.json: r must be a positive integer, got 0"):
        apply_peft_adapter(import_hf(base_dir), tmp_path / "adapter")
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConfigError, match=r"use_dora = True is not supported \(gptkit's LoRA computes use_dora = False\)"):
        apply_peft_adapter(import_hf(base_dir), tmp_path / "adapter")


def test_an_adapter_for_a_deeper_gpt2_is_refused(base_dir: Path, tmp_path: Path) -> None:
    deeper = tmp_path / "deeper"
    torch.manual_seed(0)
    hf.GPT2LMHeadModel(hf.GPT2Config(**{**HF_SHAPE, "n_layer": 3})).save_pretrained(deeper)
    peft_adapter(deeper, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=r"adapts blocks.2.att.out_proj, which this model does not have"):
        apply_peft_adapter(import_hf(base_dir), tmp_path / "adapter")
