"""`main.py chat` with a run finetuned on instructions: each turn in the run's prompt style, replies ending where the style's do.

The replies are checked against greedy decoding of `style.prompt(messages)` done
here, recomputing the whole window per token, so the chat's own decoding, stop
strings and window are what is under test. Piped stdin, as tests/test_chat.py does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import randomize_weights
from test_chat import run_chat  # a helper, not a test: nothing is collected twice
from test_cli_generate import MODEL, random_model, write_run

from gptkit import GPTModel, ModelConfig
from gptkit.data.instruction import Message
from gptkit.data.instruction_encoding import encode_text
from gptkit.data.prompt_styles import AlpacaStyle, ChatStyle
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.chat import StyledChat
from gptkit.generation.loading import load_model
from gptkit.generation.samplers import Greedy
from gptkit.hookspecs import PromptStyle

STYLE = {"name": "chat", "user": "Human", "assistant": "Bot", "system": "Rules"}
N = 8  # --max-new-tokens in these tests
LONG = {**MODEL, "context_length": 64}


def styled_overrides(style: object) -> list[str]:
    return ['data.format="instruction"', f"data.prompt_style={json.dumps(style)}"]


@pytest.fixture(scope="module")
def model() -> GPTModel:
    return random_model(0)


@pytest.fixture(scope="module")
def chat_run(model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "chat", model, MODEL, styled_overrides(STYLE))


@pytest.fixture(scope="module")
def long_model() -> GPTModel:
    """A window that holds Alpaca's preamble (about 30 tokens) and a reply."""
    return randomize_weights(GPTModel(ModelConfig(**LONG)), 1)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def alpaca_run(long_model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "alpaca", long_model, LONG, styled_overrides("alpaca"))


def greedy_styled_reply(model: GPTModel, ids: Sequence[int], n: int, stops: Sequence[str]) -> tuple[str, int, str]:
    """Greedy text after `ids` up to the first stop string or <|endoftext|>, without its leading space;
    how many tokens that took (the one that ended it included); and "stop", or "length" when `n` ran out."""
    tok = Tokenizer()
    tokens, new = list(ids), []
    text = ""
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([tokens[-model.cfg.context_length :]]))[0, -1].argmax())
            tokens.append(nxt)
            if nxt == tok.eot_id:
                return text.lstrip(), len(new) + 1, "stop"
            new.append(nxt)
            text = tok.decode_bytes(new).decode("utf-8", errors="replace")
            hits = [text.index(s) for s in stops if s in text]
            if hits:
                return text[: min(hits)].lstrip(), len(new), "stop"
    return text.lstrip(), len(new), "length"


def expected_reply(model: GPTModel, style: PromptStyle, messages: Sequence[Message], n: int = N) -> str:
    return greedy_styled_reply(model, encode_text(style.prompt(messages), Tokenizer()), n, style.stop)[0]


def test_each_turn_is_the_runs_style_of_the_conversation_so_far(monkeypatch: pytest.MonkeyPatch, chat_run: Path, model: GPTModel) -> None:
    style = ChatStyle(user="Human", assistant="Bot", system="Rules")
    first = expected_reply(model, style, [Message("user", "hello there")])
    second = expected_reply(model, style, [Message("user", "hello there"), Message("assistant", first), Message("user", "and you")])
    code, out, err = run_chat(monkeypatch, ["--run", str(chat_run), "--max-new-tokens", str(N)], "hello there\nand you\n")
    assert (code, err) == (0, "")
    # The terminal labels the turns its own way; the model saw "Human:" / "Bot:" and the marker after each reply.
    assert out == f"User: hello there\nAssistant: {first}\nUser: and you\nAssistant: {second}\n"
    assert first and second != expected_reply(model, style, [Message("user", "and you")]), "the first turn should change the second reply"


def test_a_system_message_comes_first(monkeypatch: pytest.MonkeyPatch, chat_run: Path, model: GPTModel) -> None:
    style = ChatStyle(user="Human", assistant="Bot", system="Rules")
    reply = expected_reply(model, style, [Message("system", "be brief"), Message("user", "hi")])
    code, out, _ = run_chat(monkeypatch, ["--run", str(chat_run), "--max-new-tokens", str(N), "--system", "be brief"], "hi\n")
    assert code == 0 and out == f"User: hi\nAssistant: {reply}\n"


def test_a_one_message_style_answers_each_line_on_its_own(monkeypatch: pytest.MonkeyPatch, alpaca_run: Path, long_model: GPTModel) -> None:
    style = AlpacaStyle()
    replies = [expected_reply(long_model, style, [Message("user", line)]) for line in ("first", "second")]
    code, out, err = run_chat(monkeypatch, ["--run", str(alpaca_run), "--max-new-tokens", str(N)], "first\nsecond\n")
    assert code == 0
    assert out == f"User: first\nAssistant: {replies[0]}\nUser: second\nAssistant: {replies[1]}\n"
    assert err == "(this run's prompt style takes one message at a time: each line is answered on its own)\n"


def test_the_oldest_exchanges_are_dropped_whole_when_the_prompt_would_not_fit(chat_run: Path) -> None:
    loaded = load_model(chat_run)
    assert loaded.prompt_style is not None and loaded.prompt_style_spec == STYLE
    tok = loaded.tokenizer
    chat = StyledChat(loaded.model, tok, [Greedy()], max_new_tokens=4, style=loaded.prompt_style)
    lines = ["hi", "what now", "ok", "tell me more", "and then"]
    for line in lines:
        prompt = chat.prompt_ids(line)
        kept = chat.exchanges[chat.forgotten :]
        # As many of the newest exchanges as fit, whole, then the new line: the style's own text of them.
        messages = [m for exchange in kept for m in exchange] + [Message("user", line)]
        assert prompt == encode_text(loaded.prompt_style.prompt(messages), tok)
        assert len(prompt) <= chat.budget
        if chat.forgotten:
            one_more = [m for m in chat.exchanges[chat.forgotten - 1]] + messages
            assert len(encode_text(loaded.prompt_style.prompt(one_more), tok)) > chat.budget
        reply = "".join(chat.reply(line))
        assert chat.exchanges[-1] == (Message("user", line), Message("assistant", reply.rstrip()))
    assert chat.forgotten > 0  # the 32-token window is small enough that the first exchanges fell out


def test_the_newline_run_applies_only_when_asked(monkeypatch: pytest.MonkeyPatch, chat_run: Path, model: GPTModel) -> None:
    style = ChatStyle(user="Human", assistant="Bot", system="Rules")
    ids = encode_text(style.prompt([Message("user", "hi")]), Tokenizer())
    _, out, _ = run_chat(monkeypatch, ["--run", str(chat_run), "--max-new-tokens", "20", "--stop-newlines", "1"], "hi\n")
    reply = greedy_styled_reply(model, ids, 20, [*style.stop, "\n"])[0]
    assert out == f"User: hi\nAssistant: {reply}\n"


def test_a_line_holding_the_end_of_text_marker_is_not_sent(monkeypatch: pytest.MonkeyPatch, chat_run: Path, model: GPTModel) -> None:
    style = ChatStyle(user="Human", assistant="Bot", system="Rules")
    code, out, err = run_chat(monkeypatch, ["--run", str(chat_run), "--max-new-tokens", str(N)], "a <|endoftext|> b\nhi\n")
    assert code == 0
    assert out == f"User: a <|endoftext|> b\nUser: hi\nAssistant: {expected_reply(model, style, [Message('user', 'hi')])}\n"
    assert err == "(not sent: the line contains '<|endoftext|>', which the prompt style writes to end each reply; remove it)\n"


def test_a_system_message_for_a_run_without_a_prompt_style_is_refused(monkeypatch: pytest.MonkeyPatch, model: GPTModel, tmp_path: Path) -> None:
    plain = write_run(tmp_path / "plain", model, MODEL)
    code, out, err = run_chat(monkeypatch, ["--run", str(plain), "--system", "be brief"], "hi\n")
    assert (code, out) == (2, "")
    assert err == (
        f"error: --system needs a run finetuned on instructions (data.format instruction, with a prompt style); "
        f"{plain} (step_000002) continues text\n"
    )


def test_a_classifier_run_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    section = {**MODEL, "head": {"name": "last_token", "num_classes": 2}}
    # A classification run's config, as training writes it: the format and the label names with the head.
    run = write_run(tmp_path / "clf", GPTModel(ModelConfig(**section)), section, ["data.format=classification", 'data.labels=["no", "yes"]'])
    code, out, err = run_chat(monkeypatch, ["--run", str(run)], "hi\n")
    assert (code, out) == (2, "")
    assert err == f"error: {run} is a classifier (model.head last_token); use python main.py classify\n"
