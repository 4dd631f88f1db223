"""The training loop: exact resume, budgets, accumulation, NaN policy, third-party callbacks."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import config as run_config
from gptkit import build_registry, hookimpl
from gptkit.data.dataset import prepare_dataset
from gptkit.data.tokenizer import Tokenizer
from gptkit.plugins import default_registry
from gptkit.training import precision
from gptkit.training.checkpoint import latest_checkpoint, list_checkpoints
from gptkit.training.precision import cpu_has_bf16_matmul
from trainer import Trainer, TrainingStopped

TINY = [
    "model.emb_dim=32", "model.n_heads=2", "model.n_layers=2", "model.context_length=32",
    "model.drop_rate=0.1",  # dropout on, so resuming must also restore the RNG
    "train.batch_size=4", "train.eval_every=3", "train.eval_batches=2", "run.dtype=float32",
    "train.lr=1e-3", "train.min_lr=1e-4", 'train.scheduler={"name": "cosine", "warmup_steps": 2}',
]


class Recorder:
    """A third-party callback: records what the trainer reports."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.evals: dict[int, float] = {}
        self.ended = 0

    @hookimpl
    def gptkit_step_end(self, trainer, metrics) -> None:
        self.losses[metrics.step] = metrics.loss

    @hookimpl
    def gptkit_evaluate(self, trainer, metrics) -> None:
        self.evals[metrics.step] = metrics.val_loss

    @hookimpl
    def gptkit_train_end(self, trainer, summary) -> None:
        self.ended += 1


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def gptkit_step_end(self, trainer, metrics) -> None:
        if metrics.step == self.step:
            trainer.request_stop("test interruption")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        text = "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(60))
        (folder / f"mod{i}.py").write_text(text)
    return folder


def make_trainer(corpus: Path, run_dir: Path, extra: list[str], resume: Path | None = None) -> tuple[Trainer, Recorder]:
    cfg = run_config.load_run_config(overrides=[*TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", *extra])
    tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    recorder = Recorder()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, run_dir, data, tokenizer, default_registry(), resume_from=resume, extra_callbacks=[recorder])
    return trainer, recorder


def test_resume_gives_identical_losses(corpus: Path, tmp_path: Path) -> None:
    straight, rec_straight = make_trainer(corpus, tmp_path / "a", ["train.max_steps=8", 'train.callbacks=[]'])
    straight.fit()

    # The same config, interrupted after step 4 (as Ctrl-C would), then resumed.
    first, rec_first = make_trainer(corpus, tmp_path / "b", ["train.max_steps=8", 'train.callbacks=["checkpoint"]'])
    first.hooks.register(StopAt(4))
    first.fit()
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint.name == "step_000004"
    second, rec_second = make_trainer(corpus, tmp_path / "b", ["train.max_steps=8", 'train.callbacks=["checkpoint"]'], resume=checkpoint)
    second.fit()

    assert sorted(rec_straight.losses) == list(range(1, 9))
    resumed = {**rec_first.losses, **rec_second.losses}
    assert resumed == rec_straight.losses  # exact equality, not approx
    assert {**rec_first.evals, **rec_second.evals}.items() >= rec_straight.evals.items()
    assert second.state.tokens_seen == straight.state.tokens_seen == 8 * 4 * 32


def test_grad_accumulation_equals_one_big_batch(corpus: Path, tmp_path: Path) -> None:
    trainer, rec = make_trainer(corpus, tmp_path, ["train.max_steps=1", "train.grad_accum_steps=3", "model.drop_rate=0", "train.callbacks=[]"])
    # By hand: the same three micro-batches as one batch of 12, one AdamW step.
    reference = copy.deepcopy(trainer.model)
    xs, ys = zip(*(trainer.train_batches.batch(0, micro) for micro in range(3)))
    params = list(reference.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=trainer.schedule(0), betas=(0.9, 0.95),
    )
    _, loss = reference(torch.cat(xs), torch.cat(ys), keep_logits=False)  # the loss path train_step takes
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    optimizer.step()

    summary = trainer.fit()
    assert summary.tokens_seen == 3 * 4 * 32
    assert rec.losses[1] == pytest.approx(loss.item(), abs=1e-5)
    for (name, mine), theirs in zip(trainer.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs, atol=2e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    assert norm.item() > 0


def test_budget_by_tokens_and_time(corpus: Path, tmp_path: Path) -> None:
    trainer, rec = make_trainer(corpus, tmp_path / "tok", ["train.max_steps=null", "train.max_tokens=1000", "train.scheduler=constant", "train.callbacks=[]"])
    summary = trainer.fit()
    assert summary.steps == math.ceil(1000 / (4 * 32)) and "max_tokens" in summary.stop_reason
    trainer, rec = make_trainer(corpus, tmp_path / "time", ["train.max_steps=null", "train.max_time=0.5", "train.scheduler=constant", "train.callbacks=[]"])
    summary = trainer.fit()
    assert summary.elapsed >= 0.5 and "max_time" in summary.stop_reason and rec.ended == 1


def test_checkpoints_keep_last_k(corpus: Path, tmp_path: Path) -> None:
    trainer, _ = make_trainer(corpus, tmp_path, ["train.max_steps=7", 'train.callbacks=[{"name": "checkpoint", "every": 2, "keep_last": 2}]'])
    trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000006", "step_000007"]
    meta = json.loads((tmp_path / "checkpoints" / "step_000007" / "trainer.json").read_text())
    assert meta["state"]["step"] == 7 and meta["config"]["model"]["emb_dim"] == 32


def test_nan_loss_stops_with_hint_or_skips(corpus: Path, tmp_path: Path) -> None:
    trainer, _ = make_trainer(corpus, tmp_path / "stop", ["train.max_steps=3", "train.callbacks=[]"])
    with torch.no_grad():
        trainer.model.final_norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingStopped, match=r"became nan at step 1.*lower train.lr"):
        trainer.fit()
    trainer, rec = make_trainer(corpus, tmp_path / "skip", ["train.max_steps=3", "train.callbacks=[]", "train.nan_policy=skip"])
    with torch.no_grad():
        trainer.model.final_norm.weight.fill_(float("nan"))
    trainer.fit()
    assert sorted(rec.losses) == [1, 2, 3] and all(math.isnan(v) for v in rec.losses.values())


def test_weight_decay_only_on_2d_weights(corpus: Path, tmp_path: Path) -> None:
    trainer, _ = make_trainer(corpus, tmp_path, ["train.max_steps=1", "train.callbacks=[]"])
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert decay["betas"] == (0.9, 0.95)


def test_gpt2_124m_recipe_runs_two_steps(corpus: Path, tmp_path: Path) -> None:
    cfg = run_config.load_run_config(
        "configs/gpt2-124m.toml",
        overrides=[
            f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", "train.batch_size=1",
            "train.grad_accum_steps=1", "train.max_steps=2", "train.eval_batches=1", "run.compile=false",
            "train.callbacks=[]",
        ],
    )
    assert (cfg.model.emb_dim, cfg.model.n_layers, cfg.model.n_heads, cfg.model.context_length) == (768, 12, 12, 1024)
    assert cfg.train.lr == 6e-4 and cfg.train.min_lr == 6e-5 and cfg.train.grad_clip == 1.0
    tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    recorder = Recorder()
    trainer = Trainer(cfg, tmp_path, data, tokenizer, default_registry(), extra_callbacks=[recorder])
    assert trainer.model.num_parameters() == 124_439_808
    assert trainer.amp_dtype == (torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32)  # see below
    summary = trainer.fit()
    assert summary.steps == 2 and all(math.isfinite(v) for v in recorder.losses.values())
    assert recorder.losses[1] == pytest.approx(math.log(50257), abs=0.5)  # ~uniform at init


def cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):  # x86, Arm
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's flags from Linux's /proc/cpuinfo")
def test_bf16_matmul_check_agrees_with_the_cpu_flags() -> None:
    flags = cpuinfo_flags()
    assert cpu_has_bf16_matmul() == ({"avx512bw", "avx512vl", "avx512dq"} <= flags or "bf16" in flags)


@pytest.mark.parametrize("has_kernels", [True, False])
def test_bf16_on_a_cpu_without_bf16_matrix_kernels_trains_in_float32_and_says_so(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_kernels: bool
) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16_matmul", lambda: has_kernels)
    trainer, rec = make_trainer(corpus, tmp_path, ["run.dtype=bfloat16", "train.max_steps=1", "train.callbacks=[]", "model.drop_rate=0"])
    with trainer.autocast():
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
    if has_kernels:
        assert (trainer.amp_dtype, autocast, trainer.precision_note) == (torch.bfloat16, torch.bfloat16, None)
        return
    assert (trainer.amp_dtype, autocast) == (torch.float32, False)
    assert trainer.precision_note == (
        "run.dtype=bfloat16 trains in float32 on this CPU: it has no bfloat16 matrix kernels (AVX-512 or Arm BF16), "
        "so bfloat16 steps would run tens of times slower than float32; set run.dtype=float32 to say so in the config"
    )
    # The step is a float32 one: the same loss as the float32 model's own forward pass.
    reference = copy.deepcopy(trainer.model)
    x, y = trainer.train_batches.batch(0, 0)
    _, loss = reference(x, y, keep_logits=False)
    trainer.fit()
    assert rec.losses[1] == pytest.approx(loss.item(), abs=1e-6)


def test_callback_from_a_plugin_is_selected_by_name(corpus: Path, tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "count_steps.py").write_text(
        "from gptkit import ComponentParams, hookimpl\n"
        "class P(ComponentParams):\n"
        "    label: str = 'x'\n"
        "class CountSteps:\n"
        "    def __init__(self, context, label):\n"
        "        self.path = context.run_dir / f'{label}.txt'\n"
        "    @hookimpl\n"
        "    def gptkit_step_end(self, trainer, metrics):\n"
        "        with open(self.path, 'a') as f:\n"
        "            f.write(f'{metrics.step}\\n')\n"
        "@hookimpl\n"
        "def gptkit_register_components(registry):\n"
        "    registry.register('callback', 'count_steps', CountSteps, params=P)\n"
    )
    registry = build_registry(plugin_dirs=[plugins], entry_points=False)
    raw = run_config.build_raw_config(overrides=[
        *TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", "train.max_steps=3",
        'train.callbacks=[{"name": "count_steps", "label": "steps"}]',
    ])
    cfg = run_config.RunConfig.model_validate(raw, context={"registry": registry})
    tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    Trainer(cfg, tmp_path, data, tokenizer, registry).fit()
    assert (tmp_path / "steps.txt").read_text().split() == ["1", "2", "3"]


def test_mfu_uses_the_configured_peak(corpus: Path, tmp_path: Path) -> None:
    trainer, _ = make_trainer(corpus, tmp_path, ["train.max_steps=1", "train.callbacks=[]", "run.peak_flops=1e12"])
    seen = []

    class Grab:
        @hookimpl
        def gptkit_step_end(self, trainer, metrics) -> None:
            seen.append(metrics)

    trainer.hooks.register(Grab())
    trainer.fit()
    (m,) = seen
    linear = sum(mod.weight.numel() for mod in trainer.model.modules() if isinstance(mod, torch.nn.Linear))
    by_hand = m.tokens_per_sec * (6 * linear + 12 * 2 * 32 * 32) / 1e12
    assert m.mfu == pytest.approx(by_hand)


def test_compiled_model_checkpoints_carry_no_prefix(corpus: Path, tmp_path: Path) -> None:
    from gptkit.training.checkpoint import (
        clean_state_dict,
        load_model_weights,
        save_checkpoint,
    )

    trainer, _ = make_trainer(corpus, tmp_path, ["train.max_steps=1", "train.callbacks=[]"])
    compiled = torch.compile(trainer.model)  # wrapping is enough: its state_dict has the prefix
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert not any("_orig_mod" in k for k in clean_state_dict(compiled))
    path = save_checkpoint(tmp_path, compiled, trainer.optimizer, trainer.state)
    fresh, _ = make_trainer(corpus, tmp_path / "fresh", ["train.max_steps=1", "train.callbacks=[]", "run.seed=7"])
    load_model_weights(fresh.model, path / "model.safetensors")
    for (name, a), b in zip(trainer.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name
