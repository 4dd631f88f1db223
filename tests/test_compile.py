"""torch.compile: training and evaluation match eager, checkpoints cross over, graphs stay bounded.

Inductor compiles C++ kernels, tens of seconds per graph on a small CPU, so only
the tests about numbers use it. Tests about how often torch compiles use the
"eager" backend: dynamo traces and guards exactly as it does for inductor (which
graphs get made does not depend on the backend) but runs the traced graph as is.
Graphs are counted with dynamo's own counter of graphs handed to a backend.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch._dynamo
from conftest import randomize_weights
from torch._dynamo.utils import counters

import config as run_config
import gptkit.generation.generate
import main
from gptkit import GPTModel, ModelConfig, accelerate, hookimpl
from gptkit.data.dataset import prepare_dataset
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.compiled import CompiledForward
from gptkit.generation.generate import generate_tokens, stream_text
from gptkit.generation.samplers import Greedy
from gptkit.plugins import default_registry
from gptkit.training.checkpoint import load_checkpoint, read_tensors, save_checkpoint
from gptkit.training.train_state import TrainState
from trainer import Trainer

WINDOW = 16


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    """Compiled graphs are cached per function across tests; each test counts its own."""
    torch._dynamo.reset()
    counters.clear()


def small_model(seed: int = 1) -> GPTModel:
    cfg = ModelConfig(vocab_size=97, emb_dim=32, n_heads=4, n_layers=2, context_length=WINDOW, weight_tying=False)
    return randomize_weights(GPTModel(cfg), seed)  # type: ignore[return-value]


# --- training, evaluation and checkpoints (inductor) -----------------------------------------


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


def train(corpus: Path, run_dir: Path, compile: bool) -> tuple[Trainer, Losses]:
    cfg = run_config.load_run_config(overrides=[
        "model.emb_dim=32", "model.n_heads=2", "model.n_layers=2", "model.context_length=32",
        "model.drop_rate=0.0",  # inductor draws dropout masks from its own generator: no match with eager
        "train.batch_size=4", "train.max_steps=3", "train.eval_every=3", "train.eval_batches=2",
        "train.callbacks=[]", "run.dtype=float32", "run.device=cpu", f"run.compile={str(compile).lower()}",
        f"data.path={corpus}", f"data.cache_dir={corpus.parent / 'cache'}",
    ])
    tokenizer = Tokenizer()
    data = prepare_dataset(cfg.data.path, tokenizer, Path(cfg.data.cache_dir), cfg.data.val_fraction)
    run_dir.mkdir(parents=True, exist_ok=True)
    losses = Losses()
    trainer = Trainer(cfg, run_dir, data, tokenizer, default_registry(), extra_callbacks=[losses])
    trainer.fit()
    trainer.save_checkpoint()
    return trainer, losses


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Trainer, Losses]]:
    """The same three training steps and one evaluation, eager and compiled (inductor)."""
    corpus = tmp_path_factory.mktemp("corpus")
    for i in range(4):
        (corpus / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(60)))
    torch._dynamo.reset()
    return {name: train(corpus, tmp_path_factory.mktemp(name), name == "compiled") for name in ("eager", "compiled")}


@pytest.mark.slow
def test_compiled_training_and_evaluation_match_eager(runs: dict[str, tuple[Trainer, Losses]]) -> None:
    (_, eager_losses), (compiled, compiled_losses) = runs["eager"], runs["compiled"]
    assert isinstance(compiled.forward_model, torch._dynamo.eval_frame.OptimizedModule)
    assert len(eager_losses.train) == 3 and len(eager_losses.val) == 1
    torch.testing.assert_close(compiled_losses.train, eager_losses.train, rtol=1e-4, atol=0)
    torch.testing.assert_close(compiled_losses.val, eager_losses.val, rtol=1e-4, atol=0)
    assert eager_losses.train[0] != eager_losses.train[-1], "the weights changed between steps"


@pytest.mark.slow
def test_checkpoints_cross_between_compiled_and_eager(runs: dict[str, tuple[Trainer, Losses]]) -> None:
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    for name, (trainer, _) in runs.items():
        keys = read_tensors(trainer.last_checkpoint / "model.safetensors")
        assert keys and not any("_orig_mod" in k for k in keys), name
    # Saved from the compiled run, loaded into a plain model: the very same weights.
    trainer = runs["compiled"][0]
    plain = GPTModel(trainer.cfg.model).eval()
    load_checkpoint(trainer.last_checkpoint, plain, restore_rng=False)
    trained = trainer.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in plain.state_dict().items())
    accelerate(plain)  # the trainer's model runs gptkit's CPU kernels (its layer norms in C): like with like
    with torch.no_grad():
        assert torch.equal(plain(x), trainer.model.eval()(x))
    # Saved from the eager run, loaded into a compiled model (whose own names carry the prefix).
    trainer = runs["eager"][0]
    wrapped = torch.compile(GPTModel(trainer.cfg.model).eval(), backend="eager")
    assert all(k.startswith("_orig_mod.") for k in wrapped.state_dict())
    load_checkpoint(trainer.last_checkpoint, wrapped, restore_rng=False)
    with torch.no_grad():
        # Eager float32 linears go through oneDNN, traced ones through F.linear: rounding differs.
        torch.testing.assert_close(wrapped(x), trainer.model.eval()(x), rtol=1e-5, atol=1e-5)


# --- how often torch compiles ("eager" backend) --------------------------------------------


def test_training_and_evaluation_forward_compile_a_bounded_number_of_graphs() -> None:
    """The trainer's `torch.compile(model)` over many lengths and batch sizes, training and evaluating."""
    model = GPTModel(ModelConfig(vocab_size=97, emb_dim=32, n_heads=2, n_layers=2, context_length=32))
    compiled = torch.compile(model, backend="eager")
    tokens = torch.Generator().manual_seed(0)

    def step(batch: int, length: int) -> None:
        x = torch.randint(0, 97, (batch, length), generator=tokens)
        if model.training:
            compiled(x, x)[1].backward()
        else:
            with torch.no_grad():
                compiled(x, x)

    warm_up = [(4, 32), (4, 24), (2, 32), (1, 32)]  # a new length, a short last batch, a batch of one
    later = [(4, 17), (4, 9), (3, 5), (4, 3), (2, 30), (4, 2), (1, 11)]
    for mode in ("train", "eval"):
        model.train(mode == "train")
        for batch, length in warm_up:
            step(batch, length)
    # Per mode: full-length, then any length and batch, then a batch of one (sizes 1 are specialised).
    bound = 2 * 3
    assert graphs() <= bound
    settled = graphs()
    for mode in ("train", "eval"):
        model.train(mode == "train")
        for batch, length in later:
            step(batch, length)
    assert graphs() == settled, "lengths and batch sizes seen after the warm-up compiled new graphs"


def test_compiled_generation_graphs_stay_bounded_over_prompts_and_steps() -> None:
    model = small_model()
    # Groups of one and of two rows, prompts of 1 to 16 tokens, 40 steps: the window fills and slides.
    prompt_sets = [
        [[5, 17, 3], [9, 9, 30, 2, 77, 1]],
        [[4], [8, 8], list(range(1, 17))],
        [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]],
        [[40, 41, 42, 43, 44, 45, 46, 47, 48], [3, 1], [7, 7]],
    ]
    for prompts in prompt_sets:
        expected = generate_rows(model, prompts, compile=False)
        assert generate_rows(model, prompts, compile="eager") == expected
    # A prompt of one token, a longer prompt, and a decode step; each for a batch of one and of more.
    assert graphs() <= 6


def generate_rows(model: GPTModel, prompts: list[list[int]], compile: bool | str) -> list[list[int]]:
    steps = list(generate_tokens(model, prompts, 40, [Greedy()], compile=compile))
    return torch.cat(steps, dim=1).tolist()


def test_past_the_recompile_limit_the_model_runs_eagerly() -> None:
    model = small_model()
    forward = CompiledForward(model, "eager", recompile_limit=1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch, length in [(2, 8), (1, 1), (1, 3), (3, 16), (2, 5)]:
            x = torch.randint(0, 97, (batch, length))
            torch.testing.assert_close(forward(x), model(x), rtol=1e-5, atol=1e-5)
    assert graphs() == 1


def test_a_backend_that_fails_falls_back_to_eager_with_one_warning() -> None:
    calls: list[int] = []

    def broken(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> None:
        calls.append(1)
        raise RuntimeError("no C++ compiler here")

    torch._dynamo.register_backend(broken, "gptkit_test_broken")
    model = small_model()
    prompts = [[5, 17, 3], [9, 9, 30, 2, 77, 1]]
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no C\+\+ compiler here\)"):
        out = generate_rows(model, prompts, compile="gptkit_test_broken")
    assert out == generate_rows(model, prompts, compile=False)
    generate_rows(model, prompts, compile="gptkit_test_broken")
    assert calls == [1], "a backend that failed is not tried again"


# --- compiled generation with inductor ---------------------------------------------------------


@pytest.mark.slow
def test_compiled_greedy_generation_equals_eager_token_for_token() -> None:
    model = small_model(3)
    prompts = [[5, 17, 3], [9, 9, 30, 2, 77, 1], [60, 2, 8, 8, 41, 5, 19, 23, 11]]
    expected = generate_rows(model, prompts, compile=False)
    assert generate_rows(model, prompts, compile=True) == expected
    assert len({t for row in expected for t in row}) > 5, "a near-constant output would prove little"
    # Three groups of one row, 40 steps each: one graph for the prompts, one for the steps.
    assert graphs() <= 2
    assert "".join(stream_text(model, ByteTokens(), [4, 5, 6], 12, [Greedy()], compile=True)) == "".join(
        stream_text(model, ByteTokens(), [4, 5, 6], 12, [Greedy()])
    )
    assert graphs() <= 2, "a second generation reuses the graphs"


class ByteTokens:
    """Just enough tokenizer for `stream_text`: token i is byte i (the model's 97 ids are ASCII-ish)."""

    eot_id = 96

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(ids)


# --- the command line ------------------------------------------------------------------------------


def test_generate_and_chat_pass_compile_through(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`--compile` reaches generation (here with the cheap "eager" backend) and changes no token."""
    cfg = run_config.load_run_config(overrides=[
        "model.emb_dim=32", "model.n_heads=2", "model.n_layers=1", "model.context_length=32", "model.weight_tying=false",
        'sampling.samplers=["greedy"]', "sampling.max_new_tokens=8",
    ])
    model = randomize_weights(GPTModel(cfg.model), 0)
    tmp_path.joinpath("config.json").write_text(cfg.model_dump_json())
    save_checkpoint(tmp_path, model, torch.optim.AdamW(model.parameters()), TrainState(step=1))
    backends: list[str] = []

    def cheap(model: torch.nn.Module, backend: str) -> CompiledForward:
        backends.append(backend)
        return CompiledForward(model, "eager")

    monkeypatch.setattr(gptkit.generation.generate, "CompiledForward", cheap)
    commands = {"generate": ["--prompt", "Once"], "chat": []}
    outputs = []
    for command, options in commands.items():
        for extra in ([], ["--compile"]):
            monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nagain\n"))
            assert main.run([command, "--run", str(tmp_path), *options, *extra]) == 0
            outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3]
    assert len(outputs[0]) > len("Once\n") and outputs[2].count("Assistant:") == 2
    assert backends == ["inductor"] * 3  # one generation, two chat replies
