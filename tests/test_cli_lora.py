"""A LoRA run through the command line: train, merge-lora, generate, evaluate, export, and the refusals.

The unmerged reference is put together by hand here (the base from its Hugging Face
folder, the adapter's tensors from disk, the LoRA formula written out), so that the
merged model every command loads is checked against something it does not share.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_hf_gpt2
from safetensors.torch import load_file
from test_cli_generate import greedy_text, run_main

from gptkit.interop.hf_convert import from_hf_state_dict
from gptkit.model.config import ModelConfig
from gptkit.model.gpt import GPTModel
from gptkit.training.checkpoint import latest_checkpoint, load_run_model

hf = pytest.importorskip("transformers")

HF_SHAPE = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 50257}
RANK, ALPHA = 4, 8.0


def fast(corpus: Path, out: Path, *extra: str) -> list[str]:
    items = [
        "train.batch_size=4", "train.eval_batches=2", "train.eval_every=100", "run.dtype=float32", 'train.callbacks=["checkpoint"]',
        "train.max_steps=3", "train.lr=1e-2", "train.min_lr=1e-3", f"data.path={corpus}", f"data.cache_dir={out / 'cache'}",
        f"run.out_dir={out}", *extra,
    ]
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hf_gpt2(tmp_path_factory, HF_SHAPE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "notes.txt"
    path.write_text("".join(f"note {i}: an adapter learns a low-rank change to frozen weights.\n" for i in range(200)))
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, base_dir: Path, corpus: Path) -> Path:
    out = tmp_path_factory.mktemp("runs")
    monkeypatch = pytest.MonkeyPatch()
    lora = json.dumps({"rank": RANK, "alpha": ALPHA, "targets": ["blocks.*.att.qkv", "blocks.*.att.out_proj", "blocks.*.ff.*"]})
    code, text, err = run_main(monkeypatch, ["train", "--init-from", str(base_dir), *fast(corpus, out, f"train.lora={lora}", "run.name=lora")])
    monkeypatch.undo()
    assert code == 0, text + err
    return out / "lora"


def unmerged_logits(run_dir: Path, base_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """The base model with `x @ (W + alpha/r * B A).T` worked out layer by layer through forward hooks."""
    cfg = ModelConfig.model_validate(json.loads((run_dir / "config.json").read_text())["model"])
    model = GPTModel(cfg).eval()
    model.load_state_dict(from_hf_state_dict(load_file(base_dir / "model.safetensors"), cfg), strict=False)
    adapter = load_file(latest_checkpoint(run_dir) / "adapter.safetensors")
    for name in {key.rsplit(".", 1)[0] for key in adapter}:
        a, b = adapter[f"{name}.lora_A"], adapter[f"{name}.lora_B"]
        model.get_submodule(name).register_forward_hook(lambda m, args, y, a=a, b=b: y + (ALPHA / RANK) * (args[0] @ a.T @ b.T))
    with torch.no_grad():
        return model(ids)


def test_a_lora_run_keeps_adapters_only_and_merge_lora_matches_the_unmerged_model(
    monkeypatch: pytest.MonkeyPatch, lora_run: Path, base_dir: Path, tmp_path: Path
) -> None:
    checkpoint = latest_checkpoint(lora_run)
    assert not (checkpoint / "model.safetensors").exists()
    assert all(".lora_" in key for key in load_file(checkpoint / "adapter.safetensors"))
    code, text, err = run_main(monkeypatch, ["merge-lora", "--run", str(lora_run), "--out", str(tmp_path / "merged")])
    assert code == 0, text + err
    stored = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert stored["train"]["lora"] is None and stored["merged_from"]["checkpoint"] == checkpoint.name
    code, _, err = run_main(monkeypatch, ["merge-lora", "--run", str(lora_run), "--out", str(tmp_path / "merged")])
    assert code == 2 and f"--out {tmp_path / 'merged'} already exists; merge-lora writes a new run directory" in err
    ids = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    expected = unmerged_logits(lora_run, base_dir, ids)
    with torch.no_grad():
        assert (load_run_model(tmp_path / "merged")(ids) - expected).abs().max() < 1e-5
        base = GPTModel(load_run_model(tmp_path / "merged").cfg).eval()
        base.load_state_dict(from_hf_state_dict(load_file(base_dir / "model.safetensors"), base.cfg), strict=False)
        assert (base(ids) - expected).abs().max() > 1e-4  # the adapters did change the model


def test_generate_evaluate_and_export_take_a_lora_run(
    monkeypatch: pytest.MonkeyPatch, lora_run: Path, base_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, text, err = run_main(monkeypatch, ["generate", "--run", str(lora_run), "--prompt", "note", "--max-new-tokens", "8", "--temperature", "0"])
    assert code == 0, err
    assert text == "note" + greedy_text(load_run_model(lora_run), "note", 8) + "\n"
    code, text, err = run_main(monkeypatch, ["export", "--run", str(lora_run), "--out", str(tmp_path / "hf")])
    assert code == 0, err
    ids = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()(ids).logits
    assert (theirs - unmerged_logits(lora_run, base_dir, ids)).abs().max() < 1e-4
    scores = []
    for source in (["--run", str(lora_run)], ["--hf-dir", str(tmp_path / "hf")]):
        out = tmp_path / f"eval-{len(scores)}.json"
        code, text, err = run_main(monkeypatch, ["evaluate", *source, "--task", "perplexity", "--data", str(corpus), "--out", str(out)])
        assert code == 0, err
        scores.append(json.loads(out.read_text())["loss"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('train.lora={"rank": 0}', "train.lora.rank: Input should be greater than 0"),
        ("train.lora.alpha=-2", "train.lora.alpha: Input should be greater than 0"),
        ('train.lora={"targets": ["blocks.*.attn.c_attn"]}', "train.lora.targets pattern 'blocks.*.attn.c_attn' matches no linear layer of this model"),
    ],
)
def test_bad_lora_settings_exit_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, base_dir: Path, corpus: Path, tmp_path: Path, setting: str, message: str
) -> None:
    code, _, err = run_main(monkeypatch, ["train", "--init-from", str(base_dir), *fast(corpus, tmp_path, setting)])
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_lora_on_a_resume_of_a_plain_run_and_merging_or_exporting_its_adapter_are_refused(
    monkeypatch: pytest.MonkeyPatch, base_dir: Path, corpus: Path, tmp_path: Path
) -> None:
    code, text, err = run_main(monkeypatch, ["train", "--init-from", str(base_dir), *fast(corpus, tmp_path, "run.name=plain", "train.max_steps=1")])
    assert code == 0, text + err
    plain = tmp_path / "plain"
    code, _, err = run_main(monkeypatch, ["--resume", str(plain), "--set", "train.lora.rank=4", "--set", "train.max_steps=2"])
    assert code == 2
    assert f"cannot resume {plain} with a different config: train.lora differ from the stored config.json" in err
    code, _, err = run_main(monkeypatch, ["merge-lora", "--run", str(plain), "--out", str(tmp_path / "m")])
    assert code == 2
    assert f"{plain} is not a LoRA run (step_000001 holds no adapter.safetensors); its checkpoints are whole models already" in err
    assert not (tmp_path / "m").exists()
    code, _, err = run_main(monkeypatch, ["export", "--run", str(plain), "--out", str(tmp_path / "a"), "--adapter"])
    assert code == 2
    assert f"--adapter: {plain} (step_000001) is not a LoRA checkpoint (no adapter.safetensors); export it without --adapter" in err
