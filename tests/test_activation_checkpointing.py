"""run.activation_checkpointing: the same gradients and losses, blocks recomputed in the backward pass.

Each comparison is against the same model without checkpointing, run the plain way;
that a checkpointed block really is recomputed is seen by counting its feed-forward's
calls (twice a training step when checkpointed, once otherwise).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo
import torch.distributed as tdist
from conftest import REPO_ROOT, subprocess_env
from rich.console import Console
from torch._dynamo.utils import counters

import config as run_config
import main
from gptkit import ConfigError, GPTModel, ModelConfig, hookimpl
from gptkit.data.dataset import prepare_dataset
from gptkit.data.tokenizer import Tokenizer
from gptkit.kernels import accelerate
from gptkit.kernels.bf16_attention import CPUAttention
from gptkit.plugins import default_registry
from gptkit.training.activation_checkpointing import (
    apply_activation_checkpointing,
    is_checkpointed,
)
from gptkit.training.checkpoint import read_tensors
from trainer import Trainer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

VOCAB, WINDOW = 97, 16


def tiny_model(every: int, kernels: bool = False, drop_rate: float = 0.2) -> GPTModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, emb_dim=32, n_heads=4, n_layers=4, context_length=WINDOW, drop_rate=drop_rate)
    model = GPTModel(cfg)
    if kernels:
        accelerate(model)
    apply_activation_checkpointing(model, every)
    return model.train()


def feed_forward_calls(model: GPTModel) -> list[int]:
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.ff.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def step(model: torch.nn.Module, params: torch.nn.Module, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward with dropout drawn from seed 5; the loss and every gradient."""
    ids = torch.randint(0, VOCAB, (3, WINDOW), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        _, loss = model(ids, ids.roll(-1, 1), keep_logits=False)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in params.named_parameters()}


@pytest.mark.parametrize("kernels", [False, True], ids=["plain", "kernels"])
@pytest.mark.parametrize(("every", "chosen"), [(1, [0, 1, 2, 3]), (2, [0, 2])])
def test_float32_gradients_are_identical_with_dropout(every: int, chosen: list[int], kernels: bool) -> None:
    plain_loss, plain_grads = step(reference := tiny_model(0, kernels), reference)
    model = tiny_model(every, kernels)
    assert [i for i, b in enumerate(model.blocks) if is_checkpointed(b)] == chosen
    calls = feed_forward_calls(model)
    loss, grads = step(model, model)
    assert calls == [2 if i in chosen else 1 for i in range(4)]  # recomputed in the backward pass
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.equal(grads[name], grad), name
    # Dropout drew masks (the recomputation had to replay them): without it the loss differs.
    assert not torch.equal(step(reference.eval(), reference)[0], plain_loss)


def test_bf16_autocast_with_the_cpu_attention_kernel_matches() -> None:
    reference, model = tiny_model(0, kernels=True), tiny_model(1, kernels=True)
    assert isinstance(model.blocks[0].att, CPUAttention)
    plain_loss, plain_grads = step(reference, reference, torch.bfloat16)
    loss, grads = step(model, model, torch.bfloat16)
    torch.testing.assert_close(loss, plain_loss, rtol=1.6e-2, atol=1e-5)  # bf16's 8-bit mantissa
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1.6e-2, atol=1e-5, msg=name)


def test_evaluation_and_no_grad_run_the_plain_forward() -> None:
    model, reference = tiny_model(1), tiny_model(0)
    calls = feed_forward_calls(model)
    ids = torch.randint(0, VOCAB, (2, WINDOW), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), reference.eval()(ids))
    model.train()
    with torch.no_grad():
        model(ids)
    assert calls == [2, 2, 2, 2]  # once per forward: nothing kept for a backward pass, nothing recomputed
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_compiled_model_traces_the_checkpoint_in_one_graph() -> None:
    # aot_eager runs AOTAutograd's joint graph (where the recomputation is planned) without inductor's C++.
    torch._dynamo.reset()
    counters.clear()
    reference, model = tiny_model(0, drop_rate=0.0), tiny_model(2, drop_rate=0.0)
    plain_loss, plain_grads = step(reference, reference)
    loss, grads = step(torch.compile(model, backend="aot_eager"), model)
    assert counters["stats"]["unique_graphs"] == 1  # no graph break around the checkpointed blocks
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_inductor_compiled_gradients_match_eager() -> None:
    torch._dynamo.reset()
    reference, model = tiny_model(0, kernels=True, drop_rate=0.0), tiny_model(1, kernels=True, drop_rate=0.0)
    plain_loss, plain_grads = step(reference, reference)
    loss, grads = step(torch.compile(model), model)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# --- through the Trainer ------------------------------------------------------------------------

TINY = [
    "model.emb_dim=32", "model.n_heads=2", "model.n_layers=3", "model.context_length=32", "model.drop_rate=0.1",
    "train.batch_size=4", "train.max_steps=4", "train.eval_every=2", "train.eval_batches=2", "run.dtype=float32",
    "train.callbacks=[]", "run.device=cpu",
]


class Losses:
    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []

    @hookimpl
    def gptkit_step_end(self, trainer, metrics) -> None:
        self.train.append(metrics.loss)

    @hookimpl
    def gptkit_evaluate(self, trainer, metrics) -> None:
        self.val.append(metrics.val_loss)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}\n" for i in range(600)))
    return path


def fit(corpus: Path, run_dir: Path, *extra: str) -> tuple[Trainer, Losses]:
    cfg = run_config.load_run_config(overrides=[*TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", *extra])
    tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    losses = Losses()
    trainer = Trainer(cfg, run_dir, data, tokenizer, default_registry(), extra_callbacks=[losses])
    trainer.fit()
    return trainer, losses


def test_trainer_losses_are_identical_with_and_without(corpus: Path, tmp_path: Path) -> None:
    _, plain = fit(corpus, tmp_path / "plain")
    trainer, every = fit(corpus, tmp_path / "every", "run.activation_checkpointing=true")
    _, second = fit(corpus, tmp_path / "second", "run.activation_checkpointing=2")
    assert [is_checkpointed(b) for b in trainer.model.blocks] == [True, True, True]
    assert len(plain.train) == 4 and every.train == plain.train and second.train == plain.train
    assert every.val == plain.val and second.val == plain.val
    # The weights they end with are saved under the same names, with the same values.
    a, b = fit_checkpoint(corpus, tmp_path / "a"), fit_checkpoint(corpus, tmp_path / "b", "run.activation_checkpointing=1")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if not k.startswith("rng."))


def fit_checkpoint(corpus: Path, run_dir: Path, *extra: str) -> dict[str, torch.Tensor]:
    trainer, _ = fit(corpus, run_dir, "train.max_steps=2", *extra)
    return read_tensors(trainer.save_checkpoint() / "model.safetensors")


def test_under_ddp_the_losses_are_the_same(corpus: Path, tmp_path: Path) -> None:
    _, plain = fit(corpus, tmp_path / "plain")
    tdist.init_process_group("gloo", store=tdist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        trainer, ddp = fit(corpus, tmp_path / "ddp", "run.activation_checkpointing=2")
        assert isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
        assert [is_checkpointed(b) for b in trainer.model.blocks] == [True, False, True]
    finally:
        tdist.destroy_process_group()
    assert ddp.train == pytest.approx(plain.train, rel=1e-6) and ddp.val == pytest.approx(plain.val, rel=1e-6)


def main_losses(corpus: Path, name: str, processes: int, *extra: str) -> list[float]:
    """The training losses of `python main.py` (under torchrun with several processes) as metrics.jsonl has them."""
    runs = corpus.parent / "runs"
    sets = [part for item in [*TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}",
                              f"run.out_dir={runs}", f"run.name={name}", 'train.callbacks=["metrics"]', *extra]
            for part in ("--set", item)]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    done = subprocess.run([sys.executable, *launcher, str(REPO_ROOT / "main.py"), *sets], cwd=corpus.parent,
                          env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["type"] == "train"]


def test_fsdp_on_two_processes_trains_like_one_without_checkpointing(corpus: Path) -> None:
    # Batch 2 on each of two processes is the one process's batch 4; dropout off, as each process draws its own masks.
    plain = main_losses(corpus, "one", 1, "model.drop_rate=0")
    sharded = main_losses(corpus, "fsdp", 2, "model.drop_rate=0", "train.batch_size=2", "run.parallel=fsdp",
                          "run.activation_checkpointing=1")
    assert len(plain) == 4 and sharded == pytest.approx(plain, rel=1e-5)


# --- bad values ---------------------------------------------------------------------------------


def run_main(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    buffer = io.StringIO()
    monkeypatch.setattr(main, "err_console", Console(file=buffer, width=1000, no_color=True))
    return main.run(list(argv)), buffer.getvalue()


def test_negative_or_more_than_the_blocks_is_refused(monkeypatch: pytest.MonkeyPatch, corpus: Path, tmp_path: Path) -> None:
    code, err = run_main(monkeypatch, "config", "--set", "run.activation_checkpointing=-1")
    assert (code, err) == (2, "error: invalid config:\nrun.activation_checkpointing: Input should be greater than or equal to 0\n")
    args = [f"{key}={value}" for key, value in (("data.path", corpus), ("data.cache_dir", corpus.parent / "cache"),
                                                ("run.out_dir", tmp_path), ("run.name", "r"))]
    sets = [part for item in [*TINY, *args, "run.activation_checkpointing=4"] for part in ("--set", item)]
    code, err = run_main(monkeypatch, *sets)
    assert (code, err) == (2, "error: run.activation_checkpointing=4 does not fit the model's 3 blocks; "
                              "use 0 (off), 1 (every block) or k from 2 to 3 (every k-th block)\n")
    assert not (tmp_path / "r").exists()  # a failed start leaves no run directory behind
    with pytest.raises(ConfigError, match="needs a model with a list of blocks; Linear has none"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2), 1)
