"""The demo page's chat mode in headless Chromium: type a message, watch the reply stream in, keep the conversation.

Launch-or-skip, the slowed-down served model and the page helpers are
tests/test_browser.py's; the expected reply is greedy decoding of the chat
style's prompt done here (tests/test_chat_style.py's helper).
"""

from __future__ import annotations

import json
from typing import Any

from test_browser import (
    TIMEOUT_MS,
    browser_page,
    playwright_api,
    server,
    serving,
    tiny_model,
)
from test_chat_style import greedy_styled_reply

from gptkit.data.instruction import Message
from gptkit.data.instruction_encoding import encode_text
from gptkit.data.prompt_styles import ChatStyle
from gptkit.data.tokenizer import Tokenizer
from gptkit.serving.engine import ServedStyle
from gptkit.serving.server import CompletionServer

__all__ = ["playwright_api", "server"]  # fixtures, used by name

MAX_TOKENS = 30
LONG = ("tell me more about that, " * 4).strip()


def greedy_chat_reply(messages: list[Message]) -> str:
    """What the served tiny model answers greedily, in the built-in chat style the server falls back to."""
    style = ChatStyle()
    return greedy_styled_reply(tiny_model(), encode_text(style.prompt(messages), Tokenizer()), MAX_TOKENS, style.stop)[0]


def test_chat_mode_streams_a_reply_and_keeps_the_conversation(playwright_api: tuple[Any, Any], server: CompletionServer) -> None:
    entry, expect = playwright_api
    with browser_page(entry, server.url) as page:
        expect(page.locator("#model")).to_contain_text("tiny", timeout=TIMEOUT_MS)
        sent: list[dict[str, Any]] = []
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)
        expect(page.locator("#prompt")).to_be_visible()  # a model with no prompt style opens in complete mode
        page.check("#mode-chat")
        expect(page.locator("#chat-input")).to_be_visible()
        expect(page.locator("#prompt")).to_be_hidden()
        expect(page.locator("#chat-note")).to_contain_text("built-in 'chat' style")
        page.fill("#temperature", "0")
        page.fill("#max_tokens", str(MAX_TOKENS))
        # The reply bubble's length at every change, recorded from inside the page so no update is missed.
        page.evaluate("""() => {
            window.lengths = [];
            const log = document.getElementById('chat-log');
            new MutationObserver(() => {
                const replies = log.querySelectorAll('.msg.assistant .text');
                if (replies.length) window.lengths.push(replies[replies.length - 1].textContent.length);
            }).observe(log, {childList: true, characterData: true, subtree: true});
        }""")
        page.fill("#chat-input", "Hello there")
        page.press("#chat-input", "Enter")
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        lengths: list[int] = page.evaluate("window.lengths")
        first = page.locator(".msg.assistant .text").last.text_content() or ""
        settings = page.text_content("#settings") or ""
        page.fill("#chat-input", "And then?")
        page.click("#send")
        expect(page.locator(".msg")).to_have_count(4)
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        second = page.locator(".msg.assistant .text").last.text_content() or ""
        users = page.locator(".msg.user .text").all_text_contents()
        error = page.text_content("#error")
        # A third turn too long for the 64-token context with both exchanges before it: the oldest go unsent.
        page.fill("#chat-input", LONG)
        page.click("#send")
        expect(page.locator(".msg")).to_have_count(6)
        expect(page.locator("#settings")).to_contain_text("finished", timeout=TIMEOUT_MS)
        faded = page.locator(".msg.forgotten").count()
        after_overflow = page.text_content("#settings") or ""
        page.click("#new-chat")
        expect(page.locator(".msg")).to_have_count(0)
    growth = [n for n in lengths if n > 0]
    assert len(set(growth)) >= 3, f"the reply did not stream in: lengths seen {lengths}"
    assert growth == sorted(growth), f"the reply shrank while streaming: {lengths}"
    assert first == greedy_chat_reply([Message("user", "Hello there")])
    assert "finished: length" in settings or "finished: stop" in settings, settings
    assert users == ["Hello there", "And then?"] and error == ""
    # The second turn sends the first exchange back, as the page showed it, then the new message.
    two_turns = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    assert [s["messages"] for s in sent[:2]] == [two_turns[:1], two_turns]
    assert all(s["stream"] is True and s["temperature"] == 0 and s["max_tokens"] == MAX_TOKENS for s in sent)
    assert second == greedy_chat_reply([Message(**m) for m in two_turns])
    # The third turn was sent whole first, refused as too long, then without whole exchanges from the oldest on.
    full = [*two_turns, {"role": "assistant", "content": second}, {"role": "user", "content": LONG}]
    retries = [s["messages"] for s in sent[2:]]
    assert retries[0] == full and len(retries) >= 2
    assert all(r == full[len(full) - len(r) :] and len(r) % 2 == 1 for r in retries), retries
    assert faded == len(full) - len(retries[-1]) and f"no longer sees the first {faded // 2} exchange(s)" in after_overflow


def test_a_refused_message_goes_back_into_the_input(playwright_api: tuple[Any, Any]) -> None:
    entry, expect = playwright_api
    own = ServedStyle(ChatStyle(), {"name": "chat", "user": "User", "assistant": "Assistant", "system": "System"}, own=True)
    with serving(tiny_model(), chat_style=own) as served, browser_page(entry, served.url) as page:
        # A model with a prompt style of its own is meant to be talked to: its page opens in chat mode.
        expect(page.locator("#chat-input")).to_be_visible()
        expect(page.locator("#chat-note")).to_contain_text("the model's own prompt style 'chat'", timeout=TIMEOUT_MS)
        page.fill("#chat-input", "a <|endoftext|> b")
        page.click("#send")
        expect(page.locator("#error")).to_contain_text("contains '<|endoftext|>'", timeout=TIMEOUT_MS)
        expect(page.locator(".msg")).to_have_count(0)
        assert page.input_value("#chat-input") == "a <|endoftext|> b"
