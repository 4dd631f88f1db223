"""LoRA: the LoRALinear block, wrapping a model's linears, LoRA runs' checkpoints, resume and merging.

The base in the training tests is a tiny random GPT-2 written by `transformers` itself, so
"the base weights are unchanged" is checked against the bytes of its safetensors file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_hf_gpt2
from safetensors import safe_open
from test_trainer import Recorder, StopAt

import main
from commands.options import resolve_config
from gptkit import GPTModel, LoRALinear, accelerate, model_preset
from gptkit.data.dataset import prepare_dataset
from gptkit.data.tokenizer import Tokenizer
from gptkit.errors import CheckpointError, ConfigError
from gptkit.interop.hf_convert import from_hf_state_dict
from gptkit.plugins import default_registry
from gptkit.training.checkpoint import latest_checkpoint, load_run_model
from gptkit.training.lora import LoRASettings, base_sha256, merge_lora, wrap_lora
from trainer import Trainer

hf = pytest.importorskip("transformers")

HF_SHAPE = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 50257}
ALL_LINEARS = ("blocks.*.att.qkv", "blocks.*.att.out_proj", "blocks.*.ff.fc1", "blocks.*.ff.fc2")
FAST = [
    "train.batch_size=4", "train.eval_every=3", "train.eval_batches=2", "run.dtype=float32",
    "train.lr=1e-2", "train.min_lr=1e-3", 'train.scheduler={"name": "cosine", "warmup_steps": 2}',
]


def tiny(**overrides: object) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(model_preset("cpu-small", emb_dim=32, n_heads=2, n_layers=2, context_length=16, vocab_size=97, **overrides)).eval()


def settings(*targets: str, rank: int = 4) -> LoRASettings:
    return LoRASettings(rank=rank, alpha=8.0, dropout=0.0, targets=targets or ALL_LINEARS)


def randomize_adapters(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(0, 0.05)  # about what a short finetune leaves


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_hf_gpt2(tmp_path_factory, HF_SHAPE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        (folder / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(60)))
    return folder


def make_trainer(corpus: Path, base_dir: Path, run_dir: Path, extra: list[str], resume: Path | None = None) -> tuple[Trainer, Recorder]:
    given = [
        *FAST, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}",
        'train.lora={"rank": 4, "alpha": 8, "dropout": 0.1}', *extra,
    ]
    argv = main.with_command(["--init-from", str(base_dir), *[a for item in given for a in ("--set", item)]])
    cfg = resolve_config(main.build_parser().parse_args(argv), default_registry())
    tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    recorder = Recorder()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, run_dir, data, tokenizer, default_registry(), resume_from=resume, extra_callbacks=[recorder])
    return trainer, recorder


# --- the block and the wrapping -------------------------------------------------------


def test_a_fresh_adapter_leaves_the_logits_exactly_the_base_models() -> None:
    model, ids = tiny(), torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        before = model(ids)
        wrap_lora(model, settings())
        assert torch.equal(model(ids), before)  # B = 0: not close, equal


def test_each_wrapped_linear_trains_rank_times_d_in_plus_d_out() -> None:
    model = tiny(weight_tying=False)
    total = sum(p.numel() for p in model.parameters())
    names = wrap_lora(model, settings(*ALL_LINEARS, "out_head", rank=3))
    emb, hidden, vocab = 32, 4 * 32, 97
    # (d_in, d_out) of qkv, out_proj, fc1, fc2 per layer, and the head, written out by hand.
    shapes = [(emb, 3 * emb), (emb, emb), (emb, hidden), (hidden, emb)] * 2 + [(emb, vocab)]
    assert len(names) == 9
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == sum(3 * (d_in + d_out) for d_in, d_out in shapes)
    assert all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert sum(p.numel() for p in model.parameters()) == total + sum(trainable.values())


def test_an_unmatched_target_names_the_pattern_and_the_linears() -> None:
    with pytest.raises(ConfigError) as refused:
        wrap_lora(tiny(), settings("blocks.*.attn.c_attn"))
    assert str(refused.value) == (
        "train.lora.targets pattern 'blocks.*.attn.c_attn' matches no linear layer of this model; its 9 linears are "
        "named like: blocks.0.att.qkv, blocks.0.att.out_proj, blocks.0.ff.fc1, blocks.0.ff.fc2, blocks.1.att.qkv, "
        "blocks.1.att.out_proj, blocks.1.ff.fc1, blocks.1.ff.fc2, ... (blocks.N.* for layer N)"
    )


def test_a_tied_head_is_refused_as_a_target() -> None:
    with pytest.raises(ConfigError, match="'out_head' shares its weight with the token embedding"):
        wrap_lora(tiny(), settings("out_head"))


def test_plugin_linears_are_wrapped_too() -> None:
    model = tiny(ffn="swiglu", norm="rmsnorm")
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".ff." in n]
    names = wrap_lora(model, settings("blocks.*.ff.*"))
    assert names == linears and len(names) == 6  # SwiGLU's three linears per layer


def test_kernels_on_and_off_give_the_same_logits_and_merging_keeps_them() -> None:
    plain, fast, ids = tiny(weight_tying=False), tiny(weight_tying=False), torch.randint(0, 97, (2, 16))
    for model in (plain, fast):
        torch.manual_seed(1)
        wrap_lora(model, settings(*ALL_LINEARS, "out_head"))
        randomize_adapters(model)
    assert accelerate(fast)
    assert type(fast.blocks[0].att.qkv.base).__name__ == "OneDNNLinear"  # the kernel reached the base inside
    with torch.no_grad():
        expected = plain(ids)
        assert (fast(ids) - expected).abs().max() < 1e-5
        loss_plain, loss_fast = plain(ids[:, :-1], ids[:, 1:])[1], fast.train()(ids[:, :-1], ids[:, 1:], keep_logits=False)[1]
        assert abs(loss_plain.item() - loss_fast.item()) < 1e-5  # the fused loss steps aside for an adapted head
        merged = merge_lora(plain)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert (merged(ids) - expected).abs().max() < 1e-5


# --- LoRA runs ---------------------------------------------------------------------------


def test_training_changes_only_the_adapters_and_gives_them_alone_optimizer_state(corpus: Path, base_dir: Path, tmp_path: Path) -> None:
    trainer, rec = make_trainer(corpus, base_dir, tmp_path / "run", ["train.max_steps=3", 'train.callbacks=["checkpoint"]'])
    trainer.fit()
    assert rec.losses[3] < rec.losses[1]
    on_disk = from_hf_state_dict(_hf_tensors(base_dir), trainer.model.cfg)
    base = {n.replace(".base.", "."): p for n, p in trainer.model.state_dict().items() if ".lora_" not in n}
    assert on_disk.keys() <= base.keys()
    assert all(torch.equal(base[name], tensor) for name, tensor in on_disk.items())  # bit for bit
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 2  # A and B of qkv and out_proj in two layers
    state = trainer.optimizer.state_dict()["state"]
    assert len(state) == len(trainable)
    assert sum(isinstance(v, torch.Tensor) and v.dim() > 0 for s in state.values() for v in s.values()) == 2 * len(trainable)
    x, y = next(iter(trainer.val_batches))
    trainer.model(x, y)[1].backward()
    assert all(p.grad is None for p in trainer.model.parameters() if not p.requires_grad)  # no gradient buffer
    assert all(p.grad is not None for p in trainable)


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is no mapping


def test_an_adapter_checkpoint_holds_the_adapters_alone_and_names_its_base(corpus: Path, base_dir: Path, tmp_path: Path) -> None:
    trainer, _ = make_trainer(corpus, base_dir, tmp_path / "run", ["train.max_steps=1", 'train.callbacks=["checkpoint"]'])
    trainer.fit()
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert sorted(p.name for p in checkpoint.iterdir()) == ["adapter.safetensors", "optimizer.safetensors", "trainer.json"]
    with safe_open(str(checkpoint / "adapter.safetensors"), framework="pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert keys == sorted(f"blocks.{i}.att.{m}.lora_{x}" for i in range(2) for m in ("qkv", "out_proj") for x in "AB")
    base = GPTModel(trainer.model.cfg)
    base.load_state_dict(from_hf_state_dict(_hf_tensors(base_dir), trainer.model.cfg), strict=False)
    assert meta["base_weights_sha256"] == base_sha256(base)
    # 4 * (32 + 96) + 4 * (32 + 32) numbers per layer, float32, two layers, plus the header.
    assert 2 * 4 * (4 * 128 + 4 * 64) < (checkpoint / "adapter.safetensors").stat().st_size < 2 * 4 * (4 * 128 + 4 * 64) + 2000


def test_resume_of_a_lora_run_gives_identical_losses(corpus: Path, base_dir: Path, tmp_path: Path) -> None:
    straight, rec_straight = make_trainer(corpus, base_dir, tmp_path / "a", ["train.max_steps=6", "train.callbacks=[]"])
    straight.fit()
    first, rec_first = make_trainer(corpus, base_dir, tmp_path / "b", ["train.max_steps=6", 'train.callbacks=["checkpoint"]'])
    first.hooks.register(StopAt(3))
    first.fit()
    checkpoint = latest_checkpoint(tmp_path / "b")
    second, rec_second = make_trainer(corpus, base_dir, tmp_path / "b", ["train.max_steps=6", 'train.callbacks=["checkpoint"]'], resume=checkpoint)
    second.fit()
    assert sorted(rec_straight.losses) == list(range(1, 7))
    assert {**rec_first.losses, **rec_second.losses} == rec_straight.losses  # float for float


def test_an_adapter_on_another_base_names_both_hashes(corpus: Path, base_dir: Path, tmp_path: Path) -> None:
    trainer, _ = make_trainer(corpus, base_dir, tmp_path / "run", ["train.max_steps=1", 'train.callbacks=["checkpoint"]'])
    trainer.fit()
    (tmp_path / "run" / "config.json").write_text(json.dumps({
        "model": trainer.model.cfg.model_dump(mode="json"), "train": {"lora": trainer.cfg.train.lora.model_dump(), "init_from": str(tmp_path / "other")},
    }))
    torch.manual_seed(5)
    hf.GPT2LMHeadModel(hf.GPT2Config(**HF_SHAPE)).save_pretrained(tmp_path / "other")
    other = GPTModel(trainer.model.cfg)
    other.load_state_dict(from_hf_state_dict(_hf_tensors(tmp_path / "other"), trainer.model.cfg), strict=False)
    with pytest.raises(CheckpointError) as refused:
        load_run_model(tmp_path / "run")
    adapter = latest_checkpoint(tmp_path / "run") / "adapter.safetensors"
    assert str(refused.value) == (
        f"{adapter} was trained on base weights with SHA-256 {trainer.base_sha256}, but the base weights loaded hash to "
        f"{base_sha256(other)}; load it onto the base it was trained on (train.init_from of its run)"
    )
    assert trainer.base_sha256 != base_sha256(other)


def test_lora_without_a_base_or_beside_train_trainable_is_refused() -> None:
    from config import load_run_config

    with pytest.raises(ConfigError, match=r"train: train.lora adapts trained weights: set train.init_from \(or --init-from\) to the base model"):
        load_run_config(overrides=["train.lora.rank=4"])
    with pytest.raises(ConfigError, match="train: train.lora trains the adapters alone; leave train.trainable and train.freeze unset"):
        load_run_config(overrides=["train.lora.rank=4", "train.init_from=gpt2", 'train.trainable=["out_head.*"]'])


def test_only_trainable_parameters_get_optimizer_state_and_gradients() -> None:
    from config import load_run_config
    from gptkit.training.freezing import apply_trainable
    from trainer import make_optimizer

    model = tiny().train()
    apply_trainable(model, ["blocks.1.*"], [])
    optimizer = make_optimizer(model, load_run_config(), torch.device("cpu"))
    ids = torch.randint(0, 97, (2, 16))
    model(ids[:, :-1], ids[:, 1:])[1].backward()
    optimizer.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 12  # layer 1: two norms (weight, bias), qkv weight, out_proj, fc1, fc2 (weight, bias)
    assert len(optimizer.state) == len(trainable) and all("exp_avg" in optimizer.state[p] for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
