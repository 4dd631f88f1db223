"""What `main.py generate` and `main.py chat` run: a trained model loaded for use, and a chat.

A model comes from a gptkit run directory (its latest checkpoint, tokenizer and
sampling settings from its config.json) or from a Hugging Face GPT-2 folder
(GPT-2's tokenizer, temperature 0.8 with top-k 50). Each also comes with an
example prompt that fits what the model was trained on, for the demo page. Anything missing or not
fitting raises a `GptkitError` whose message says which file and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptkit.dtypes import torch_dtype
from gptkit.errors import CheckpointError, GptkitError
from gptkit.generation.generate import stream_text
from gptkit.generation.samplers import Sampler, build_samplers, sampler_specs
from gptkit.kernels import accelerate
from gptkit.model.gpt import GPTModel
from gptkit.plugins import default_registry
from gptkit.training.checkpoint import latest_checkpoint, load_run_model

# What a Hugging Face folder gets when no sampler option is given: the trainer's default.
# The trainer's default chain (config.py's sampling.samplers) without its repetition penalty:
# that is there for small, briefly trained models, which repeat their commonest token;
# OpenAI's GPT-2 does not need it, and Hugging Face's own defaults have none.
HF_DEFAULT_SAMPLERS: list[dict[str, Any]] = [{"name": "temperature", "value": 0.8}, {"name": "top_k", "k": 50}]
DEFAULT_MAX_NEW_TOKENS = 200
# Example prompts: the default corpus is the Python standard library, so a run trained on it
# is shown Python; OpenAI's GPT-2 learnt English web pages.
STDLIB_EXAMPLE_PROMPT = "def fibonacci(n):"
HF_EXAMPLE_PROMPT = "The meaning of life is"
EXAMPLE_PROMPT_CHARS = 80  # a line from the user's own data is cut here


@dataclass
class LoadedModel:
    model: GPTModel
    tokenizer: Any
    samplers: list[Any]  # the source's own sampler chain, as specs
    max_new_tokens: int
    description: str = ""
    prompt: str = ""  # an example prompt that fits the training data ("" when none is known)


def example_prompt(stored: dict[str, Any]) -> str:
    """A prompt for a run's demo: its `sampling.prompt`, else one from its data source.

    The default source (no `data.path`) is the standard library: a Python prompt. A
    local file, folder or glob gives the first non-blank line of its first file; a URL
    is not fetched again to serve a model, and a source that is gone gives none ("").
    """
    prompt = (stored.get("sampling") or {}).get("prompt") or ""
    if prompt:
        return str(prompt)
    path = (stored.get("data") or {}).get("path")
    if path is None:
        return STDLIB_EXAMPLE_PROMPT
    if str(path).startswith(("http://", "https://")):
        return ""
    from gptkit.data.corpus import resolve_source

    try:
        first = resolve_source(str(path))[0]
        with first.open("rb") as f:
            head = f.read(4096).decode("utf-8", errors="ignore")
    except (GptkitError, OSError, IndexError):
        return ""
    line = next((line.rstrip() for line in head.splitlines() if line.strip()), "")
    return line[:EXAMPLE_PROMPT_CHARS]


def load_run(run_dir: str | Path) -> LoadedModel:
    """A run directory's latest checkpoint with the tokenizer and sampling of its config.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    model = load_run_model(run_dir)  # checks config.json and finds the latest checkpoint
    checkpoint = latest_checkpoint(run_dir)
    stored = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    sampling = stored.get("sampling") or {}
    tokenizer = default_registry().create("tokenizer", (stored.get("data") or {}).get("tokenizer") or "gpt2")
    return LoadedModel(
        model, tokenizer,
        samplers=sampling.get("samplers") or list(HF_DEFAULT_SAMPLERS),
        max_new_tokens=sampling.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS,
        description=f"{run_dir} ({checkpoint.name})",
        prompt=example_prompt(stored),
    )


def load_hf(directory: str | Path) -> LoadedModel:
    """A Hugging Face GPT-2 checkpoint folder, with GPT-2's tokenizer."""
    from gptkit.data.tokenizer import Tokenizer
    from gptkit.interop.hf_checkpoint import import_hf

    model = import_hf(Path(directory))
    return LoadedModel(
        model, Tokenizer(), list(HF_DEFAULT_SAMPLERS), DEFAULT_MAX_NEW_TOKENS, f"{directory} (Hugging Face)", prompt=HF_EXAMPLE_PROMPT,
    )


def load_model(
    run_dir: str | Path | None = None,
    hf_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    kernels: bool = True,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """From exactly one of `run_dir` and `hf_dir`, in eval mode, `dtype` and on `device`.

    `kernels`: gptkit's CPU speed paths (`gptkit.kernels`), for a model on the CPU.
    """
    if (run_dir is None) == (hf_dir is None):
        raise ValueError("give exactly one of run_dir and hf_dir")
    loaded = load_run(run_dir) if run_dir is not None else load_hf(hf_dir)  # type: ignore[arg-type]
    if loaded.model.cfg.vocab_size < loaded.tokenizer.vocab_size:
        raise CheckpointError(
            f"{loaded.description}: the model has {loaded.model.cfg.vocab_size} token ids but its tokenizer "
            f"has {loaded.tokenizer.vocab_size}; they do not belong together"
        )
    try:
        loaded.model.to(device=device, dtype=dtype).eval()
    except (RuntimeError, AssertionError) as err:  # a device torch does not know, or was not built for
        raise GptkitError(f"cannot use device {str(device)!r}: {str(err).splitlines()[0]}") from None
    if kernels:
        # Decoding streams every weight once per token: huge pages stream them ~6% faster.
        accelerate(loaded.model, inference=True)
    return loaded


@dataclass
class Session:
    """What one `generate` or `chat` command works with."""

    loaded: LoadedModel
    samplers: list[Sampler]
    max_new_tokens: int
    generator: torch.Generator | None
    compile: bool = False  # generate through torch.compile (see gptkit.generation.compiled)


def open_session(options: Any) -> Session:
    """Model, sampler chain and generator from parsed command-line options (an argparse Namespace).

    Sampler options replace the source's own chain as a whole; without any, the
    run's `sampling.samplers` (or, for a Hugging Face folder, temperature 0.8 and
    top-k 50) apply. They are checked before the model is loaded, so a bad value
    fails at once. `--compile` runs the model through torch.compile.
    """
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        raise GptkitError(f"--max-new-tokens must be at least 1, got {options.max_new_tokens}")
    specs = sampler_specs(
        temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
        min_p=options.min_p, repetition_penalty=options.repetition_penalty,
    )
    samplers = build_samplers(specs) if specs else None
    loaded = load_model(options.run, options.hf_dir, torch_dtype(options.dtype))
    generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
    return Session(
        loaded,
        samplers if samplers is not None else build_samplers(loaded.samplers),
        options.max_new_tokens or loaded.max_new_tokens,
        generator,
        compile=bool(getattr(options, "compile", False)),
    )


@dataclass
class Chat:
    """A conversation as alternating "User:" / "Assistant:" lines, kept within the context window.

    Each exchange is kept as token ids; a prompt is the newest exchanges that fit
    in the window after leaving room for the reply, then the new user line. The
    oldest exchanges are dropped whole, so the model never sees half a turn.
    """

    model: GPTModel
    tokenizer: Any
    samplers: Sequence[Sampler]
    max_new_tokens: int
    stop: Sequence[str] = ()
    generator: torch.Generator | None = None
    exchanges: list[list[int]] = field(default_factory=list)
    compile: bool | str = False

    USER = "User:"
    ASSISTANT = "Assistant:"

    @property
    def budget(self) -> int:
        """Prompt tokens allowed: the window less room for the reply (at most half of it)."""
        window = self.model.cfg.context_length
        return window - min(self.max_new_tokens, window // 2)

    def prompt_ids(self, line: str) -> list[int]:
        ids = self.tokenizer.encode(f"{self.USER} {line}\n{self.ASSISTANT}")[-self.budget :]
        for exchange in reversed(self.exchanges):
            if len(ids) + len(exchange) > self.budget:
                break
            ids = exchange + ids
        return ids

    def reply(self, line: str) -> Iterator[str]:
        """Stream the assistant's answer to `line`, then remember the exchange."""
        stop = [f"\n{self.USER}", *self.stop]
        pieces: list[str] = []
        prompt = self.prompt_ids(line)
        for piece in stream_text(
            self.model, self.tokenizer, prompt, self.max_new_tokens, self.samplers, stop=stop, generator=self.generator,
            compile=self.compile,
        ):
            pieces.append(piece)
            yield piece
        answer = "".join(pieces).rstrip("\n")
        self.exchanges.append(self.tokenizer.encode(f"{self.USER} {line}\n{self.ASSISTANT}{answer}\n"))
