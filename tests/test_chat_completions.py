"""POST /v1/chat/completions and GET /v1/models, through OpenAI's own client and over raw HTTP.

The model is a tiny random one in a run directory finetuned "on instructions"
(config.json: data.format = "instruction", a chat prompt style with role names
of its own), loaded as `main.py serve` loads it. Every reply is checked against
greedy decoding of `style.prompt(messages)` done here (test_chat_style's
helper, recomputing the whole window per token), cut at the first stop string,
and its usage against the token counts that gives. Server fixtures come from
tests/test_server.py.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_chat import Bytes, Scripted  # helpers, not tests: nothing is collected twice
from test_chat_style import STYLE, greedy_styled_reply, styled_overrides
from test_cli_generate import MODEL, random_model, write_run
from test_server import (
    TIMEOUT,
    client,
    request,
    serve_cli,
    sse_events,
    start,
    tiny_model,
    tokenizer,
)

from gptkit import GPTModel
from gptkit.data.instruction import Message
from gptkit.data.instruction_encoding import encode_text
from gptkit.data.prompt_styles import AlpacaStyle, ChatStyle
from gptkit.data.tokenizer import Tokenizer
from gptkit.generation.loading import load_model
from gptkit.hookspecs import PromptStyle
from gptkit.serving.engine import ServedStyle
from gptkit.serving.server import CompletionServer

__all__ = ["start", "tokenizer"]  # fixtures, used by name

RUN_STYLE = ChatStyle(user="Human", assistant="Bot", system="Rules")  # STYLE, as the run builds it
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Hello there"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "What is a tensor?"},
]
N = 20  # max_tokens of these requests


@pytest.fixture(scope="module")
def model() -> GPTModel:
    return random_model(0)


@pytest.fixture(scope="module")
def styled_run(model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "styled", model, MODEL, styled_overrides(STYLE))


@pytest.fixture()
def served(start: Callable[..., CompletionServer], styled_run: Path) -> CompletionServer:
    """The styled run as `main.py serve` serves it: its model, chain and prompt style."""
    loaded = load_model(styled_run)
    return start(
        loaded.model, model_name="styled", samplers=loaded.samplers,
        chat_style=ServedStyle.of(loaded.prompt_style, loaded.prompt_style_spec),
    )


def messages_of(conversation: Sequence[dict[str, str]]) -> list[Message]:
    return [Message(m["role"], m["content"]) for m in conversation]


def expected(model: GPTModel, style: PromptStyle, conversation: Sequence[dict[str, str]], stop: Sequence[str] = ()) -> tuple[str, int, int, str]:
    """(content, prompt tokens, completion tokens, finish reason) of a greedy reply of N tokens at most."""
    ids = encode_text(style.prompt(messages_of(conversation)), Tokenizer())
    content, generated, finish = greedy_styled_reply(model, ids, N, [*style.stop, *stop])
    return content, len(ids), generated, finish


# --- replies ------------------------------------------------------------------------------------


def test_openai_client_chat_reply_is_greedy_decoding_of_the_runs_style(served: CompletionServer, model: GPTModel) -> None:
    content, n_prompt, n_completion, finish = expected(model, RUN_STYLE, CONVERSATION)
    assert content, "an empty reply would make this test mean little"
    reply = client(served).chat.completions.create(model="styled", messages=CONVERSATION, max_tokens=N, temperature=0)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.model == "styled" and reply.id.startswith("chatcmpl-")
    [choice] = reply.choices
    assert (choice.index, choice.message.role, choice.message.content, choice.finish_reason) == (0, "assistant", content, finish)
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (n_prompt, n_completion, n_prompt + n_completion)


def test_openai_client_streams_the_same_reply(served: CompletionServer, model: GPTModel) -> None:
    content, n_prompt, n_completion, finish = expected(model, RUN_STYLE, CONVERSATION)
    chunks = list(client(served).chat.completions.create(
        model="styled", messages=CONVERSATION, max_completion_tokens=N, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True},
    ))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    with_choices = [c.choices[0] for c in chunks if c.choices]
    assert with_choices[0].delta.role == "assistant" and not with_choices[0].delta.content
    texts = [c.delta.content or "" for c in with_choices]
    assert len([t for t in texts if t]) >= 2, "the reply came in one piece, not streamed"
    assert "".join(texts) == content
    assert [c.finish_reason for c in with_choices] == [None] * (len(with_choices) - 1) + [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (n_prompt, n_completion)


def test_a_request_stop_string_cuts_the_reply(served: CompletionServer, model: GPTModel) -> None:
    full, *_ = expected(model, RUN_STYLE, CONVERSATION)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    content, _, n_completion, finish = expected(model, RUN_STYLE, CONVERSATION, stop=[stop])
    assert finish == "stop" and 0 < len(content) < len(full)
    api = client(served)
    reply = api.chat.completions.create(model="styled", messages=CONVERSATION, max_tokens=N, temperature=0, stop=stop)  # type: ignore[arg-type]
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (content, "stop")
    assert reply.usage is not None and reply.usage.completion_tokens == n_completion
    chunks = list(api.chat.completions.create(model="styled", messages=CONVERSATION, max_tokens=N, temperature=0, stop=[stop], stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_styles_own_stop_string_ends_the_reply(start: Callable[..., CompletionServer]) -> None:
    # A model that answers, then writes the next user turn itself: the style's "\nHuman:" ends the reply there.
    script = " Sure.\nHuman: and now I answer myself"
    server = start(Scripted(script), tokenizer=Bytes(), chat_style=ServedStyle(RUN_STYLE, STYLE, own=True))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "temperature": 0}
    status, reply = request(server, "POST", "/v1/chat/completions", body)
    assert status == 200, reply
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": "Sure."}
    assert reply["choices"][0]["finish_reason"] == "stop"
    prompt = Bytes().encode("Human: hi\nBot:")
    assert reply["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": len(" Sure.\nHuman:"), "total_tokens": len(prompt) + 13}
    status, text = request(server, "POST", "/v1/chat/completions", {**body, "stream": True})
    assert status == 200 and text.endswith("data: [DONE]\n\n")
    events = sse_events(text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "Sure."
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_a_model_without_a_prompt_style_is_served_in_the_builtin_chat_style(start: Callable[..., CompletionServer]) -> None:
    model = tiny_model()
    server = start(model, model_name="plain")
    conversation = [{"role": "user", "content": "Hello there"}]
    content, n_prompt, n_completion, _ = expected(model, ChatStyle(), conversation)
    api = client(server)
    reply = api.chat.completions.create(model="plain", messages=conversation, max_tokens=N, temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == content
    assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (n_prompt, n_completion)
    [card] = api.models.list()
    assert (card.id, card.object, card.owned_by) == ("plain", "model", "gptkit")
    extra = card.model_extra or {}
    assert extra["prompt_style"] == {"name": "chat", "user": "User", "assistant": "Assistant", "system": "System"}
    assert extra["prompt_style_source"] == "default"
    note = "the model has no prompt style of its own (it was not finetuned on instructions): chat messages are written in the built-in 'chat' style"
    assert extra["chat_note"] == note
    status, info = request(server, "GET", "/api/info")
    assert status == 200 and (info["prompt_style_source"], info["chat_note"]) == ("default", note)


def test_models_list_and_retrieve_name_the_runs_own_style(served: CompletionServer) -> None:
    api = client(served)
    [card] = api.models.list()
    assert card.id == "styled"
    assert (card.model_extra or {})["prompt_style"] == STYLE
    assert (card.model_extra or {})["prompt_style_source"] == "model"
    assert api.models.retrieve("styled").id == "styled"


def test_serve_command_applies_the_runs_prompt_style(styled_run: Path, model: GPTModel) -> None:
    content, n_prompt, n_completion, _ = expected(model, RUN_STYLE, CONVERSATION)
    with serve_cli("--run", str(styled_run)) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            conn.request("GET", "/v1/models")
            card = json.loads(conn.getresponse().read())["data"][0]
            body = {"model": "styled", "messages": CONVERSATION, "max_tokens": N, "temperature": 0}
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            reply = json.loads(conn.getresponse().read())
        finally:
            conn.close()
    assert (card["id"], card["prompt_style"], card["prompt_style_source"]) == ("styled", STYLE, "model")
    assert reply["choices"][0]["message"]["content"] == content
    assert (reply["usage"]["prompt_tokens"], reply["usage"]["completion_tokens"]) == (n_prompt, n_completion)


# --- requests refused ---------------------------------------------------------------------------

USER = {"role": "user", "content": "hi"}


def bad(message: str, param: str | None, status: int = 400, code: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ({"max_tokens": 4}, bad("messages: Field required", "messages")),
        ({"messages": "hi"}, bad("messages: expected a list of {role, content} objects, got a string", "messages")),
        ({"messages": []}, bad("messages: expected at least one message, got an empty list", "messages")),
        ({"messages": ["hi"]}, bad("messages.0: expected a {role, content} object, got a string", "messages.0")),
        ({"messages": [{"content": "hi"}]}, bad("messages.0.role: Field required", "messages.0.role")),
        ({"messages": [USER, {"role": "assistant"}]}, bad("messages.1.content: Field required", "messages.1.content")),
        ({"messages": [{"role": "bot", "content": "hi"}]},
         bad("messages.0.role: unknown role 'bot'; expected 'system', 'user' or 'assistant' ('developer' is read as 'system')", "messages.0.role")),
        ({"messages": [USER, {"role": "tool", "content": "42"}]},
         bad("messages.1.role: tool messages are not supported: this server calls no tools", "messages.1.role")),
        ({"messages": [{"role": "user", "content": None}]},
         bad("messages.0.content: the content must be a string (or a list of text parts), got null", "messages.0.content")),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         bad("messages.0.content: only text content is supported, got a part of type 'image_url'", "messages.0.content")),
        ({"messages": [{"role": "user", "content": "a <|endoftext|> b"}]},
         bad("messages.0.content: the content contains '<|endoftext|>', which the prompt style writes to end each reply; remove it", "messages.0.content")),
        ({"messages": [USER, {"role": "assistant", "content": "hello"}]},
         bad("messages: a prompt ends with the message the reply answers (a user or system message); got roles: user, assistant", "messages")),
        ({"messages": [{"role": "user", "content": "word " * 70}]}, bad("the conversation is 76 tokens; this server allows at most 64", "messages", code="context_length_exceeded")),
        ({"messages": [USER], "max_completion_tokens": 600}, bad("max_completion_tokens is 600; this server allows at most 512", "max_completion_tokens")),
        ({"messages": [USER], "max_tokens": 600}, bad("max_tokens is 600; this server allows at most 512", "max_tokens")),
        ({"messages": [USER], "max_tokens": 5, "max_completion_tokens": 5},
         bad("max_tokens and max_completion_tokens are one setting: give one of them", "max_tokens")),
        ({"messages": [USER], "n": 2}, bad("n is 2, but this server returns one choice per request: send 2 requests (with different seeds) instead", "n")),
        ({"messages": [USER], "logprobs": True},
         bad("logprobs is not supported: this server returns no log probabilities (leave it out or false)", "logprobs")),
        ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]},
         bad("tools are not supported: this model calls no functions (leave tools out)", "tools")),
        ({"messages": [USER], "response_format": {"type": "json_object"}},
         bad('response_format is not supported: replies are plain text (leave it out or {"type": "text"})', "response_format")),
        ({"messages": [USER], "temperature": 3}, bad("temperature: Input should be less than or equal to 2", "temperature")),
        ({"messages": [USER], "model": "gpt-4o"},
         bad("the model 'gpt-4o' does not exist on this server; it serves 'gptkit' (GET /v1/models)", "model", 404, "model_not_found")),
    ],
)
def test_bad_chat_requests_are_answered_naming_the_field(start: Callable[..., CompletionServer], body: dict[str, Any], answer: tuple[int, dict[str, Any]]) -> None:
    assert request(start(tiny_model()), "POST", "/v1/chat/completions", body) == answer


def test_neutral_values_are_accepted(start: Callable[..., CompletionServer]) -> None:
    # What clients send as defaults asks for nothing this server lacks; "developer" is the system role's newer name.
    body = {
        "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 2, "n": 1, "logprobs": False, "tool_choice": "none", "response_format": {"type": "text"},
        "modalities": ["text"], "presence_penalty": 0, "user": "someone",
    }
    status, reply = request(start(tiny_model()), "POST", "/v1/chat/completions", body)
    assert status == 200, reply
    assert reply["usage"]["prompt_tokens"] == len(Tokenizer().encode("System: be brief\nUser: hi\nAssistant:"))


def test_a_one_message_style_refuses_a_conversation(start: Callable[..., CompletionServer]) -> None:
    server = start(tiny_model(), chat_style=ServedStyle(AlpacaStyle(), {"name": "alpaca"}, own=True))
    body = {"messages": [USER, {"role": "assistant", "content": "hello"}, USER]}
    assert request(server, "POST", "/v1/chat/completions", body) == bad(
        "messages: prompt style 'alpaca' takes one user message, after an optional system message; got roles: user, assistant, user; "
        "use prompt style 'chat' for conversations", "messages",
    )
    status, reply = request(server, "POST", "/v1/chat/completions", {"messages": [USER], "max_tokens": 2})
    assert status == 200 and reply["usage"]["prompt_tokens"] == len(Tokenizer().encode(AlpacaStyle().prompt([Message("user", "hi")])))


def test_openai_client_sees_bad_chat_requests_as_errors(start: Callable[..., CompletionServer]) -> None:
    openai = pytest.importorskip("openai")
    api = client(start(tiny_model()))
    with pytest.raises(openai.BadRequestError, match="unknown role 'bot'"):
        api.chat.completions.create(model="gptkit", messages=[{"role": "bot", "content": "hi"}])  # type: ignore[misc,list-item]
    with pytest.raises(openai.NotFoundError, match="does not exist on this server"):
        api.chat.completions.create(model="gpt-4o", messages=[USER])  # type: ignore[list-item]
