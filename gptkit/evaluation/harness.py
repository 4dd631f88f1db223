"""gptkit as a model of EleutherAI's lm-evaluation-harness, registered under the name `gptkit`.

The harness asks a model three things, and this adapter answers them with the
harness's own conventions, so its figures are those of the harness's `hf` model
on the same weights exported to Hugging Face:

- `loglikelihood`: the log-probability of a continuation after a context, and
  whether greedy decoding would have produced it. Context and continuation are
  tokenized together (the harness's `TemplateLM` splits them, moves the context's
  trailing spaces into the continuation and puts <|endoftext|> before an empty
  context), then cut from the left to the model's context;
- `loglikelihood_rolling`: a whole text's log-probability, in the harness's
  disjoint windows, the first after an <|endoftext|>;
- `generate_until`: a continuation up to a stop string, <|endoftext|> or
  `max_gen_toks` tokens, greedy unless the task samples, from a context cut to
  leave room for those tokens.

Requests are scored in batches of `batch_size`, longest first, right-padded: the
model is causal, so padding after a row changes none of its log-probabilities.

The harness (0.4.13) finds models only in its own registry, which this module fills
when imported; `lm-eval` itself never imports it. So its command line is run through
this module, which registers `gptkit` and hands its arguments on:

    python -m gptkit.evaluation.harness run --model gptkit --model_args run=runs/NAME --tasks hellaswag

`--model_args` take one of `run=RUN_DIR`, `hf_dir=DIR` or `init_from=SOURCE`, and
`dtype=`, `max_gen_toks=`. The harness is an optional extra (`pip install -e ".[eval]"`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import lm_eval.models  # noqa: F401  (the built-in models: the registry loads them itself only while it is empty)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptkit.errors import GptkitError
from gptkit.evaluation.last_positions import logits_of_last
from gptkit.generation.generate import generate_text
from gptkit.generation.samplers import build_samplers
from gptkit.model.gpt import GPTModel

MODEL_NAME = "gptkit"
DEFAULT_BATCH_SIZE = 8  # what "auto" gets: the harness's probing for the largest batch is for GPU memory
DEFAULT_MAX_GEN_TOKS = 256  # the harness's hf model's default

MODEL_ARGS = ("run", "hf_dir", "init_from", "dtype", "batch_size", "max_gen_toks")
HARNESS_OPTIONS = {"max_batch_size", "device"}  # what the harness passes every model besides batch_size

# One request as `_loglikelihood_tokens` takes it: ((context, continuation) or None, context ids, continuation ids).
TokenRequest = tuple[Any, list[int], list[int]]
T = TypeVar("T")


def batch_size_from(value: int | str | None) -> int:
    """The harness passes `--batch_size` as given: an integer, its text, or 'auto' / 'auto:N'."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except ValueError:
        raise GptkitError(f"batch_size must be a whole number or 'auto', got {value!r}") from None
    if size < 1:
        raise GptkitError(f"batch_size must be at least 1, got {size}")
    return size


def usable_device(device: str | None) -> str:
    """The device asked for if torch has it, else the CPU: the harness's command line asks for cuda:0 unless
    told otherwise, and its hf model falls back to the CPU in the same way."""
    kind = (device or "cpu").split(":")[0]
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    return device if device is not None and available.get(kind, kind == "cpu") else "cpu"


def in_batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class GptkitLM(TemplateLM):
    """A gptkit model and its tokenizer, as the harness calls a model."""

    def __init__(
        self,
        model: GPTModel | None = None,
        tokenizer: Any = None,
        *,
        run: str | None = None,
        hf_dir: str | None = None,
        init_from: str | None = None,
        dtype: str = "float32",
        batch_size: int | str | None = 1,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        description: str = "",
        **harness_options: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(harness_options) - HARNESS_OPTIONS)
        if unknown:
            raise GptkitError(f"--model_args for gptkit: unknown {', '.join(unknown)}; expected {', '.join(MODEL_ARGS)}")
        self.batch_size = batch_size_from(batch_size)
        self._max_gen_toks = int(max_gen_toks)
        if model is None:
            model, tokenizer, description = self._load(run, hf_dir, init_from, dtype, harness_options.get("device"))
        elif tokenizer is None:
            raise ValueError("a model needs its tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.description = description
        self._device = next(model.parameters()).device

    @staticmethod
    def _load(run: str | None, hf_dir: str | None, init_from: str | None, dtype: str, device: str | None) -> tuple[GPTModel, Any, str]:
        from gptkit.dtypes import torch_dtype
        from gptkit.evaluation.model_source import load_scored_model

        given = {"run": run, "hf_dir": hf_dir, "init_from": init_from}
        if sum(v is not None for v in given.values()) != 1:
            raise GptkitError("--model_args for gptkit: give exactly one of run=RUN_DIR, hf_dir=DIR or init_from=SOURCE")
        loaded = load_scored_model(run, hf_dir, init_from, torch_dtype(dtype), usable_device(device))
        return loaded.model, loaded.tokenizer, loaded.description

    # --- what the harness reads off a model ---------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.model.cfg.context_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name", type(self.tokenizer).__name__))

    def get_model_info(self) -> dict[str, Any]:
        return {"model_checkpoint": self.description, "model_num_parameters": self.model.num_parameters()}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # "<|endoftext|>" in a task's text is the one special token, as Hugging Face's GPT-2
        # tokenizer (the harness's hf model) and the server read it, so every path scores alike.
        return self.tokenizer.encode(string, allow_special=True)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    # --- log-likelihoods -----------------------------------------------------------------

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1] + requests[i][2]))
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        for batch in in_batches(order, self.batch_size):
            for i, answer in zip(batch, self._score_batch([requests[i] for i in batch])):
                answers[i] = answer
                if requests[i][0] is not None:  # the rolling windows of a text are cached as one answer
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return answers  # type: ignore[return-value]

    def _score_batch(self, requests: Sequence[TokenRequest]) -> list[tuple[float, bool]]:
        # The model predicts each token from those before it, so it reads all but the last.
        rows = [(context + continuation)[-(self.max_length + 1) :][:-1] for _, context, continuation in requests]
        width = max(len(r) for r in rows)
        batch = torch.zeros(len(rows), width, dtype=torch.long)
        for r, ids in enumerate(rows):
            batch[r, : len(ids)] = torch.tensor(ids)
        # The output head runs only from the first continuation's first position on, and only
        # the continuation's positions go through the log-softmax.
        kept = width - min(len(ids) - len(c) for ids, (_, _, c) in zip(rows, requests))
        with logits_of_last(self.model, kept):
            logits = self.model(batch.to(self._device))
        out = []
        for r, (_, _, continuation) in enumerate(requests):
            end = len(rows[r]) - (width - kept)  # where the row ends among the logits kept
            log_probs = F.log_softmax(logits[r, end - len(continuation) : end].float(), dim=-1)
            targets = torch.tensor(continuation, device=log_probs.device)
            picked = log_probs.gather(-1, targets[:, None])[:, 0]
            out.append((float(picked.sum()), bool((log_probs.argmax(-1) == targets).all())))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows: list[TokenRequest] = []
        owner: list[int] = []
        for n, request in enumerate(requests):
            (text,) = request.args
            pairs = get_rolling_token_windows(self.tok_encode(text), self.eot_token_id, self.max_length, context_len=1)
            for context, continuation in map(make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[n] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # --- generation ----------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        # Requests with the same generation settings decode together.
        groups: dict[str, list[int]] = {}
        for n, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(n)
        texts: list[str] = [""] * len(requests)
        for members in groups.values():
            settings = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            generate = self._generator(settings)
            for batch in in_batches(members, self.batch_size):
                for n, text in zip(batch, generate([requests[n].args[0] for n in batch])):
                    texts[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return texts

    def _generator(self, settings: dict[str, Any]) -> Callable[[list[str]], list[str]]:
        max_new = int(settings["max_gen_toks"])
        room = self.max_length - max_new  # the context is cut so the new tokens fit the window
        if room < 1:
            raise GptkitError(f"max_gen_toks {max_new} leaves no room for a context in the model's {self.max_length} positions")
        stop = handle_stop_sequences(settings.get("until"), eos=self.tok_decode([self.eot_token_id]))
        specs: list[dict[str, Any]] = [{"name": "greedy"}]
        if settings.get("do_sample") and float(settings.get("temperature", 0.0)) > 0:
            specs = [{"name": "temperature", "value": float(settings["temperature"])}]
            specs += [{"name": "top_k", "k": int(settings["top_k"])}] if settings.get("top_k") else []
            specs += [{"name": "top_p", "p": float(settings["top_p"])}] if settings.get("top_p") is not None else []
        samplers = build_samplers(specs)

        def generate(contexts: list[str]) -> list[str]:
            prompts = [(self.tok_encode(c) or [self.eot_token_id])[-room:] for c in contexts]
            return generate_text(self.model, self.tokenizer, prompts, max_new, samplers, stop=stop)

        return generate


def register() -> None:
    """`gptkit` in the harness's model registry, once: a second class under the name is refused there."""
    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(GptkitLM)


register()


def main(argv: Sequence[str] | None = None) -> int:
    """The harness's own command line with `gptkit` registered; a gptkit error is one line and exit 2."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except GptkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
