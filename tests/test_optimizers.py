"""Optimizers by name: parameter-group rules, SGD and Muon against hand computations, exact resume for each, a plugin's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import config as run_config
from gptkit import GptkitError, build_registry
from gptkit.data.dataset import prepare_dataset
from gptkit.data.tokenizer import Tokenizer
from gptkit.plugins import default_registry
from gptkit.training.checkpoint import latest_checkpoint
from gptkit.training.muon import Muon, orthogonalize
from gptkit.training.optimizers import build_optimizer
from tests.test_trainer import TINY, StopAt, corpus, make_trainer
from trainer import Trainer

__all__ = ["corpus"]  # a fixture from test_trainer, used by name

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """Named like a GPTModel's parts: an embedding, a block with a matrix and a bias, a norm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tok_emb = nn.Embedding(10, 6)
        self.blocks = nn.ModuleList([nn.Linear(6, 4)])
        self.final_norm = nn.LayerNorm(4)


def optimizer_for(model: nn.Module, spec: object, lr: float = 0.1, sharded: bool = False) -> torch.optim.Optimizer:
    return build_optimizer(default_registry(), spec, model, lr, CPU, sharded)


def fake_grads(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_group_rules_pick_by_name_and_dimensions_first_match_wins() -> None:
    model = Tiny()
    spec = {"name": "adamw", "weight_decay": 0.2, "groups": [
        {"names": ["blocks.*"], "ndim": [2], "lr_scale": 0.5},
        {"names": ["*"], "ndim": [1], "weight_decay": 0.0},
    ]}
    groups = optimizer_for(model, spec).param_groups
    members = [[n for n, p in model.named_parameters() if any(p is q for q in g["params"])] for g in groups]
    assert members == [["tok_emb.weight"], ["blocks.0.weight"], ["blocks.0.bias", "final_norm.weight", "final_norm.bias"]]
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(0.2, 1.0), (0.2, 0.5), (0.0, 1.0)]


def test_frozen_parameters_get_no_optimizer_state() -> None:
    model = Tiny()
    model.tok_emb.weight.requires_grad_(False)
    optimizer = optimizer_for(model, "adamw")
    fake_grads(model, 1)
    model.tok_emb.weight.grad = None
    optimizer.step()
    assert len(optimizer.state) == 4  # the four trainable tensors, not the embedding
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])


def test_a_rule_that_matches_nothing_is_named() -> None:
    with pytest.raises(GptkitError) as err:
        optimizer_for(Tiny(), {"name": "adamw", "groups": [{"names": ["blocks.*.lora_*"]}]})
    assert str(err.value).startswith("train.optimizer.groups[0] (names ['blocks.*.lora_*']) matches no parameter; parameter names look like: tok_emb.weight")


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_the_update_by_hand(nesterov: bool) -> None:
    model, lr, mu = Tiny(), 0.1, 0.9
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = optimizer_for(model, {"name": "sgd", "momentum": mu, "nesterov": nesterov}, lr=lr)
    grads = []
    for seed in (1, 2):
        fake_grads(model, seed)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.step()
    for name, p in model.named_parameters():
        g1, g2 = grads[0][name], grads[1][name]
        buf1, buf2 = g1, mu * g1 + g2  # torch's momentum: the first buffer is the gradient itself
        step1, step2 = (g1 + mu * buf1, g2 + mu * buf2) if nesterov else (buf1, buf2)
        torch.testing.assert_close(p.detach(), start[name] - lr * step1 - lr * step2, rtol=0, atol=1e-6)


def test_newton_schulz_keeps_the_singular_vectors_and_evens_the_singular_values() -> None:
    torch.manual_seed(0)
    for shape in [(32, 48), (64, 16)]:
        g = torch.randn(shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))  # badly conditioned
        o = orthogonalize(g, steps=5)
        u, s, vh = torch.linalg.svd(g, full_matrices=False)
        inner = u.T @ o @ vh.T  # diagonal when o shares g's singular vectors
        diag = torch.diagonal(inner)
        assert (inner - torch.diag(diag)).abs().max() < 0.05
        assert diag.min() > 0.5 and diag.max() < 1.25, diag  # the quintic's band around 1, not exactly 1
        assert s.max() / s.min() > 50  # from a spread of 50x and more to under 2.5x


def test_muon_updates_matrices_as_written_and_the_rest_as_torch_adamw() -> None:
    model, reference = Tiny(), Tiny()
    lr, mu = 0.01, 0.95
    optimizer = optimizer_for(model, "muon", lr=lr)
    by_name = dict(model.named_parameters())
    use_muon = {n for n, p in by_name.items() for g in optimizer.param_groups if g["use_muon"] for q in g["params"] if p is q}
    assert use_muon == {"blocks.0.weight"}
    # torch's own AdamW over the others, with the groups Muon gives them (decay on the embedding only)
    ref_params = dict(reference.named_parameters())
    adam = torch.optim.AdamW([
        {"params": [ref_params["tok_emb.weight"]], "weight_decay": 0.1},
        {"params": [ref_params[n] for n in ("blocks.0.bias", "final_norm.weight", "final_norm.bias")], "weight_decay": 0.0},
    ], lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    w0 = by_name["blocks.0.weight"].detach().clone()
    buf = torch.zeros_like(w0)
    for seed in (1, 2, 3):
        fake_grads(model, seed)
        fake_grads(reference, seed)
        g = by_name["blocks.0.weight"].grad.clone()
        optimizer.step()
        adam.step()
        buf = mu * buf + (1 - mu) * g
        nesterov = (1 - mu) * g + mu * buf
        w0 = w0 - lr * 10.0 * max(1.0, 4 / 6) ** 0.5 * orthogonalize(nesterov, 5)  # lr_scale 10, no decay
    torch.testing.assert_close(by_name["blocks.0.weight"].detach(), w0, rtol=0, atol=1e-6)
    for name in ("tok_emb.weight", "blocks.0.bias", "final_norm.weight", "final_norm.bias"):
        torch.testing.assert_close(by_name[name].detach(), ref_params[name].detach(), rtol=0, atol=1e-6)


def test_muon_updates_same_shaped_matrices_together_as_each_alone() -> None:
    # Shapes interleaved (a, b, a, tall a): Muon stacks the same-shaped ones; each must get its own update.
    torch.manual_seed(0)
    shapes = [(4, 6), (6, 6), (4, 6), (6, 4)]
    matrices = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    before = [m.detach().clone() for m in matrices]
    optimizer = Muon([{"params": matrices, "use_muon": True}], lr=0.02, momentum=0.9, nesterov=False)
    for m in matrices:
        m.grad = torch.randn(m.shape)
    optimizer.step()
    for m, w, shape in zip(matrices, before, shapes, strict=True):
        # First step, no Nesterov: the momentum buffer is (1 - 0.9) * grad.
        expected = w - 0.02 * max(1.0, shape[0] / shape[1]) ** 0.5 * orthogonalize(0.1 * m.grad, 5)
        torch.testing.assert_close(m.detach(), expected, rtol=0, atol=1e-6)
    stack = torch.randn(3, 6, 4)
    assert torch.equal(orthogonalize(stack, 5), torch.stack([orthogonalize(one, 5) for one in stack]))


def test_muon_refuses_a_vector_in_its_group_and_sharded_weights() -> None:
    with pytest.raises(GptkitError, match=r"groups\[0\] gives Muon parameters that are not 2-D matrices; add ndim = \[2\]"):
        optimizer_for(Tiny(), {"name": "muon", "groups": [{"names": ["blocks.*"], "optimizer": "muon"}]})
    with pytest.raises(GptkitError, match="run.parallel=fsdp gives each process a shard"):
        optimizer_for(Tiny(), "muon", sharded=True)
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        Muon([{"params": [nn.Parameter(torch.ones(3))], "use_muon": True}], lr=0.1)


def test_adamw_and_sgd_refuse_a_rule_choosing_an_update() -> None:
    with pytest.raises(GptkitError, match="optimizer 'sgd' has one update"):
        optimizer_for(Tiny(), {"name": "sgd", "groups": [{"ndim": [2], "optimizer": "muon"}]})


def test_bad_optimizer_parameters_name_the_key() -> None:
    for override, message in [
        ("train.optimizer.betas=[0.9, 1.5]", "train.optimizer.betas: betas must each be in [0, 1), got [0.9, 1.5]"),
        ("train.optimizer.weight_decay=\"lots\"", "train.optimizer.weight_decay: Input should be a valid number"),
        ("train.optimizer=adam", "unknown optimizer 'adam' (did you mean 'adamw'?)"),
    ]:
        with pytest.raises(GptkitError) as err:
            run_config.load_run_config(overrides=[override])
        assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("spec", ["adamw", '{"name": "sgd", "nesterov": true}', "muon"])
def test_each_optimizer_resumes_exactly(corpus: Path, tmp_path: Path, spec: str) -> None:
    chosen = f"train.optimizer={spec}"
    straight, rec_straight = make_trainer(corpus, tmp_path / "a", [chosen, "train.max_steps=6", "train.callbacks=[]"])
    straight.fit()
    first, rec_first = make_trainer(corpus, tmp_path / "b", [chosen, "train.max_steps=6", 'train.callbacks=["checkpoint"]'])
    first.hooks.register(StopAt(3))
    first.fit()
    second, rec_second = make_trainer(corpus, tmp_path / "b", [chosen, "train.max_steps=6", 'train.callbacks=["checkpoint"]'],
                                      resume=latest_checkpoint(tmp_path / "b"))
    second.fit()
    assert {**rec_first.losses, **rec_second.losses} == rec_straight.losses
    assert len(rec_straight.losses) == 6 and all(math.isfinite(v) for v in rec_straight.losses.values())
    # Each group's lr is the schedule's times its own multiple (Muon's matrices: 10x).
    lr = straight.schedule(5)
    assert sorted({g["lr"] / lr for g in straight.optimizer.param_groups}) == pytest.approx(
        [1.0, 10.0] if spec == "muon" else [1.0])


SIGN_DESCENT_PLUGIN = """
import torch
from gptkit import NoParams, hookimpl


class SignDescent(torch.optim.Optimizer):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])

def sign_descent(named, lr, device, sharded):
    return SignDescent([p for _, p in named if p.requires_grad], {"lr": lr})

@hookimpl
def gptkit_register_components(registry):
    registry.register("optimizer", "sign_descent", sign_descent, params=NoParams, description="the gradient's sign times lr")
"""


def test_an_optimizer_from_a_plugin_is_chosen_by_name(corpus: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "sign_descent.py").write_text(SIGN_DESCENT_PLUGIN)
    registry = build_registry(plugin_dirs=[plugins], entry_points=False)
    raw = run_config.build_raw_config(overrides=[
        *TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", "train.max_steps=2", "train.callbacks=[]",
        "train.optimizer=sign_descent", "train.grad_clip=null", "model.drop_rate=0",
    ])
    cfg = run_config.RunConfig.model_validate(raw, context={"registry": registry})
    tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    trainer = Trainer(cfg, tmp_path / "run", data, tokenizer, registry)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    moved = torch.cat([(p.detach() - before[n]).abs().flatten() for n, p in trainer.model.named_parameters()])
    # Each element moved by lr in each of the two steps, forwards or back: 2 lr, 0, or the difference.
    lr1, lr2 = trainer.schedule(0), trainer.schedule(1)
    assert float(moved.max()) == pytest.approx(lr1 + lr2, rel=1e-4)
    assert type(trainer.optimizer).__name__ == "SignDescent"


def test_the_modern_recipe_is_the_default_run_with_three_registry_names_swapped(corpus: Path, tmp_path: Path) -> None:
    # bench/recipes.py's comparison is fair only if nothing but these names differs from `python main.py`.
    recipe = run_config.load_run_config("configs/modern-small.toml").model_dump()
    default = run_config.load_run_config().model_dump()
    changed = {
        f"{section}.{key}": value for section in ("model", "train", "data", "run")
        for key, value in recipe[section].items() if value != default[section][key]
    }
    assert {k: v if isinstance(v, str) else v["name"] for k, v in changed.items()} == {
        "model.position": "rope", "model.norm": "rmsnorm", "train.optimizer": "muon",
    }
    cfg = run_config.load_run_config(
        "configs/modern-small.toml",
        overrides=[*TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", "train.max_steps=2", "train.callbacks=[]"],
    )
    data = prepare_dataset(cfg.data.path, Tokenizer(), Path(cfg.data.cache_dir), cfg.data.val_fraction)
    trainer = Trainer(cfg, tmp_path, data, Tokenizer(), default_registry())
    assert isinstance(trainer.optimizer, Muon) and trainer.fit().steps == 2
