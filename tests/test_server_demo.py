"""The demo's defaults: the run's own sampler chain and an example prompt that fits its data.

A request that gives no sampler field, and the page untouched, get the chain the
run's config.json stores (repetition penalty included); the page's fields and its
example prompt are filled in from the run. Expected draws come from
generate_tokens with samplers built here, and expected page values from the
HTML as a parser reads it.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import randomize_weights
from test_server import (  # fixtures and helpers, not tests: nothing here is collected twice
    PROMPT,
    TIMEOUT,
    greedy_ids,
    model,
    request,
    sse_events,
    start,
    tokenizer,
)

import config as run_config
from gptkit import GPTModel, ModelConfig, default_registry
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.generate import generate_tokens
from gptkit.generation.loading import example_prompt, load_model
from gptkit.serving.server import CompletionServer, make_server
from gptkit.training.checkpoint import save_checkpoint
from gptkit.training.train_state import TrainState

__all__ = ["model", "start", "tokenizer"]  # fixtures, used by name

# The trainer's default chain, as config.py's SamplingConfig stores it in config.json.
RUN_CHAIN = [{"name": "repetition_penalty", "penalty": 1.3}, {"name": "temperature", "value": 0.8}, {"name": "top_k", "k": 50}]


def sampled_text(model: GPTModel, tokenizer: Tokenizer, prompt: str, n: int, specs: list[dict[str, Any]], seed: int) -> str:
    """What generate_tokens gives for this chain and seed, cut at end-of-text as the server does."""
    samplers = [default_registry().create("sampler", spec) for spec in specs]
    generator = torch.Generator().manual_seed(seed)
    ids = [int(t[0, 0]) for t in generate_tokens(
        model, torch.tensor([tokenizer.encode(prompt)]), max_new_tokens=n, samplers=samplers, generator=generator, eos_id=tokenizer.eot_id,
    )]
    return tokenizer.decode(ids[: ids.index(tokenizer.eot_id)] if tokenizer.eot_id in ids else ids)


def completion(server: CompletionServer, body: dict[str, Any]) -> str:
    status, reply = request(server, "POST", "/v1/completions", body)
    assert status == 200, reply
    return str(reply["choices"][0]["text"])


def page_settings(server: CompletionServer, body: dict[str, Any]) -> dict[str, Any]:
    status, text = request(server, "POST", "/api/generate", body)
    assert status == 200, text
    return dict(sse_events(text)[0]["settings"])


# --- requests default to the run's chain ---------------------------------------------------------


def test_a_greedy_chain_gives_the_greedy_completion_when_no_sampler_field_is_given(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer,
) -> None:
    server = start(model, samplers=["greedy"])
    expected = tokenizer.decode(greedy_ids(model, tokenizer, PROMPT, 12))
    for seed in (1, 2):  # greedy: the seed changes nothing
        assert completion(server, {"prompt": PROMPT, "max_tokens": 12, "seed": seed}) == expected
    settings = page_settings(server, {"prompt": PROMPT, "max_tokens": 3})
    assert (settings["samplers"], settings["temperature"]) == (["greedy"], 0.0)


def test_the_runs_chain_with_its_repetition_penalty_is_the_default(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer,
) -> None:
    server = start(model, samplers=RUN_CHAIN)
    expected = sampled_text(model, tokenizer, PROMPT, 15, RUN_CHAIN, seed=11)
    assert completion(server, {"prompt": PROMPT, "max_tokens": 15, "seed": 11}) == expected
    # Without the penalty the draws differ: the default really is the run's chain, not OpenAI's plain draw.
    assert sampled_text(model, tokenizer, PROMPT, 15, RUN_CHAIN[1:], seed=11) != expected
    settings = page_settings(server, {"prompt": PROMPT, "max_tokens": 2, "seed": 11})
    assert settings["samplers"] == ["repetition_penalty(1.3)", "temperature(0.8)", "top_k(50)"]
    assert {k: settings[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")} == {
        "temperature": 0.8, "top_k": 50, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.3,
    }


def test_fields_a_request_gives_replace_only_their_part_of_the_chain(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer,
) -> None:
    server = start(model, samplers=RUN_CHAIN)
    changed = [RUN_CHAIN[0], RUN_CHAIN[1], {"name": "top_k", "k": 5}]
    assert completion(server, {"prompt": PROMPT, "max_tokens": 15, "seed": 4, "top_k": 5}) == sampled_text(model, tokenizer, PROMPT, 15, changed, 4)
    assert page_settings(server, {"prompt": PROMPT, "max_tokens": 2, "top_k": 5})["samplers"] == ["repetition_penalty(1.3)", "temperature(0.8)", "top_k(5)"]
    # Each sampler is switched off by its neutral value; temperature 0 is greedy after the penalty.
    off = page_settings(server, {"prompt": PROMPT, "max_tokens": 2, "repetition_penalty": 1, "top_k": 0, "temperature": 1})
    assert off["samplers"] == ["multinomial"]
    greedy = page_settings(server, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0})
    assert greedy["samplers"] == ["repetition_penalty(1.3)", "top_k(50)", "greedy"]
    # null is "not given", as OpenAI's nullable fields read.
    assert page_settings(server, {"prompt": PROMPT, "max_tokens": 2, "temperature": None})["samplers"] == [
        "repetition_penalty(1.3)", "temperature(0.8)", "top_k(50)"]


def test_a_chain_the_fields_cannot_express_is_served_as_it_stands(
    start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer,
) -> None:
    # top_k before temperature is not the order the fields build: the chain is kept whole, not rebuilt.
    chain = [{"name": "top_k", "k": 20}, {"name": "temperature", "value": 0.7}]
    server = start(model, samplers=chain)
    assert completion(server, {"prompt": PROMPT, "max_tokens": 10, "seed": 5}) == sampled_text(model, tokenizer, PROMPT, 10, chain, 5)
    settings = page_settings(server, {"prompt": PROMPT, "max_tokens": 2})
    assert settings["samplers"] == ["top_k(20)", "temperature(0.7)"] and settings["temperature"] is None
    # A field given replaces the chain; the fields left out are then off (OpenAI's defaults).
    assert page_settings(server, {"prompt": PROMPT, "max_tokens": 2, "temperature": 0.5})["samplers"] == ["temperature(0.5)"]


def test_without_a_chain_the_defaults_are_openais(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    settings = page_settings(start(model), {"prompt": PROMPT, "max_tokens": 2})
    assert settings["samplers"] == ["multinomial"]
    assert (settings["temperature"], settings["top_k"], settings["top_p"], settings["repetition_penalty"]) == (1.0, 0, 1.0, 1.0)


# --- the page -----------------------------------------------------------------------------------


class PageFields(HTMLParser):
    """The prompt textarea's text, each input's value attribute, and the chain note, as a browser parses them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.values: dict[str, str | None] = {}
        self.texts: dict[str, str] = {}
        self._in: str | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("id"):
            self.values[str(a["id"])] = a.get("value")
        if tag in ("textarea", "div") and a.get("id") in ("prompt", "chain"):
            self._in = str(a["id"])
            self.texts[self._in] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("textarea", "div"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self.texts[self._in] += data


def test_the_page_starts_from_the_runs_prompt_and_chain(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    prompt = 'def greet(name):\n    return f"<b>{name}</b> & more"'
    server = start(model, samplers=RUN_CHAIN, example_prompt=prompt, default_max_tokens=200, max_new_tokens_cap=150)
    status, page = request(server, "GET", "/")
    assert status == 200
    fields = PageFields(page)
    assert fields.texts["prompt"] == prompt, "the textarea shows the run's example prompt, markup and all, as text"
    assert {k: fields.values[k] for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_tokens")} == {
        "temperature": "0.8", "top_k": "50", "top_p": "1", "min_p": "0", "repetition_penalty": "1.3", "max_tokens": "150",
    }
    assert fields.texts["chain"] == "the run's sampler chain: repetition_penalty(1.3) \u2192 temperature(0.8) \u2192 top_k(50)"
    assert "{{" not in page, "every placeholder is filled in"
    _, info = request(server, "GET", "/api/info")
    assert (info["example_prompt"], info["default_max_tokens"], info["default_samplers"]) == (prompt, 150, RUN_CHAIN)


def test_a_chain_the_page_cannot_show_is_said_so(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model, samplers=[{"name": "top_k", "k": 20}, {"name": "temperature", "value": 0.7}])
    fields = PageFields(request(server, "GET", "/")[1])
    assert fields.texts["chain"] == (
        "the run's sampler chain: top_k(20) \u2192 temperature(0.7) (not expressible in these fields: changing one replaces the chain)"
    )


# --- a run directory, through the serve command ----------------------------------------------------

MODEL = {"vocab_size": 50257, "emb_dim": 32, "n_heads": 2, "n_layers": 1, "context_length": 32, "weight_tying": False}


def write_run(run_dir: Path, model: GPTModel, overrides: list[str]) -> Path:
    """A run directory as training leaves it: config.json and one checkpoint."""
    cfg = run_config.load_run_config(overrides=[f"model.{k}={json.dumps(v)}" for k, v in MODEL.items()] + overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    save_checkpoint(run_dir, model, torch.optim.AdamW(model.parameters()), TrainState(step=2))
    return run_dir


@pytest.fixture()
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], CompletionServer]]:
    """served(run_dir): what `main.py serve --run run_dir` would serve, on a free port, in a thread."""
    import commands.serve
    import gptkit.serving.server as server_module

    running: list[tuple[CompletionServer, threading.Thread]] = []

    def serve_in_thread(model: GPTModel, tokenizer: Tokenizer, **options: Any) -> None:
        server = make_server(model, tokenizer, **{**options, "port": 0, "log_requests": False})
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))

    monkeypatch.setattr(server_module, "serve_forever", serve_in_thread)

    def served(run_dir: Path) -> CompletionServer:
        import main

        args: argparse.Namespace = main.build_parser().parse_args(["serve", "--run", str(run_dir)])
        assert commands.serve.run(args, default_registry()) == 0
        return running[-1][0]

    yield served
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def test_serve_gives_a_greedy_run_its_greedy_completion_and_its_prompt(
    served: Callable[[Path], CompletionServer], tmp_path: Path, tokenizer: Tokenizer,
) -> None:
    model = randomize_weights(GPTModel(ModelConfig(**MODEL)), seed=0)
    run = write_run(tmp_path / "greedy-run", model, ['sampling.samplers=["greedy"]', "sampling.max_new_tokens=12", 'sampling.prompt="def add(a, b):"'])
    server = served(run)
    expected = tokenizer.decode(greedy_ids(model, tokenizer, PROMPT, 10))  # type: ignore[arg-type]
    assert completion(server, {"prompt": PROMPT, "max_tokens": 10}) == expected
    fields = PageFields(request(server, "GET", "/")[1])
    assert fields.texts["prompt"] == "def add(a, b):" and fields.values["max_tokens"] == "12" and fields.values["temperature"] == "0"


def test_serve_gives_a_default_run_the_default_chain_and_a_python_prompt(served: Callable[[Path], CompletionServer], tmp_path: Path) -> None:
    model = randomize_weights(GPTModel(ModelConfig(**MODEL)), seed=1)
    server = served(write_run(tmp_path / "default-run", model, []))  # data.path unset: the standard library
    fields = PageFields(request(server, "GET", "/")[1])
    assert fields.texts["prompt"] == "def fibonacci(n):"
    assert (fields.values["repetition_penalty"], fields.values["temperature"], fields.values["top_k"]) == ("1.3", "0.8", "50")
    assert fields.values["max_tokens"] == "200"  # the run's sampling.max_new_tokens


# --- the example prompt ---------------------------------------------------------------------------


def test_example_prompt_follows_the_runs_sampling_prompt_then_its_data(tmp_path: Path) -> None:
    assert example_prompt({"sampling": {"prompt": "import os"}, "data": {"path": None}}) == "import os"
    assert example_prompt({"sampling": {"prompt": ""}, "data": {"path": None}}) == "def fibonacci(n):"
    text = tmp_path / "corpus"
    text.mkdir()
    (text / "a.txt").write_text("\n\n   \nOnce upon a time there was a parser.  \nIt parsed.\n", encoding="utf-8")
    (text / "b.txt").write_text("Not the first file.\n", encoding="utf-8")
    assert example_prompt({"sampling": {"prompt": ""}, "data": {"path": str(text)}}) == "Once upon a time there was a parser."
    (tmp_path / "long.txt").write_text("x" * 500, encoding="utf-8")
    assert example_prompt({"data": {"path": str(tmp_path / "long.txt")}}) == "x" * 80
    # Gone, or only reachable over the network: no example rather than a failure to serve.
    assert example_prompt({"data": {"path": str(tmp_path / "gone")}}) == ""
    assert example_prompt({"data": {"path": "https://example.invalid/corpus.txt"}}) == ""


def test_hugging_face_gpt2_gets_an_english_prompt(tmp_path: Path) -> None:
    from gptkit.interop.hf_checkpoint import export_hf

    torch.manual_seed(0)
    folder = export_hf(GPTModel(ModelConfig(context_length=64, emb_dim=32, n_heads=2, n_layers=1)), tmp_path / "hf")
    assert load_model(hf_dir=folder, kernels=False).prompt == "The meaning of life is"
