"""The demo page end to end in headless Chromium: type a prompt, Generate, watch the text stream in.

Needs Debian's `chromium` (/usr/bin/chromium) and Playwright's Python package; it
skips, saying which is missing, without them. Playwright's own browser download is
never used: the system Chromium is launched directly.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

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
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_page_streams_generated_text(playwright_api: tuple[Any, Any], server: CompletionServer, tmp_path: Path) -> None:
    entry, expect = playwright_api
    with entry() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        except Exception as err:  # an unusable browser is an environment problem, not a failure of the page
            reason = f"cannot launch {CHROMIUM}: {str(err).splitlines()[0]}"
            print(reason)
            pytest.skip(reason)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server.url)
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
        finally:
            browser.close()
    growth = [n for n in lengths if n > 0]
    assert len(set(growth)) >= 3, f"the text did not stream in: lengths seen {lengths}"
    assert growth == sorted(growth), f"the text shrank while streaming: {lengths}"
    assert text and len(text) == growth[-1]
    assert "temperature 0.7" in settings and "finished: length" in settings, settings
    assert error == "", error
    assert shot.stat().st_size > 0
    # Refreshed only on request, so a plain test run leaves the checkout clean.
    if os.environ.get("GPTKIT_SAVE_SCREENSHOT") == "1" and RESULTS.is_dir():
        shutil.copyfile(shot, RESULTS / "browser.png")
