"""gptkit on a GPU: the same training steps as on CPU, the CUDA branches taken, the CPU kernels left out.

Every test here is marked `cuda` and skipped, with the reason, where torch sees
no CUDA device; `python -m pytest -m cuda` runs just these. Each compares the GPU
with something independent of it: the same steps of the same weights on CPU,
the same tokens from the same weights, or the same weights read back.

Models are tiny (2 layers, 64 wide, context 32) so the set runs in well under
3 minutes on one GPU; the longest part is compiling one model with inductor.

Tolerances, each measured on CPU for these 4 steps against float32 (see the constants):
losses fall by 1.2-2.7% a step here, so a skipped or repeated step, another batch
or other weights miss every tolerance below by far.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as tdist
from conftest import randomize_weights
from test_server import (  # fixtures: an in-process server on 127.0.0.1, GPT-2's tokenizer
    start,
    tokenizer,
)
from torch import nn

import config as run_config
import gptkit.kernels.bf16_attention as attention_module
import gptkit.kernels.cpu_allocator as cpu_allocator_module
import gptkit.kernels.onednn_linear as linear_module
from gptkit import GPTModel, ModelConfig, accelerate, default_registry, hookimpl
from gptkit.data.dataset import prepare_dataset
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.generate import generate_tokens
from gptkit.generation.samplers import Greedy
from gptkit.kernels import is_accelerated
from gptkit.kernels.huge_pages import move_to_huge_pages
from gptkit.serving.server import CompletionServer
from gptkit.training import distributed
from gptkit.training.checkpoint import load_checkpoint
from trainer import KNOWN_PEAK_FLOPS, Trainer

__all__ = ["start", "tokenizer"]  # fixtures from test_server, used by name

HAS_CUDA = torch.cuda.is_available()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason=f"needs a CUDA GPU; torch {torch.__version__} sees none (torch.cuda.is_available() is False)"),
]

# float32 on GPU and CPU differ only in summation order (cuBLAS against oneDNN; no TF32,
# torch's default), about 1e-6 of the loss; 4 Adam steps keep that well under 1e-5. bf16
# autocast moves these losses by up to 2.6e-4 from float32 and float16 by up to 2.5e-5
# (measured on CPU), so a GPU run that silently computed in bf16 would fail this one.
FP32_RTOL = 1e-5
# bf16 against the same steps in bf16 on CPU: each side is 1-3e-4 from float32, rounded by
# different kernels (flash attention and cuBLAS against gptkit's CPU bf16 attention and
# oneDNN), so they may be up to about twice that apart; 2e-3 leaves a margin and is still
# a tenth of one step's change of the loss.
BF16_RTOL = 2e-3
# float16 against float32 on CPU: float16 has 3 more mantissa bits than bf16; measured 2.5e-5.
FP16_RTOL = 2e-4
# Compiled against eager, both on the GPU: inductor fuses and reorders float32 arithmetic
# (the CPU test of compile, tests/test_compile.py, uses the same 1e-4).
COMPILE_RTOL = 1e-4
STEPS = 4

TINY = [
    "model.emb_dim=64", "model.n_heads=2", "model.n_layers=2", "model.context_length=32",
    "model.drop_rate=0.0",  # dropout masks come from each device's own generator: they could not match
    "train.batch_size=4", f"train.max_steps={STEPS}", f"train.eval_every={STEPS}", "train.eval_batches=2",
    # constant after one warm-up step: a shorter run has the same lr at each step as a longer one
    "train.lr=1e-3", "train.min_lr=1e-4", 'train.scheduler={"name": "constant", "warmup_steps": 1}',
    "train.callbacks=[]",
]


class Losses:
    """Records the trainer's reported losses and step metrics."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []
        self.mfu: list[float | None] = []

    @hookimpl
    def gptkit_step_end(self, trainer: Any, metrics: Any) -> None:
        self.train.append(metrics.loss)
        self.mfu.append(metrics.mfu)

    @hookimpl
    def gptkit_evaluate(self, trainer: Any, metrics: Any) -> None:
        self.val.append(metrics.val_loss)


@dataclass
class Run:
    trainer: Trainer
    losses: Losses = field(default_factory=Losses)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(6):
        (folder / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(60)))
    return folder


def make_trainer(corpus: Path, run_dir: Path, device: str, dtype: str, extra: Sequence[str] = (), resume: Path | None = None) -> Run:
    cfg = run_config.load_run_config(overrides=[
        *TINY, f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}", f"run.device={device}", f"run.dtype={dtype}", *extra,
    ])
    text_tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, text_tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    run_dir.mkdir(parents=True, exist_ok=True)
    losses = Losses()
    trainer = Trainer(cfg, run_dir, data, text_tokenizer, default_registry(), resume_from=resume, extra_callbacks=[losses])
    return Run(trainer, losses)


def train(corpus: Path, run_dir: Path, device: str, dtype: str, extra: Sequence[str] = ()) -> Run:
    run = make_trainer(corpus, run_dir, device, dtype, extra)
    run.trainer.fit()
    return run


@pytest.fixture(scope="module")
def cpu_fp32(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train(corpus, tmp_path_factory.mktemp("cpu_fp32"), "cpu", "float32")


@pytest.fixture(scope="module")
def cuda_fp32(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train(corpus, tmp_path_factory.mktemp("cuda_fp32"), "cuda", "float32")


def assert_losses_close(got: Sequence[float], want: Sequence[float], rtol: float) -> None:
    assert len(got) == len(want) > 0
    torch.testing.assert_close(list(got), list(want), rtol=rtol, atol=0)


def assert_steps_visible(losses: Sequence[float], rtol: float) -> None:
    """The tolerance must be far below what one step changes, or a skipped step could pass."""
    changes = [abs(b - a) / abs(a) for a, b in zip(losses, losses[1:])]
    assert min(changes) > 5 * rtol, (changes, rtol)


def on_cuda(module: nn.Module) -> bool:
    return all(p.device.type == "cuda" for p in module.parameters())


# --- the same steps as on CPU, in each precision ---------------------------------------------


def test_float32_steps_match_cpu_and_take_the_cuda_branches(cuda_fp32: Run, cpu_fp32: Run) -> None:
    trainer = cuda_fp32.trainer
    assert trainer.device.type == "cuda" and on_cuda(trainer.model)
    # Fused AdamW: one kernel per tensor, asked for by make_optimizer on CUDA, not assumed.
    assert trainer.optimizer.defaults["fused"] is True
    assert all(group["fused"] is True and not group["foreach"] for group in trainer.optimizer.param_groups)
    assert all(s["exp_avg"].is_cuda for s in trainer.optimizer.state.values())
    assert not trainer.scaler.is_enabled()  # float32 needs no loss scaling
    with trainer.autocast():
        assert not torch.is_autocast_enabled("cuda")
    assert_losses_close(cuda_fp32.losses.train, cpu_fp32.losses.train, FP32_RTOL)
    assert_steps_visible(cpu_fp32.losses.train, FP32_RTOL)
    gpu = torch.cuda.get_device_name()
    known = next((v for k, v in KNOWN_PEAK_FLOPS.items() if k in gpu), None)
    assert trainer.peak_flops == known  # the table's figure for a GPU it names, None for others
    assert all((m is not None) == (known is not None) for m in cuda_fp32.losses.mfu)


def test_evaluation_runs_on_cuda_and_matches_cpu(cuda_fp32: Run, cpu_fp32: Run) -> None:
    assert_losses_close(cuda_fp32.losses.val, cpu_fp32.losses.val, FP32_RTOL)
    trainer = cuda_fp32.trainer
    seen: list[tuple[str, bool]] = []

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append((args[0].device.type, module.training))

    handle = trainer.model.register_forward_pre_hook(record)
    try:
        again = trainer.evaluate()
    finally:
        handle.remove()
    assert seen and all(where == ("cuda", False) for where in seen)  # GPU inputs, eval mode
    assert trainer.model.training  # evaluate puts the model back in training mode
    assert again == pytest.approx(cuda_fp32.losses.val[-1], rel=FP32_RTOL)


def test_bf16_autocast_matches_cpu_bf16_through_flash_or_memory_efficient_attention(
    corpus: Path, tmp_path: Path, cpu_fp32: Run
) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    cpu = train(corpus, tmp_path / "cpu", "cpu", "bfloat16")
    run = make_trainer(corpus, tmp_path / "cuda", "cuda", "bfloat16")
    with run.trainer.autocast():
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
    assert not run.trainer.scaler.is_enabled()  # bf16 has float32's range: no scaler
    # Only these two backends allowed: if SDPA would fall back to its math kernel, it raises.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]), profile(activities=[ProfilerActivity.CPU]) as prof:
        run.trainer.fit()
    ops = {event.key for event in prof.key_averages()}
    fused = {f"aten::_scaled_dot_product_{kind}_attention{part}" for kind in ("flash", "efficient") for part in ("", "_backward")}
    assert ops & {o for o in fused if not o.endswith("_backward")}, sorted(o for o in ops if "attention" in o)
    assert ops & {o for o in fused if o.endswith("_backward")}, sorted(o for o in ops if "attention" in o)
    assert "aten::_scaled_dot_product_attention_math" not in ops
    assert_losses_close(run.losses.train, cpu.losses.train, BF16_RTOL)
    assert_losses_close(run.losses.val, cpu.losses.val, BF16_RTOL)
    assert_steps_visible(cpu_fp32.losses.train, BF16_RTOL)


def test_float16_with_the_grad_scaler_matches_cpu_float32(corpus: Path, tmp_path: Path, cpu_fp32: Run) -> None:
    run = make_trainer(corpus, tmp_path, "cuda", "float16")
    scaler = run.trainer.scaler
    assert scaler.is_enabled()  # the float16 branch: losses are scaled so small gradients survive
    initial = scaler.get_scale()
    run.trainer.fit()
    # No step was skipped for an overflow (scaled gradients here are ~1e4, below float16's
    # 65504), so the GPU took the very steps CPU took; the scale has not yet grown (every 2000 steps).
    assert scaler.get_scale() == initial
    assert run.trainer.optimizer.defaults["fused"] is True
    assert_losses_close(run.losses.train, cpu_fp32.losses.train, FP16_RTOL)
    assert_losses_close(run.losses.val, cpu_fp32.losses.val, FP16_RTOL)
    assert_steps_visible(cpu_fp32.losses.train, FP16_RTOL)


# --- torch.compile --------------------------------------------------------------------------


def test_compiled_training_matches_eager_and_its_checkpoint_loads_uncompiled(corpus: Path, tmp_path: Path, cuda_fp32: Run) -> None:
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    steps = 2  # each graph compiles once (training, then evaluation); more steps only cost time
    run = train(corpus, tmp_path, "cuda", "float32", ["run.compile=true", f"train.max_steps={steps}", f"train.eval_every={steps}"])
    trainer = run.trainer
    assert isinstance(trainer.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    assert counters["stats"]["unique_graphs"] > 0  # inductor compiled, not a silent eager fallback
    assert_losses_close(run.losses.train, cuda_fp32.losses.train[:steps], COMPILE_RTOL)

    path = trainer.save_checkpoint()
    x = torch.randint(0, trainer.cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = trainer.model.eval()(x.cuda())
        plain = GPTModel(trainer.cfg.model).cuda().eval()  # never compiled
        load_checkpoint(path, plain, restore_rng=False)
        assert torch.equal(plain(x.cuda()), want)  # the same weights, the same kernels
        on_cpu = GPTModel(trainer.cfg.model).eval()
        load_checkpoint(path, on_cpu, restore_rng=False)
        torch.testing.assert_close(on_cpu(x), want.cpu(), rtol=1e-4, atol=1e-4)


# --- generation and serving -----------------------------------------------------------------


def tiny_model(vocab_size: int, seed: int) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(ModelConfig(vocab_size=vocab_size, emb_dim=64, n_heads=2, n_layers=2, context_length=32))
    return randomize_weights(model, seed)  # type: ignore[return-value]


def test_kv_cache_greedy_generation_on_cuda_equals_cpu() -> None:
    cpu = tiny_model(97, seed=3)
    gpu = copy.deepcopy(cpu).cuda()
    # Two prompt lengths (two groups, two caches), and more tokens than the context window
    # holds, so the cache is also rebuilt from a sliding window.
    prompts = [[5, 17, 33], [2, 3, 5, 7, 11, 13]]

    def tokens(model: GPTModel, use_cache: bool = True) -> list[list[int]]:
        steps = generate_tokens(model, prompts, max_new_tokens=40, samplers=[Greedy()], use_cache=use_cache)
        return torch.cat(list(steps), dim=1).cpu().tolist()

    expected = tokens(cpu)
    assert tokens(gpu) == expected
    assert tokens(gpu, use_cache=False) == expected  # and the cache changes nothing on the GPU
    assert len({tuple(row) for row in expected}) == 2 and all(len(set(row)) > 3 for row in expected)  # not one token repeated




def complete(server: CompletionServer, body: dict[str, Any]) -> dict[str, Any]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=30)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        data = json.loads(reply.read())
        assert reply.status == 200, data
        return data
    finally:
        conn.close()


def test_server_runs_its_model_on_cuda_and_answers_as_on_cpu(start: Callable[[GPTModel], CompletionServer]) -> None:
    cpu_model = tiny_model(50257, seed=4)  # GPT-2's vocabulary: the server encodes with its tokenizer
    gpu_server = start(copy.deepcopy(cpu_model).cuda())
    cpu_server = start(cpu_model)
    assert gpu_server.service.device.type == "cuda" and on_cuda(gpu_server.service.model)
    greedy = {"prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0.0}
    gpu_reply = complete(gpu_server, greedy)
    assert gpu_reply["usage"]["completion_tokens"] > 0
    assert gpu_reply["choices"][0]["text"] == complete(cpu_server, greedy)["choices"][0]["text"]
    # Sampling draws from a generator on the GPU, seeded per request: the same seed, the same text.
    sampled = {"prompt": "import os", "max_tokens": 12, "temperature": 0.9, "top_k": 40, "seed": 7}
    assert complete(gpu_server, sampled)["choices"][0]["text"] == complete(gpu_server, sampled)["choices"][0]["text"]


# --- checkpoints across devices ---------------------------------------------------------------


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v.detach().cpu() for i, s in optimizer.state_dict()["state"].items() for k, v in s.items()}


def assert_same_training_state(a: Trainer, b: Trainer) -> None:
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x.cpu(), y.cpu()), name  # safetensors keep every bit
    sa, sb = optimizer_state(a.optimizer), optimizer_state(b.optimizer)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_written_on_cuda_loads_on_cpu_and_back(corpus: Path, tmp_path: Path, cuda_fp32: Run) -> None:
    gpu = make_trainer(corpus, tmp_path / "gpu", "cuda", "float32", ["train.max_steps=2"])
    gpu.trainer.fit()
    written_on_gpu = gpu.trainer.save_checkpoint()

    # On CPU: the GPU's weights and fused-AdamW state exactly, then one more step from there.
    cpu = make_trainer(corpus, tmp_path / "cpu", "cpu", "float32", ["train.max_steps=3"], resume=written_on_gpu)
    assert cpu.trainer.state.step == 2 and not on_cuda(cpu.trainer.model)
    assert_same_training_state(cpu.trainer, gpu.trainer)
    cpu.trainer.fit()
    # Step 3 from the GPU's state is step 3 of an uninterrupted GPU run, to float32 rounding.
    assert cpu.losses.train == pytest.approx(cuda_fp32.losses.train[2:3], rel=FP32_RTOL)
    written_on_cpu = cpu.trainer.save_checkpoint()

    # And back: a GPU trainer resumes the CPU's checkpoint, state on the GPU.
    back = make_trainer(corpus, tmp_path / "back", "cuda", "float32", resume=written_on_cpu)
    assert back.trainer.state.step == 3 and on_cuda(back.trainer.model)
    # Fused AdamW keeps all of its state on the parameters' device, its step counts too.
    assert all(t.is_cuda for s in back.trainer.optimizer.state.values() for t in s.values())
    assert_same_training_state(back.trainer, cpu.trainer)
    back.trainer.fit()
    assert back.losses.train == pytest.approx(cuda_fp32.losses.train[3:], rel=FP32_RTOL)


# --- NCCL -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nccl_ddp_with_one_process_trains_like_no_ddp(corpus: Path, tmp_path: Path, cuda_fp32: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    # What torchrun would set for one process on this machine; init_distributed reads it.
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    # Loopback only: the control group's gloo would otherwise look up this host's name.
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    assert not tdist.is_initialized()
    info = distributed.init_distributed("cuda")
    try:
        assert info.active and info.world_size == 1 and tdist.get_backend() == "nccl"
        run = make_trainer(corpus, tmp_path, "cuda", "float32")
        assert isinstance(run.trainer.train_model, nn.parallel.DistributedDataParallel)
        assert run.trainer.device == torch.device("cuda", 0)
        run.trainer.fit()
        # One process all-reduces its gradients with itself: the steps of a run without DDP.
        assert_losses_close(run.losses.train, cuda_fp32.losses.train, FP32_RTOL)
        assert_losses_close(run.losses.val, cuda_fp32.losses.val, FP32_RTOL)
    finally:
        distributed.shutdown_distributed()


# --- the CPU-only kernels stay off on CUDA --------------------------------------------------------


class Spy:
    """Wraps a function: calls it, and records each call's result."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.results: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.real(*args, **kwargs)
        self.results.append(result)
        return result


@pytest.fixture()
def spies(monkeypatch: pytest.MonkeyPatch) -> dict[str, Spy]:
    """Spies where the library looks each CPU path up (module globals, at call time)."""
    found = {
        "onednn gate": (linear_module, "use_onednn"),
        "onednn linear": (linear_module, "_onednn_linear"),
        "onednn matmul": (linear_module, "_matmul_t"),
        "bf16 attention": (attention_module, "bf16_causal_attention"),
        "malloc policy": (cpu_allocator_module, "set_retain_freed_memory"),
    }
    made = {}
    for label, (module, name) in found.items():
        made[label] = Spy(getattr(module, name))
        monkeypatch.setattr(module, name, made[label])
    return made


def exercise(corpus: Path, run_dir: Path, device: str) -> None:
    """A float32 step (oneDNN's case on CPU), a bf16 step (the bf16 attention's) and a cached generation."""
    train(corpus, run_dir / "fp32", device, "float32", ["train.max_steps=1", "train.eval_batches=1"])
    train(corpus, run_dir / "bf16", device, "bfloat16", ["train.max_steps=1", "train.eval_batches=1"])
    model = tiny_model(97, seed=5).to(device)
    list(generate_tokens(model, [[1, 2, 3]], max_new_tokens=4, samplers=[Greedy()]))


def test_cpu_kernels_stay_off_on_cuda(corpus: Path, tmp_path: Path, spies: dict[str, Spy]) -> None:
    # First on CPU, to show each spy sees its kernel where the kernel belongs.
    exercise(corpus, tmp_path / "cpu", "cpu")
    if linear_module.PREFER_ONEDNN:  # oneDNN is not taken on Intel CPUs (see gptkit/kernels/onednn_linear.py)
        assert True in spies["onednn gate"].results and spies["onednn linear"].results and spies["onednn matmul"].results
    assert spies["bf16 attention"].results
    assert spies["malloc policy"].results  # the Trainer's retain_freed_memory on CPU switches it
    for spy in spies.values():
        spy.results.clear()

    exercise(corpus, tmp_path / "cuda", "cuda")
    assert not any(spies["onednn gate"].results)  # gptkit.kernels.accelerate leaves a CUDA model plain
    for label in ("onednn linear", "onednn matmul", "bf16 attention", "malloc policy"):
        assert not spies[label].results, f"{label} ran on a CUDA run"

    x, w = torch.randn(4, 64, device="cuda"), torch.randn(8, 64, device="cuda")
    assert not linear_module.use_onednn(x, w)
    model = tiny_model(97, seed=6).cuda()
    assert accelerate(model) is False and not is_accelerated(model)  # the one switch does nothing off the CPU
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    assert move_to_huge_pages(model) is False  # huge pages are for CPU memory: nothing moved
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before and on_cuda(model)
