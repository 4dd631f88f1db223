"""bench/finetune.py compares like with like: the same targets scored on both sides.

gptkit and Hugging Face's GPT2LMHeadModel are given one masked finetuning batch
in two forms (HF: ids and labels, which it shifts itself; gptkit: ids and the
shifted labels). On a tiny model's weights their float32 losses must agree, equal
a loss computed here by hand from HF's logits, and the benchmark's own check must
refuse a batch the two sides would score differently. After one step as the
benchmark takes it the two models must still agree. Also: the batch's shape and
masks, and the command line's checks.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, randomize_weights

from gptkit import GPTModel, ModelConfig

pytest.importorskip("transformers")


def load_bench_finetune() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_finetune", REPO_ROOT / "bench" / "finetune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench_finetune()

TINY = {"vocab_size": 96, "context_length": 24, "emb_dim": 32, "n_heads": 2, "n_layers": 2}
WORK = bench.Workload("tiny", batch=3, seq_len=20)
PAD = TINY["vocab_size"] - 1  # end-of-text's id does not fit the tiny vocabulary


def tiny_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    # Wider than GPT-2's init, so that a target scored at the wrong position shows far above rounding.
    return randomize_weights(GPTModel(ModelConfig(**TINY)), seed).train()


def test_batch_is_right_padded_with_prompt_and_padding_masked() -> None:
    ids, labels = bench.finetune_batch(tiny_model().cfg, WORK)
    assert ids.shape == labels.shape == (3, 20) and ids.dtype == labels.dtype == torch.long
    spans = bench.example_spans(labels)
    assert spans[0]["length"] == 20  # the longest example fills the window
    for row_ids, row_labels, span in zip(ids, labels, spans):
        prompt, length = span["prompt"], span["length"]
        assert 1 <= prompt < length
        assert (row_labels[:prompt] == -100).all() and (row_labels[length:] == -100).all()
        assert torch.equal(row_labels[prompt:length], row_ids[prompt:length])
        assert row_ids[length - 1] == PAD and (row_ids[length:] == PAD).all()  # end-of-text scored, padding not
        assert (row_ids[: length - 1] != PAD).all()


def test_gptkit_targets_are_hf_labels_shifted() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, -100], [-100, 7, 8, 9, 10]])
    assert bench.next_token_targets(labels).tolist() == [[-100, 5, 6, -100, -100], [7, 8, 9, 10, -100]]


def test_losses_agree_on_the_masked_batch_and_equal_a_hand_count() -> None:
    source = tiny_model()
    ids, labels = bench.finetune_batch(source.cfg, WORK)
    found = bench.check_losses(source, ids, labels)
    assert found["difference"] < 1e-5
    # By hand from HF's logits: position t predicts token t + 1, scored where its label is not -100.
    hf = bench.copied_variants(source, ["hf-fp32"])[0].model
    with torch.no_grad():
        logits = hf(input_ids=ids, use_cache=False).logits
    scored = labels[:, 1:] != -100
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].clamp(min=0).flatten(), reduction="none")
    by_hand = (per_token * scored.flatten()).sum() / scored.sum()
    assert found["scored_targets"] == int(scored.sum()) == sum(s["length"] - s["prompt"] for s in bench.example_spans(labels))
    for loss in found["losses"].values():
        assert abs(loss - by_hand.item()) < 1e-5


def test_check_refuses_sides_that_score_different_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    source = tiny_model()
    ids, labels = bench.finetune_batch(source.cfg, WORK)
    monkeypatch.setattr(bench, "next_token_targets", lambda labels: labels)  # gptkit scored unshifted
    with pytest.raises(bench.LossesDisagree, match="do not score the same targets"):
        bench.check_losses(source, ids, labels)


def test_one_step_keeps_both_sides_in_step() -> None:
    """Same first loss, and after clip + fused AdamW on both sides the same logits."""
    source = tiny_model()
    variants = bench.copied_variants(source, ["gptkit-fp32", "hf-fp32", "gptkit-bf16", "hf-bf16"])
    ids, labels = bench.finetune_batch(source.cfg, WORK)
    losses = {v.name: bench.bench_train.step(v, ids, labels)[1] for v in variants}
    assert abs(losses["gptkit-fp32"] - losses["hf-fp32"]) < 1e-5
    for name in ("gptkit-bf16", "hf-bf16"):
        assert abs(losses[name] - losses["gptkit-fp32"]) < 0.05 * losses["gptkit-fp32"], name
    by_name = {v.name: v.model for v in variants}
    assert not torch.equal(by_name["gptkit-fp32"].tok_emb.weight, source.tok_emb.weight)  # the step moved them
    with torch.no_grad():
        ours = by_name["gptkit-fp32"](ids)
        theirs = by_name["hf-fp32"](input_ids=ids, use_cache=False).logits
    assert (theirs - ours).abs().max().item() < 1e-4


def test_command_line_defaults_and_checks() -> None:
    args = bench.parse_args([])
    assert (args.preset, args.steps, args.warmup) == ("gpt2", 7, 2)
    assert args.dtypes == ["float32", "bfloat16"]
    assert args.out == REPO_ROOT / "bench" / "results" / "finetune.json"
    assert (bench.WORKLOADS["gpt2"].batch, bench.WORKLOADS["gpt2"].seq_len) == (4, 256)
    assert bench.parse_args(["--dtypes", "bfloat16, float32,bfloat16"]).dtypes == ["bfloat16", "float32"]
    for bad in (["--dtypes", "float16"], ["--dtypes", ","], ["--steps", "0"], ["--warmup", "-1"], ["--preset", "gpt2-xl"]):
        with pytest.raises(SystemExit) as err:
            bench.parse_args(bad)
        assert err.value.code == 2, bad


def test_variant_names() -> None:
    assert bench.split_name("gptkit-bf16") == ("gptkit", "bfloat16")
    assert bench.split_name("hf-fp32") == ("hf", "float32")
    with pytest.raises(ValueError):
        bench.split_name("reference-fp32")
