"""The training benchmark's baselines compute what gptkit computes: same logits, same step.

bench/reference_gpt.py (nanoGPT-style) and Hugging Face's GPT2LMHeadModel are
loaded with a tiny gptkit model's weights; their logits must match gptkit's,
and after one training step as bench/train.py takes it their weights must still
match, which checks the optimizer groups too. Also: the README updater touches
only its own section.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import REPO_ROOT, randomize_weights

from gptkit import GPTModel, ModelConfig

pytest.importorskip("transformers")


def load_bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_train = load_bench("train")
reference_gpt = sys.modules["reference_gpt"]  # bench/train.py put bench/ on the path

TINY = {"vocab_size": 96, "context_length": 24, "emb_dim": 32, "n_heads": 2, "n_layers": 2}


def tiny_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(ModelConfig(**TINY))
    # Wider than GPT-2's init, so that a wrong mapping shows up far above rounding.
    return randomize_weights(model, seed).train()


def tokens(seed: int, length: int = 20) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (3, length), generator=torch.Generator().manual_seed(seed))


def test_reference_logits_equal_gptkit() -> None:
    model = tiny_model()
    reference = reference_gpt.from_gptkit(model)
    idx, targets = tokens(1), tokens(2)
    with torch.no_grad():
        ours, our_loss = model(idx, targets)
        theirs, their_loss = reference(idx, targets)
    assert theirs.shape == ours.shape == (3, 20, TINY["vocab_size"])
    assert (theirs - ours).abs().max().item() < 1e-5
    assert abs(their_loss.item() - our_loss.item()) < 1e-5


def test_reference_owns_its_weights_and_ties_its_head() -> None:
    model = tiny_model()
    reference = reference_gpt.from_gptkit(model)
    assert reference.lm_head.weight is reference.transformer.wte.weight
    ours = {p.data_ptr() for p in model.parameters()}
    assert not ours & {p.data_ptr() for p in reference.parameters()}
    # A tied head counted once: the same number of trainable tensors and values as gptkit.
    assert sum(p.numel() for p in reference.parameters()) == sum(p.numel() for p in model.parameters())


def test_hf_logits_equal_gptkit() -> None:
    model = tiny_model()
    hf = bench_train.hf_copy(model).train()
    assert hf.config._attn_implementation == "sdpa"
    idx = tokens(3)
    with torch.no_grad():
        diff = (hf(input_ids=idx, use_cache=False).logits - model(idx)).abs().max().item()
    assert diff < 1e-5


def test_one_training_step_keeps_every_variant_in_step() -> None:
    """Same first loss; after clip + AdamW, the fp32 baselines still compute gptkit's logits."""
    source = tiny_model()
    variants = bench_train.copied_variants(source, bench_train.VARIANTS)
    work = bench_train.Workload("tiny", batch=3, seq_len=20)
    x, y = bench_train.random_batch(source.cfg, work)
    losses = {}
    for v in variants:
        phases, losses[v.name] = bench_train.step(v, x, y)
        assert set(phases) == set(bench_train.PHASES) and all(s > 0 for s in phases.values())
    assert abs(losses["hf-fp32"] - losses["gptkit-fp32"]) < 1e-5
    assert abs(losses["reference-fp32"] - losses["gptkit-fp32"]) < 1e-5
    assert abs(losses["gptkit-bf16"] - losses["gptkit-fp32"]) < 0.05 * losses["gptkit-fp32"]

    by_name = {v.name: v.model for v in variants}
    assert not torch.equal(by_name["gptkit-fp32"].tok_emb.weight, source.tok_emb.weight)  # the step moved them
    idx = tokens(4)
    with torch.no_grad():
        ours = by_name["gptkit-fp32"](idx)
        for name, logits in (
            ("reference-fp32", by_name["reference-fp32"](idx)[0]),
            ("hf-fp32", by_name["hf-fp32"](input_ids=idx, use_cache=False).logits),
        ):
            assert (logits - ours).abs().max().item() < 1e-4, name


def test_flops_per_token_matches_trainer_at_full_context() -> None:
    from trainer import flops_per_token

    model = tiny_model()
    assert bench_train.flops_per_token(model, TINY["context_length"]) == flops_per_token(model)
    # Hand count: 6 per matmul weight, 12 * layers * width * tokens for attention scores.
    linear = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 96 * 32
    assert bench_train.flops_per_token(model, 10) == 6 * linear + 12 * 2 * 32 * 10


def test_readme_update_keeps_other_sections(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    bench_train.update_readme(readme, "first table\n")
    assert readme.read_text() == (
        f"# Benchmarks\n\n## Training step\n\n{bench_train.BEGIN}\nfirst table\n{bench_train.END}\n"
    )
    readme.write_text(
        "# Benchmarks\n\n## Training step\n\nHow to read it.\n\n## Compile\n\ncompile text\n"
    )
    bench_train.update_readme(readme, "table one\n")
    bench_train.update_readme(readme, "table two\n")
    assert readme.read_text() == (
        f"# Benchmarks\n\n## Training step\n\nHow to read it.\n\n{bench_train.BEGIN}\ntable two\n"
        f"{bench_train.END}\n\n## Compile\n\ncompile text\n"
    )
