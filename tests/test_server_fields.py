"""OpenAI's completion fields the server does not implement, prompts it cannot take, max_tokens null, other models.

The fields it does implement (`n`, `echo`, `logprobs`, token-id prompts and lists of
prompts, `max_tokens` 0) are tests/test_server_scoring.py's.

Each refusal is pinned word for word: a client's user reads these messages, and
docs/errors.md quotes them. Over real loopback HTTP, with test_server.py's fixtures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from test_server import (  # fixtures and helpers, not tests: nothing here is collected twice
    PROMPT,
    client,
    greedy_ids,
    model,
    request,
    sse_events,
    start,
    tokenizer,
)

from gptkit import GPTModel
from gptkit.data.tokenizer import Tokenizer
from gptkit.serving.server import CompletionServer

__all__ = ["model", "start", "tokenizer"]  # fixtures, used by name


def error_of(status: int, reply: Any) -> tuple[int, dict[str, Any]]:
    assert isinstance(reply, dict) and set(reply) == {"error"}, reply
    return status, reply["error"]


def bad_request(message: str, param: str | None) -> tuple[int, dict[str, Any]]:
    return 400, {"message": message, "type": "invalid_request_error", "param": param, "code": None}


# --- fields the server does not implement ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"best_of": 3}, "best_of", "best_of is 3, but this server ranks no candidates: leave it out (or 1), and ask for several choices with n"),
        ({"best_of": 2, "n": 2}, "best_of", "best_of is 2, but this server ranks no candidates: leave it out (or 1), and ask for several choices with n"),
        ({"suffix": "\n    return x"}, "suffix", "suffix is not supported: this server continues the prompt, it does not fill in text before a suffix"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "logit_bias is not supported (leave it out or send {})"),
        ({"presence_penalty": 0.5}, "presence_penalty",
         "presence_penalty is 0.5, but only 0 is supported: use repetition_penalty instead (above 1 discourages tokens already seen)"),
        ({"frequency_penalty": -1}, "frequency_penalty",
         "frequency_penalty is -1, but only 0 is supported: use repetition_penalty instead (above 1 discourages tokens already seen)"),
    ],
)
def test_each_unimplemented_field_is_refused_by_name(
    start: Callable[..., CompletionServer], model: GPTModel, fields: dict[str, Any], param: str, message: str,
) -> None:
    server = start(model)
    for path in ("/v1/completions", "/api/generate"):
        assert error_of(*request(server, "POST", path, {"prompt": PROMPT, "max_tokens": 2, **fields})) == bad_request(message, param)


def test_several_unimplemented_fields_are_named_in_one_reply(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    body = {"prompt": PROMPT, "best_of": 3, "suffix": "x", "logit_bias": {"50256": -100}, "presence_penalty": 1}
    status, error = error_of(*request(start(model), "POST", "/v1/completions", body))
    assert (status, error["param"]) == (400, "best_of")
    assert error["message"] == (
        "best_of is 3, but this server ranks no candidates: leave it out (or 1), and ask for several choices with n; "
        "suffix is not supported: this server continues the prompt, it does not fill in text before a suffix; "
        "logit_bias is not supported (leave it out or send {}); "
        "presence_penalty is 1, but only 0 is supported: use repetition_penalty instead (above 1 discourages tokens already seen)"
    )


def test_openai_client_sees_an_unimplemented_field_as_a_bad_request(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError, match="best_of is 3, but this server ranks no candidates"):
        client(start(model)).completions.create(model="gptkit", prompt=PROMPT, max_tokens=2, best_of=3)


def test_neutral_values_and_user_metadata_are_accepted(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    """What clients send as defaults changes nothing, and `user` (OpenAI: metadata) is ignored."""
    expected = tokenizer.decode(greedy_ids(model, tokenizer, PROMPT, 6))
    neutral = {
        "n": 1, "best_of": 1, "echo": False, "logprobs": None, "suffix": "", "logit_bias": {},
        "presence_penalty": 0, "frequency_penalty": 0.0, "user": "user-1234",
    }
    status, reply = request(start(model), "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, **neutral})
    assert status == 200, reply
    assert reply["choices"][0]["text"] == expected
    null_suffix = {"suffix": None, "logit_bias": None, "best_of": None, "presence_penalty": None}
    status, reply = request(start(model), "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, **null_suffix})
    assert (status, reply["choices"][0]["text"]) == (200, expected)


def test_badly_typed_openai_fields_are_refused_as_pydantic_words_it(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model)
    assert error_of(*request(server, "POST", "/v1/completions", {"prompt": PROMPT, "user": 5})) == bad_request(
        "user: Input should be a valid string", "user")
    assert error_of(*request(server, "POST", "/v1/completions", {"prompt": PROMPT, "presence_penalty": 3})) == bad_request(
        "presence_penalty: Input should be less than or equal to 2", "presence_penalty")


# --- prompts it cannot take ------------------------------------------------------------------

SHAPES = "a string, a list of strings, a list of token ids, or a list of lists of token ids"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (15496, f"the prompt must be {SHAPES}, got a number"),
        (None, f"the prompt must be {SHAPES}, got null"),
        ({"text": "Hello"}, f"the prompt must be {SHAPES}, got an object"),
        ([], f"the prompt is an empty list; expected {SHAPES}"),
        (["Hello", 995], f"the prompt list mixes strings and token ids; expected {SHAPES}"),
        ([[15496], "Hello"], f"the prompt list mixes lists of token ids and strings; expected {SHAPES}"),
        (["Hello", None], "item 1 of the prompt list is null; expected a string, a token id or a list of token ids"),
        ([[15496], []], "item 1 of the prompt list is an empty list; a prompt of token ids needs at least one"),
        ([[15496, 2.5]], "item 0 of the prompt list holds 2.5, which is not a token id (a whole number)"),
        ([[15496, True]], "item 0 of the prompt list holds true, which is not a token id (a whole number)"),
    ],
)
def test_a_prompt_of_another_shape_gets_one_plain_message(
    start: Callable[..., CompletionServer], model: GPTModel, prompt: Any, message: str,
) -> None:
    status, error = error_of(*request(start(model), "POST", "/v1/completions", {"prompt": prompt}))
    assert (status, error) == bad_request(f"prompt: {message}", "prompt")
    # pydantic's union would name each alternative it tried ("str", "list[str]") and its docs' URL.
    assert "list[str]" not in error["message"] and "http" not in error["message"]


# --- max_tokens null ---------------------------------------------------------------------------


def test_max_tokens_null_means_the_servers_cap(start: Callable[..., CompletionServer], model: GPTModel, tokenizer: Tokenizer) -> None:
    cap = 9
    ids = greedy_ids(model, tokenizer, PROMPT, cap)
    assert len(ids) == cap, "the tiny model must not end its text before the cap for this test to mean anything"
    server = start(model, max_new_tokens_cap=cap)
    status, reply = request(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": None, "temperature": 0})
    assert status == 200, reply
    assert reply["choices"][0] == {"text": tokenizer.decode(ids), "index": 0, "logprobs": None, "finish_reason": "length"}
    assert reply["usage"]["completion_tokens"] == cap
    status, text = request(server, "POST", "/api/generate", {"prompt": PROMPT, "max_tokens": None, "temperature": 0})
    assert sse_events(text)[0]["settings"]["max_tokens"] == cap
    # Left out, it is still OpenAI's default of 16, which this cap refuses as before.
    status, reply = request(server, "POST", "/v1/completions", {"prompt": PROMPT})
    assert error_of(status, reply) == bad_request("max_tokens is 16; this server allows at most 9", "max_tokens")


# --- other models ------------------------------------------------------------------------------


def test_a_request_for_another_model_is_404_model_not_found(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    server = start(model, model_name="tiny")
    for path in ("/v1/completions", "/api/generate"):
        status, reply = request(server, "POST", path, {"model": "gpt-3.5-turbo-instruct", "prompt": PROMPT, "max_tokens": 2})
        assert (status, reply) == (404, {"error": {
            "message": "the model 'gpt-3.5-turbo-instruct' does not exist on this server; it serves 'tiny' (GET /v1/models)",
            "type": "invalid_request_error", "param": "model", "code": "model_not_found",
        }})
    # The served name, or none at all (the page sends none), is served.
    for body in ({"model": "tiny"}, {}):
        status, reply = request(server, "POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, **body})
        assert status == 200 and reply["model"] == "tiny", reply


def test_openai_client_sees_another_model_as_not_found(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.NotFoundError) as err:
        client(start(model, model_name="tiny")).completions.create(model="gpt2-xl", prompt=PROMPT, max_tokens=2)
    assert err.value.code == "model_not_found" and err.value.param == "model"
    assert json.loads(err.value.response.text)["error"]["type"] == "invalid_request_error"
