"""Shared helpers for the core-library tests: the repository root and a clean subprocess environment."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist each worker already has a core of its own: intra-op threads on
# top of that only oversubscribe the CPU (the suite runs about twice as fast with one).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment without gptkit's own variables, plus `extra`.

    A wide ``COLUMNS`` keeps rich from wrapping table cells, so each component is
    one line of `main.py components` output.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPTKIT_") and k != "PYTHONPATH"}
    env.update({"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


# What a checkout must offer, and where each comes from, written out independently of the registry.
CHECKOUT_COMPONENTS = {
    ("norm", "layernorm"): "built-in",
    ("norm", "rmsnorm"): "plugins/rmsnorm.py",
    ("activation", "gelu"): "built-in",
    ("activation", "relu"): "plugins/activations.py",
    ("activation", "silu"): "plugins/activations.py",
    ("activation", "relu2"): "plugins/activations.py",
    ("attention", "mha"): "built-in",
    ("attention", "gqa"): "plugins/gqa.py",
    ("attention", "qk_norm"): "plugins/gqa.py",
    ("attention", "sliding_window"): "plugins/gqa.py",
    ("ffn", "mlp"): "built-in",
    ("ffn", "swiglu"): "plugins/swiglu.py",
    ("position", "learned"): "built-in",
    ("position", "none"): "built-in",
    ("position", "rope"): "plugins/rope.py",
    ("block", "pre_ln"): "built-in",
    ("head", "lm"): "built-in",
    ("head", "last_token"): "built-in",
    ("head", "mean_pool"): "built-in",
}


def save_tiny_hf_gpt2(tmp_path_factory: pytest.TempPathFactory, shape: dict[str, object]) -> Path:
    """A Hugging Face GPT-2 folder of random weights (seed 0) of `shape` (GPT2Config's keys), as a test's base model."""
    import transformers

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape)).save_pretrained(folder)
    return folder


def randomize_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights wide enough (N(0, 0.5); norm scales N(1, 0.1)) that greedy text varies from token to token."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = p.ndim == 1 and name.endswith("weight")
            p.normal_(1.0 if is_norm_scale else 0.0, 0.1 if is_norm_scale else 0.5, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module: tiny models gain nothing from more, runs compute
    alike bit for bit with subprocesses started with OMP_NUM_THREADS=1, and spinning
    threads cost a lot on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EOT = 256


class ByteTokenizer:
    """Token ids are the UTF-8 bytes, EOT is 256; counts its calls and the bytes it encoded, and can
    raise KeyboardInterrupt (what Ctrl-C raises) after `interrupt_after` calls."""

    name = "bytes"
    vocab_size = 257
    eot_id = EOT

    def __init__(self, interrupt_after: int | None = None) -> None:
        self.calls = 0
        self.encoded_bytes = 0
        self.interrupt_after = interrupt_after
        self._lock = threading.Lock()  # encode_batch runs on worker threads

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        with self._lock:
            self.calls += 1
            if self.interrupt_after is not None and self.calls > self.interrupt_after:
                raise KeyboardInterrupt  # what Ctrl-C raises
            out = [list(t.encode("utf-8")) for t in texts]
            self.encoded_bytes += sum(map(len, out))
        return out
