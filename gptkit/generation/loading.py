"""What `main.py generate` and `main.py chat` run: a trained model loaded for use (the chat itself is in chat.py).

A model comes from a gptkit run directory (its latest checkpoint, tokenizer and
sampling settings from its config.json) or from a Hugging Face GPT-2 folder
(GPT-2's tokenizer, temperature 0.8 with top-k 50). Each also comes with an
example prompt that fits what the model was trained on, for the demo page. A run
finetuned on instructions (`data.format = "instruction"`) also brings its prompt
style: the text its conversations were written in, which a chat must write too.
Anything missing or not fitting raises a `GptkitError` whose message says which
file and why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gptkit.data.learned_tokenizer import load_tokenizer_state
from gptkit.dtypes import torch_dtype
from gptkit.errors import CheckpointError, GptkitError
from gptkit.generation.samplers import Sampler, build_samplers, sampler_specs
from gptkit.kernels import accelerate, check_quantize, quantize_weights
from gptkit.model.gpt import GPTModel
from gptkit.plugins import default_registry
from gptkit.registry import split_spec
from gptkit.training.checkpoint import (
    latest_checkpoint,
    load_run_model,
    read_run_config,
)
from gptkit.training.run_components import missing_components_note

if TYPE_CHECKING:
    from gptkit.hookspecs import PromptStyle

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
    # How the run's instruction data was written (None: not instruction-tuned, or a Hugging Face
    # folder); `prompt_style_spec` is it as config.json stores it, {"name": ..., **params}.
    prompt_style: PromptStyle | None = None
    prompt_style_spec: dict[str, Any] | None = None


def example_prompt(stored: dict[str, Any]) -> str:
    """A prompt for a run's demo: its `sampling.prompt`, else one from its data source.

    The default source (no `data.path`) is the standard library: a Python prompt. A
    local file, folder or glob gives the first non-blank line of its first file; a URL
    is not fetched again to serve a model, and a source that is gone gives none ("").
    """
    prompt = (stored.get("sampling") or {}).get("prompt") or ""
    if prompt:
        return str(prompt)
    data = stored.get("data") or {}
    if data.get("format", "text") != "text":
        return ""  # the first line of a JSON or CSV file is a record, not a prompt
    path = data.get("path")
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
    refuse_classifier(run_dir, model)
    checkpoint = latest_checkpoint(run_dir)
    stored = read_run_config(run_dir)
    sampling = stored.get("sampling") if isinstance(stored.get("sampling"), dict) else {}
    data = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    tokenizer = load_tokenizer_state(run_component(run_dir, stored, "tokenizer", data.get("tokenizer") or "gpt2"), run_dir)
    style_spec: dict[str, Any] | None = None
    style = None
    if data.get("format") == "instruction":
        spec = data.get("prompt_style") or "alpaca"
        style = run_component(run_dir, stored, "prompt_style", spec)
        name, params = split_spec(spec)  # well formed: the style was built from it
        style_spec = {"name": name, **params}
    return LoadedModel(
        model, tokenizer,
        samplers=sampling.get("samplers") or list(HF_DEFAULT_SAMPLERS),
        max_new_tokens=sampling.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS,
        description=f"{run_dir} ({checkpoint.name})",
        prompt=example_prompt(stored),
        prompt_style=style,
        prompt_style_spec=style_spec,
    )


def refuse_classifier(run_dir: Path, model: GPTModel) -> None:
    """A `GptkitError` if the run's `model.head` is not the language-model head: a classifier gives no next tokens."""
    head, _ = split_spec(model.cfg.head)  # validated: load_run_model built the model from it
    if head != "lm":
        raise GptkitError(f"{run_dir} is a classifier (model.head {head}); use python main.py classify")


def run_component(run_dir: Path, stored: dict[str, Any], kind: str, spec: Any) -> Any:
    """A component config.json names, built; a `CheckpointError` naming the file (and a plugin gone missing) if it cannot be."""
    try:
        return default_registry().create(kind, spec)
    except GptkitError as err:
        note = missing_components_note(stored, default_registry())
        raise CheckpointError(f"{run_dir / 'config.json'}: {err}" + (f"\n{note}" if note else "")) from None


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
    quantize: str | None = None,
) -> LoadedModel:
    """From exactly one of `run_dir` and `hf_dir`, in eval mode, `dtype` and on `device`.

    `kernels`: gptkit's CPU speed paths (`gptkit.kernels`), for a model on the CPU.
    `quantize`: a scheme of `gptkit.dtypes.QUANTIZE_SCHEMES` for the linear weights.
    """
    if (run_dir is None) == (hf_dir is None):
        raise ValueError("give exactly one of run_dir and hf_dir")
    check_precision(dtype, device, quantize)  # before the weights are read: a refusal costs nothing
    loaded = load_run(run_dir) if run_dir is not None else load_hf(hf_dir)  # type: ignore[arg-type]
    if loaded.model.cfg.vocab_size < loaded.tokenizer.vocab_size:
        raise CheckpointError(
            f"{loaded.description}: the model has {loaded.model.cfg.vocab_size} token ids but its tokenizer "
            f"has {loaded.tokenizer.vocab_size}; they do not belong together"
        )
    prepare_for_use(loaded.model, dtype, device, kernels=kernels, quantize=quantize)
    return loaded


def check_precision(dtype: torch.dtype, device: str | torch.device, quantize: str | None) -> None:
    """A `GptkitError` for a dtype or quantization scheme that `device` cannot decode with."""
    if dtype == torch.float16 and str(device).startswith("cpu"):
        raise GptkitError("--dtype float16 needs a CUDA device; on CPU use --dtype bfloat16 or float32")
    if quantize is not None:
        check_quantize(quantize, device)


def prepare_for_use(
    model: GPTModel, dtype: torch.dtype, device: str | torch.device = "cpu", *, kernels: bool = True, quantize: str | None = None
) -> None:
    """`model`, as loaded (float32, CPU), quantized, cast, moved and accelerated in place for decoding."""
    check_precision(dtype, device, quantize)
    if quantize is not None:
        quantize_weights(model, quantize)  # from the float32 weights, before the cast rounds them
    try:
        model.to(device=device, dtype=dtype).eval()
    except (RuntimeError, AssertionError) as err:  # a device torch does not know, or was not built for
        raise GptkitError(f"cannot use device {str(device)!r}: {str(err).splitlines()[0]}") from None
    if kernels:
        # Decoding streams every weight once per token: huge pages stream them ~6% faster.
        accelerate(model, inference=True)


@dataclass
class Session:
    """What one `generate` or `chat` command works with."""

    loaded: LoadedModel
    samplers: list[Sampler]
    max_new_tokens: int
    generator: torch.Generator | None
    compile: bool = False  # generate through torch.compile (see gptkit.generation.compiled)


# --max-new-tokens reserves a buffer of that many token ids up front: past this, a typo
# (an extra few zeros) would ask for gigabytes before the first token.
MAX_NEW_TOKENS_LIMIT = 1_000_000
# What torch.Generator.manual_seed accepts.
SEED_RANGE = (-(2**63), 2**64 - 1)
# The temperature and the repetition penalty divide logits: below this, the quotient overflows
# float32 to inf, the probabilities become nan and the draw returns a token id past the vocabulary.
SMALLEST_DIVISOR = 1e-30


def hugging_face_folder(path: str | Path) -> bool:
    """Whether `path` holds a Hugging Face checkpoint (a config.json with model_type and no gptkit model section)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config and "model" not in config


def open_session(options: Any) -> Session:
    """Model, sampler chain and generator from parsed command-line options (an argparse Namespace).

    Sampler options replace the source's own chain as a whole; without any, the
    run's `sampling.samplers` (or, for a Hugging Face folder, temperature 0.8 and
    top-k 50) apply. They are checked before the model is loaded, so a bad value
    fails at once. `--compile` runs the model through torch.compile.
    """
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        raise GptkitError(f"--max-new-tokens must be at least 1, got {options.max_new_tokens}")
    if options.max_new_tokens is not None and options.max_new_tokens > MAX_NEW_TOKENS_LIMIT:
        raise GptkitError(f"--max-new-tokens must be at most {MAX_NEW_TOKENS_LIMIT:,}, got {options.max_new_tokens}")
    if options.seed is not None and not SEED_RANGE[0] <= options.seed <= SEED_RANGE[1]:
        raise GptkitError(f"--seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {options.seed}")
    for flag, value in (("--temperature", options.temperature), ("--repetition-penalty", options.repetition_penalty)):
        if value is not None and 0 < value < SMALLEST_DIVISOR:
            raise GptkitError(f"{flag} {value:g} is too small to divide the logits by; use at least {SMALLEST_DIVISOR:g}" + (
                " (0 means greedy decoding)" if flag == "--temperature" else ""))
    if options.run is not None and hugging_face_folder(options.run):
        raise GptkitError(f"{options.run} is a Hugging Face checkpoint folder, not a gptkit run directory; use --hf-dir {options.run}")
    specs = sampler_specs(
        temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
        min_p=options.min_p, repetition_penalty=options.repetition_penalty,
    )
    samplers = build_samplers(specs) if specs else None
    loaded = load_model(options.run, options.hf_dir, torch_dtype(options.dtype), quantize=getattr(options, "quantize", None))
    generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
    return Session(
        loaded,
        samplers if samplers is not None else build_samplers(loaded.samplers),
        options.max_new_tokens or loaded.max_new_tokens,
        generator,
        compile=bool(getattr(options, "compile", False)),
    )
