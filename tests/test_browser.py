"""The demo page end to end in headless Chromium: type a prompt, Generate, watch the text stream in.

Needs Debian's `chromium` (/usr/bin/chromium) and Playwright's Python package; it
skips, saying which is missing, without them. Playwright's own browser download is
never used: the system Chromium is launched directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_server_asgi import (
    serving as running,  # starts a built server on a thread, stops it on exit
)

from gptkit import GPTModel, ModelConfig
from gptkit.data.tokenizer import Tokenizer
from gptkit.serving.server import CompletionServer, make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
TIMEOUT_MS = 20_000


@pytest.fixture()
def playwright_api() -> tuple[Any, Any]:
    """Playwright's entry point and `expect`, or a skip saying what is missing (before any server starts)."""
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not found (apt-get install -y chromium)"
        print(reason)
        pytest.skip(reason)
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        reason = "the playwright package is not installed (pip install playwright)"
        print(reason)
        pytest.skip(reason)
    return sync_playwright, expect


@pytest.fixture()
def server() -> Iterator[CompletionServer]:
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(context_length=64, emb_dim=32, n_heads=2, n_layers=1)).eval()
    real_forward = model.forward

    def slow_forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(0.02)  # a tiny model is too quick to watch it stream
        return real_forward(*args, **kwargs)

    model.forward = slow_forward  # type: ignore[method-assign,assignment]
    server = make_server(model, Tokenizer(), host="127.0.0.1", port=0, model_name="tiny")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


@contextlib.contextmanager
def browser_page(entry: Any, url: str) -> Iterator[Any]:
    """A Chromium page opened at `url`, or a skip if Chromium cannot start."""
    with entry() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        except Exception as err:  # noqa: BLE001  # an unusable browser is an environment problem, not a failure of the page
            reason = f"cannot launch {CHROMIUM}: {str(err).splitlines()[0]}"
            print(reason)
            pytest.skip(reason)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_page_streams_generated_text(playwright_api: tuple[Any, Any], server: CompletionServer, tmp_path: Path) -> None:
    entry, expect = playwright_api
    with browser_page(entry, server.url) as page:
        # Locator assertions, not wait_for_function: the page's CSP forbids the eval() that needs.
        expect(page.locator("#model")).to_contain_text("tiny", timeout=TIMEOUT_MS)
        page.fill("#prompt", "Once upon a time")
        page.fill("#temperature", "0.7")
        page.fill("#max_tokens", "40")
        # Record the output's length at every change, from inside the page, so no update is missed.
        page.evaluate("""() => {
            window.lengths = [];
            const out = document.getElementById('generated');
            new MutationObserver(() => window.lengths.push(out.textContent.length))
                .observe(out, {childList: true, characterData: true, subtree: true});
        }""")
        page.click("#generate")
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        lengths: list[int] = page.evaluate("window.lengths")
        text = page.text_content("#generated") or ""
        settings = page.text_content("#settings") or ""
        error = page.text_content("#error")
        shot = tmp_path / "browser.png"
        page.screenshot(path=str(shot), full_page=True)
    growth = [n for n in lengths if n > 0]
    assert len(set(growth)) >= 3, f"the text did not stream in: lengths seen {lengths}"
    assert growth == sorted(growth), f"the text shrank while streaming: {lengths}"
    # The page counts UTF-16 code units (an emoji is two), Python counts code points.
    assert text and len(text.encode("utf-16-le")) // 2 == growth[-1]
    assert "temperature 0.7" in settings and "finished: length" in settings, settings
    assert error == "", error
    assert shot.stat().st_size > 0
    # Refreshed only on request, so a plain test run leaves the checkout clean.
    if os.environ.get("GPTKIT_SAVE_SCREENSHOT") == "1" and RESULTS.is_dir():
        shutil.copyfile(shot, RESULTS / "browser.png")


# --- the run's defaults and visible whitespace ----------------------------------------------------

RUN_CHAIN = [{"name": "repetition_penalty", "penalty": 1.3}, {"name": "temperature", "value": 0.8}, {"name": "top_k", "k": 50}]
SPACE, NEWLINE = 220, 198  # GPT-2's ids of " " and "\n"


@contextlib.contextmanager
def serving(model: GPTModel, **options: Any) -> Iterator[CompletionServer]:
    with running(make_server(model, Tokenizer(), host="127.0.0.1", port=0, model_name="tiny", **options)) as server:
        yield server



def tiny_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(ModelConfig(context_length=64, emb_dim=32, n_heads=2, n_layers=1)).eval()


def test_page_starts_from_the_runs_prompt_and_chain(playwright_api: tuple[Any, Any]) -> None:
    entry, expect = playwright_api
    with serving(tiny_model(), samplers=RUN_CHAIN, example_prompt="def fibonacci(n):") as server, browser_page(entry, server.url) as page:
        expect(page.locator("#model")).to_contain_text("tiny", timeout=TIMEOUT_MS)
        sent: list[dict[str, Any]] = []
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/api/generate") else None)
        prompt = page.input_value("#prompt")
        fields = {name: page.input_value(f"#{name}") for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")}
        page.fill("#max_tokens", "6")
        page.fill("#seed", "3")
        page.click("#generate")
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        untouched = page.text_content("#settings") or ""
        page.fill("#temperature", "0.5")
        page.click("#generate")
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        changed = page.text_content("#settings") or ""
    assert prompt == "def fibonacci(n):"
    assert fields == {"temperature": "0.8", "top_k": "50", "top_p": "1", "min_p": "0", "repetition_penalty": "1.3"}
    # Untouched, the page leaves the chain to the server, which applies the run's own.
    assert sent[0] == {"prompt": "def fibonacci(n):", "max_tokens": 6, "seed": 3}
    assert "samplers repetition_penalty(1.3) \u2192 temperature(0.8) \u2192 top_k(50)" in untouched, untouched
    # One field changed: all of them go, so the others keep the run's values.
    assert {k: sent[1][k] for k in fields} == {"temperature": 0.5, "top_k": 50, "top_p": 1, "min_p": 0, "repetition_penalty": 1.3}
    assert "samplers repetition_penalty(1.3) \u2192 temperature(0.5) \u2192 top_k(50)" in changed, changed


def whitespace_model() -> GPTModel:
    """A model that writes nothing but spaces and newlines: its head favours those two ids above all others."""
    model = tiny_model()
    head = torch.nn.Linear(model.cfg.emb_dim, model.cfg.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-40.0)
        head.bias[[SPACE, NEWLINE]] = 0.0
    model.out_head = head
    return model.eval()


def test_a_completion_of_whitespace_is_visible(playwright_api: tuple[Any, Any]) -> None:
    entry, expect = playwright_api
    with serving(whitespace_model()) as server, browser_page(entry, server.url) as page:
        expect(page.locator("#model")).to_contain_text("tiny", timeout=TIMEOUT_MS)
        page.fill("#prompt", "Hello")
        page.fill("#max_tokens", "30")
        page.fill("#seed", "1")
        page.click("#generate")
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        plain = page.text_content("#generated") or ""
        note = page.text_content("#ws-note") or ""
        page.check("#show-ws")
        marked = page.text_content("#generated") or ""
        note_marked = page.text_content("#ws-note") or ""
    spaces, newlines = plain.count(" "), plain.count("\n")
    assert len(plain) == 30 == spaces + newlines and spaces and newlines, repr(plain)  # 30 one-character tokens
    assert note == f"(30 whitespace characters: {spaces} spaces, {newlines} newlines \u2013 tick \u201cshow whitespace\u201d to see them)"
    assert note_marked == f"(30 whitespace characters: {spaces} spaces, {newlines} newlines)"
    # Each space a middle dot, each newline an arrow before the line break it still makes.
    assert marked == plain.replace(" ", "\u00b7").replace("\n", "\u21b5\n")
