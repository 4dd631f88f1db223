"""The demo page's probability view in headless Chromium: each token coloured by its probability, hover for details.

Launch-or-skip and the page helpers are tests/test_browser.py's. The numbers the
page shows are checked against `log_softmax` of a forward pass made here over the
prompt and the greedy completion of the same model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from test_browser import TIMEOUT_MS, browser_page, playwright_api, serving, tiny_model

from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.generate import generate_tokens
from gptkit.generation.samplers import Greedy

__all__ = ["playwright_api"]  # a fixture, used by name

PROMPT = "The cat sat on the"
MAX_TOKENS = 8
SPANS = "els => els.map(e => [e.parentElement.id, e.textContent, e.dataset.logprob ?? null, e.style.backgroundColor])"


def test_tokens_are_coloured_by_probability_and_hover_shows_the_alternatives(playwright_api: tuple[Any, Any]) -> None:
    entry, expect = playwright_api
    model, tokenizer = tiny_model(), Tokenizer()
    prompt_ids = tokenizer.encode(PROMPT)
    steps = generate_tokens(model, torch.tensor([prompt_ids]), max_new_tokens=MAX_TOKENS, samplers=[Greedy()], eos_id=tokenizer.eot_id)
    completion_ids = [int(step[0, 0]) for step in steps]
    ids = prompt_ids + completion_ids
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].float(), dim=-1)
    with serving(model) as server, browser_page(entry, server.url) as page:
        expect(page.locator("#model")).to_contain_text("tiny", timeout=TIMEOUT_MS)
        sent: list[dict[str, Any]] = []
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/api/generate") else None)
        page.fill("#prompt", PROMPT)
        page.fill("#temperature", "0")
        page.fill("#max_tokens", str(MAX_TOKENS))
        page.check("#show-probs")
        page.click("#generate")
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        spans = page.eval_on_selector_all("#output .tok", SPANS)
        note = page.text_content("#probs-note") or ""
        third = len(prompt_ids) + 2  # the third generated token
        page.hover(f"#generated .tok[data-index='{third}']")
        expect(page.locator("#token-info")).to_be_visible(timeout=TIMEOUT_MS)
        info = page.text_content("#token-info") or ""
        page.uncheck("#show-probs")
        plain = page.text_content("#output") or ""
        plain_spans = page.locator("#output .tok").count()
    assert sent[0]["echo"] is True and sent[0]["logprobs"] == 5
    # One span per token, the prompt's in the prompt, and together they spell the text.
    assert [where for where, *_ in spans] == ["prompt-echo"] * len(prompt_ids) + ["generated"] * len(completion_ids)
    assert [text for _, text, *_ in spans] == [tokenizer.decode([t]) for t in ids]
    # The first token has nothing before it: no number, no colour; every other one its forward-pass log-probability.
    assert spans[0][2:] == [None, ""]
    shown = [float(lp) for _, _, lp, _ in spans[1:]]
    assert shown == pytest.approx([row[t].item() for row, t in zip(expected, ids[1:])], abs=1e-4)
    assert all(colour.startswith("rgba(") for *_, colour in spans[1:])
    assert "hover a token" in note
    # Hover: the token, its log-probability, and the five likeliest with the chosen (greedy: the first) marked.
    logprob = expected[third - 1, ids[third]].item()
    assert info.startswith(f"{quoted(tokenizer.decode([ids[third]]))}  logprob {logprob:.3f} ("), info
    best = expected[third - 1].topk(5)
    lines = info.splitlines()[2:]
    assert len(lines) == 5, info
    for line, token, lp in zip(lines, best.indices.tolist(), best.values.tolist()):
        assert line.startswith(f"  {quoted(tokenizer.decode([token])).ljust(14)} {lp:.3f} ("), info
    assert lines[0].endswith("\u2190 chosen") and not any(line.endswith("chosen") for line in lines[1:])
    # Switched off: the plain text again, nothing lost.
    assert plain == PROMPT + tokenizer.decode(completion_ids) and plain_spans == 0


def quoted(token: str) -> str:
    """A token as the page quotes it (JavaScript's JSON.stringify, which leaves non-ASCII as it is)."""
    return json.dumps(token, ensure_ascii=False)
