"""Tests for Hugging Face GPT-2 interop: config mapping, weight mapping, export/import and logit parity.

Every model is filled with seeded random numbers (nothing is downloaded), biases
and LayerNorm scales included, so that a dropped or swapped bias or an
untransposed weight changes the logits.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from gptkit import GPTModel, ModelConfig, model_preset
from gptkit.errors import GptkitError
from gptkit.interop.hf_checkpoint import export_hf, import_hf
from gptkit.interop.hf_convert import (
    from_hf_state_dict,
    hf_config_dict,
    model_config_from_hf,
    to_hf_state_dict,
)

TOLERANCE = 1e-4
HELLO_WORLD_IDS = [15496, 995]

# (preset, parameter count of the HF GPT2LMHeadModel with the same sizes, tied head counted once)
HF_PARAMETER_COUNTS = [
    ("gpt2", 124_439_808),
    ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080),
    ("gpt2-xl", 1_557_611_200),
]

# 8 heads of 16, untied head, no q/k/v bias: the features GPT-2 itself does not exercise.
SMALL = ModelConfig(emb_dim=128, n_heads=8, n_layers=3, context_length=64, weight_tying=False, qkv_bias=False)


# Just big enough to build; for tests about files and names, not numbers.
TINY_SIZES: dict[str, Any] = dict(vocab_size=100, emb_dim=16, n_heads=2, n_layers=1, context_length=8)
TINY = ModelConfig(**TINY_SIZES)


# --- fixtures and helpers ----------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def hf() -> Iterator[ModuleType]:
    """transformers, imported with the Hub switched off so nothing can be fetched."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield pytest.importorskip("transformers")


def randomise(model: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Fill every parameter from a seeded generator: N(1, std) for norm scales, N(0, std) for the rest.

    Unlike GPT-2's initialisation this leaves no bias at zero and no norm scale at
    one, so a mapping that drops or swaps them changes the logits.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied matrix is listed, and filled, once
            is_norm_scale = p.ndim == 1 and name.endswith("weight")  # the only 1-D weights are norms'
            p.normal_(1.0 if is_norm_scale else 0.0, std, generator=generator)
    return model.eval()


def build_random(
    build: Callable[[], torch.nn.Module], tie: tuple[str, str] | None, seed: int, std: float = 0.02
) -> Any:
    """`build()` on the meta device, then given memory and `randomise`d: skips the slow default init."""
    with torch.device("meta"):
        model = build()
    model.to_empty(device="cpu")
    if tie is not None:  # to_empty() gives every name its own tensor
        head, embedding = (model.get_submodule(name) for name in tie)
        head.weight = embedding.weight
    return randomise(model, seed, std)


def hf_gpt2(hf: ModuleType, config: dict[str, Any], seed: int) -> Any:
    hf_config = hf.GPT2Config(**config)
    tie = ("lm_head", "transformer.wte") if hf_config.tie_word_embeddings else None
    return build_random(lambda: hf.GPT2LMHeadModel(hf_config), tie, seed)


def gptkit_model(cfg: ModelConfig, seed: int, std: float = 0.02) -> GPTModel:
    return build_random(lambda: GPTModel(cfg), ("out_head", "tok_emb") if cfg.weight_tying else None, seed, std)


def batch(vocab_size: int, context: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (2, context), generator=torch.Generator().manual_seed(seed))


def max_diff(ours: GPTModel, theirs: Any, idx: torch.Tensor, label: str) -> float:
    with torch.no_grad():
        diff = (ours(idx) - theirs(idx).logits).abs().max().item()
    print(f"\n{label}: max abs logit diff {diff:.3e}")
    return diff


def hf_from_state(hf: ModuleType, config: dict[str, Any], state: dict[str, torch.Tensor]) -> Any:
    """An HF model holding `state`, built on the meta device so no time goes into random init."""
    with torch.device("meta"):
        model = hf.GPT2LMHeadModel(hf.GPT2Config(**config))
    result = model.load_state_dict(state, strict=False, assign=True)
    assert not result.unexpected_keys
    if config["tie_word_embeddings"]:
        assert result.missing_keys == ["lm_head.weight"]
        model.lm_head.weight = model.transformer.wte.weight
    else:
        assert not result.missing_keys
    return model.eval()


@pytest.fixture(scope="module")
def gpt2_hf(hf: ModuleType) -> Any:
    return hf_gpt2(hf, {}, seed=0)


@pytest.fixture(scope="module")
def gpt2_ours() -> GPTModel:
    return gptkit_model(model_preset("gpt2"), seed=1)


@pytest.fixture(scope="module")
def small_ours() -> GPTModel:
    return gptkit_model(SMALL, seed=2)


@pytest.fixture(scope="module")
def small_hf(hf: ModuleType) -> Any:
    model = hf_gpt2(hf, hf_config_dict(SMALL), seed=3)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.bias.zero_()  # the model being mirrored has no q/k/v bias
    return model


@pytest.fixture(scope="module")
def small_export(small_ours: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hf(small_ours, tmp_path_factory.mktemp("hf") / "small")


# --- parameter counts --------------------------------------------------------


def test_gpt2_parameter_count_matches_hf(hf: ModuleType) -> None:
    with torch.device("meta"):  # shapes only: counting needs no memory and no init
        ours = GPTModel(model_preset("gpt2"))
        theirs = hf.GPT2LMHeadModel(hf.GPT2Config())
    assert ours.num_parameters() == 124_439_808 == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize(("preset", "expected"), HF_PARAMETER_COUNTS)
def test_preset_parameter_counts_match_hf(hf: ModuleType, preset: str, expected: int) -> None:
    cfg = model_preset(preset)
    # Meta tensors have shapes but no storage: gpt2-xl is counted without 6 GB of RAM.
    with torch.device("meta"):
        ours = GPTModel(cfg)
        theirs = hf.GPT2LMHeadModel(hf.GPT2Config(**hf_config_dict(cfg)))
    assert ours.num_parameters() == expected == sum(p.numel() for p in theirs.parameters())


# --- logit parity ------------------------------------------------------------


@pytest.mark.slow
def test_gpt2_logits_both_directions(hf: ModuleType, gpt2_hf: Any, gpt2_ours: GPTModel) -> None:
    # One test, not two: under pytest-xdist each worker would build its own 124M pair.
    idx = batch(50257, 64)
    imported = import_hf(gpt2_hf)
    assert imported.cfg.weight_tying and imported.out_head.weight is imported.tok_emb.weight
    assert max_diff(imported, gpt2_hf, idx, "gpt2 HF -> gptkit") < TOLERANCE
    del imported
    exported = hf_from_state(hf, hf_config_dict(gpt2_ours.cfg), to_hf_state_dict(gpt2_ours))
    assert max_diff(gpt2_ours, exported, idx, "gpt2 gptkit -> HF") < TOLERANCE


def test_small_hf_to_gptkit_logits(small_hf: Any) -> None:
    ours = import_hf(small_hf)
    # Our `gptkit` entry in the HF config carries qkv_bias=False through the HF object.
    assert ours.cfg == SMALL
    assert max_diff(ours, small_hf, batch(50257, 64, seed=1), "small HF -> gptkit") < TOLERANCE


def test_small_gptkit_to_hf_logits_through_export(hf: ModuleType, small_ours: GPTModel, small_export: Path) -> None:
    theirs, info = hf.GPT2LMHeadModel.from_pretrained(small_export, output_loading_info=True)
    assert not any(info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    theirs.eval()
    assert max_diff(small_ours, theirs, batch(50257, 64, seed=1), "small gptkit -> export_hf -> HF") < TOLERANCE


def test_import_keeps_qkv_bias_learnt_after_export(hf: ModuleType, small_export: Path) -> None:
    theirs = hf.GPT2LMHeadModel.from_pretrained(small_export).eval()
    assert theirs.config.to_dict()["gptkit"] == {"qkv_bias": False}  # our entry survives transformers
    with torch.no_grad():
        theirs.transformer.h[1].attn.c_attn.bias.normal_(std=0.02)  # as if fine-tuned in transformers
    ours = import_hf(theirs)
    assert ours.cfg.qkv_bias
    assert max_diff(ours, theirs, batch(50257, 64, seed=1), "small HF with learnt q/k/v bias -> gptkit") < TOLERANCE


def test_exact_gelu_exports_as_gelu(hf: ModuleType, tmp_path: Path) -> None:
    cfg = ModelConfig(
        vocab_size=1000, emb_dim=32, n_heads=4, n_layers=2, context_length=16,
        activation={"name": "gelu", "approximate": "none"},
    )
    assert hf_config_dict(cfg)["activation_function"] == "gelu"
    # Wide weights: the two GELUs differ visibly only away from zero.
    ours = gptkit_model(cfg, seed=4, std=0.2)
    directory = export_hf(ours, tmp_path / "exact")
    theirs = hf.GPT2LMHeadModel.from_pretrained(directory).eval()
    assert max_diff(ours, theirs, batch(1000, 16), "exact-GELU gptkit -> HF") < TOLERANCE
    tanh = hf.GPT2LMHeadModel.from_pretrained(directory, activation_function="gelu_new").eval()
    assert max_diff(ours, tanh, batch(1000, 16), "exact-GELU gptkit vs HF gelu_new (must differ)") > 10 * TOLERANCE
    assert import_hf(directory).cfg == cfg


# --- export ------------------------------------------------------------------


def test_export_round_trip(small_ours: GPTModel, small_export: Path) -> None:
    back = import_hf(small_export)
    assert back.cfg == SMALL
    idx = batch(50257, 64, seed=2)
    with torch.no_grad():
        assert torch.equal(back(idx), small_ours(idx))


def test_export_files(small_export: Path) -> None:
    names = {p.name for p in small_export.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt"} <= names
    config = json.loads((small_export / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_embd"], config["n_head"], config["n_layer"], config["n_positions"]) == (128, 8, 3, 64)
    assert config["n_inner"] is None and config["activation_function"] == "gelu_new"
    assert config["tie_word_embeddings"] is False
    with safe_open(small_export / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert "lm_head.weight" in f.keys()
        assert f.get_slice("transformer.h.0.attn.c_attn.weight").get_shape() == [128, 384]
        assert not f.get_tensor("transformer.h.0.attn.c_attn.bias").any()
    # Nothing of the staging folder is left beside the export.
    assert [p.name for p in small_export.parent.iterdir()] == ["small"]


def test_tied_head_is_stored_once() -> None:
    with torch.device("meta"):
        state = to_hf_state_dict(GPTModel(model_preset("gpt2")))
    assert "lm_head.weight" not in state and "transformer.wte.weight" in state
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (768, 2304)
    assert all(t.is_contiguous() for t in state.values())


def test_exported_tokenizer(hf: ModuleType, small_export: Path) -> None:
    tokenizer = hf.GPT2TokenizerFast.from_pretrained(small_export)
    assert tokenizer("Hello world")["input_ids"] == HELLO_WORLD_IDS
    assert tokenizer.model_max_length == 64


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"position": "none"}, "position 'none'"),
        ({"norm": {"name": "layernorm", "bias": False}}, "norm 'layernorm' without bias"),
        ({"ffn": {"name": "mlp", "bias": False}}, "ffn 'mlp' without bias"),
    ],
)
def test_export_refuses_non_gpt2_components(tmp_path: Path, overrides: dict[str, Any], named: str) -> None:
    cfg = ModelConfig(**TINY_SIZES, **overrides)
    with pytest.raises(GptkitError, match=f"cannot export to Hugging Face GPT-2: {named}"):
        export_hf(GPTModel(cfg), tmp_path / "out")
    assert not any(tmp_path.iterdir())


def test_export_protects_unrelated_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tokenizer files take a second to derive and are not what this test is about.
    monkeypatch.setattr("gptkit.interop.hf_checkpoint.write_hf_tokenizer_files", lambda directory, model_max_length: None)
    tiny = GPTModel(TINY)
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(GptkitError, match="not empty"):
        export_hf(tiny, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    export_hf(tiny, target, overwrite=True)
    assert not (target / "notes.txt").exists()
    export_hf(tiny, target)  # an earlier export is replaced without asking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("gptkit.interop.hf_checkpoint.write_hf_tokenizer_files", broken)
    with pytest.raises(OSError, match="disk full"):
        export_hf(GPTModel(TINY), tmp_path / "out")
    assert not any(tmp_path.iterdir())


# --- import ------------------------------------------------------------------


def test_import_pytorch_bin(small_ours: GPTModel, small_export: Path, tmp_path: Path) -> None:
    shutil.copy(small_export / "config.json", tmp_path / "config.json")
    torch.save(load_file(small_export / "model.safetensors"), tmp_path / "pytorch_model.bin")
    idx = batch(50257, 64, seed=3)
    with torch.no_grad():
        assert torch.equal(import_hf(tmp_path)(idx), small_ours(idx))


def test_import_corrupted_safetensors(small_export: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(small_export, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GptkitError, match=r"model\.safetensors"):
        import_hf(broken)


def test_import_missing_files(small_export: Path, tmp_path: Path) -> None:
    with pytest.raises(GptkitError, match="does not exist"):
        import_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GptkitError, match=r"config\.json is missing"):
        import_hf(tmp_path / "empty")
    shutil.copy(small_export / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(GptkitError, match=r"expected model\.safetensors"):
        import_hf(tmp_path / "empty")


def test_import_shape_mismatch(small_export: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(small_export, edited)
    config = json.loads((edited / "config.json").read_text())
    config["n_positions"] = 128
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptkitError, match=r"'transformer\.wpe\.weight' has shape \(64, 128\), expected \(128, 128\)"):
        import_hf(edited)


def test_state_dict_without_prefix_and_with_buffers(small_ours: GPTModel) -> None:
    state = {k.removeprefix("transformer."): v for k, v in to_hf_state_dict(small_ours).items()}
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
    state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    mapped = from_hf_state_dict(state, SMALL)
    for name, tensor in small_ours.state_dict().items():
        assert torch.equal(mapped[name], tensor), name


def test_import_refuses_nonzero_qkv_bias_without_qkv_bias(small_ours: GPTModel) -> None:
    state = to_hf_state_dict(small_ours)
    state["transformer.h.1.attn.c_attn.bias"] = torch.full((384,), 0.1)
    with pytest.raises(GptkitError, match=r"h\.1\.attn\.c_attn\.bias' is not all zero"):
        from_hf_state_dict(state, SMALL)


def test_import_refuses_untied_head_into_tied_config() -> None:
    state = to_hf_state_dict(GPTModel(TINY))
    state["lm_head.weight"] = torch.randn(100, 16)
    with pytest.raises(GptkitError, match="tie_word_embeddings"):
        from_hf_state_dict(state, TINY)


def test_import_reports_missing_and_unexpected_keys(small_ours: GPTModel) -> None:
    state = to_hf_state_dict(small_ours)
    del state["transformer.ln_f.bias"]
    state["transformer.h.0.crossattention.c_attn.weight"] = torch.zeros(1)
    with pytest.raises(GptkitError, match=r"missing 'transformer\.ln_f\.bias'; unexpected 'transformer\.h\.0\.cross"):
        from_hf_state_dict(state, SMALL)


# --- config mapping ----------------------------------------------------------


def test_hf_config_dict_round_trips_through_gpt2config(hf: ModuleType) -> None:
    cfg = model_preset("gpt2", ffn={"name": "mlp", "hidden_dim": 1000}, norm={"name": "layernorm", "eps": 1e-6})
    config = hf.GPT2Config(**hf_config_dict(cfg))
    assert (config.n_inner, config.layer_norm_epsilon, config.bos_token_id) == (1000, 1e-6, 50256)
    assert model_config_from_hf(config.to_dict()) == cfg


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("reorder_and_upcast_attn", True),
        ("scale_attn_by_inverse_layer_idx", True),
        ("scale_attn_weights", False),
        ("activation_function", "relu"),
        ("model_type", "llama"),
    ],
)
def test_model_config_from_hf_refuses_unsupported(hf: ModuleType, option: str, value: Any) -> None:
    config = hf.GPT2Config().to_dict() | {option: value}
    with pytest.raises(GptkitError, match=option if option != "model_type" else "llama"):
        model_config_from_hf(config)


def test_model_config_from_hf_reads_variants() -> None:
    cfg = model_config_from_hf({"n_embd": 64, "n_head": 4, "n_layer": 2, "activation_function": "gelu_pytorch_tanh"})
    assert cfg.activation.params == {"approximate": "tanh"}
    assert (cfg.emb_dim, cfg.n_heads, cfg.n_layers, cfg.qkv_bias) == (64, 4, 2, True)
    with pytest.raises(GptkitError, match="n_heads"):
        model_config_from_hf({"n_embd": 64, "n_head": 5})


def test_refused_hf_config_in_directory_names_the_file(small_export: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(small_export, edited)
    config = json.loads((edited / "config.json").read_text()) | {"reorder_and_upcast_attn": True}
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(GptkitError, match=r"config\.json: .*reorder_and_upcast_attn"):
        import_hf(edited)
