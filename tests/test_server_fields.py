"""OpenAI's completion fields the server does not implement, prompts it cannot take, max_tokens null, other models.

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
        ({"n": 2}, "n", "n is 2, but this server returns one choice per request: send 2 requests (with different seeds) instead"),
        ({"best_of": 3}, "best_of", "best_of is 3, but this server generates one completion per request and ranks none"),
        ({"echo": True}, "echo", "echo is not supported: the reply holds the completion only (prepend the prompt yourself)"),
        ({"logprobs": 1}, "logprobs", "logprobs is not supported: this server returns no log probabilities (leave it out or null)"),
        ({"logprobs": 0}, "logprobs", "logprobs is not supported: this server returns no log probabilities (leave it out or null)"),
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
    status, error = error_of(*request(start(model), "POST", "/v1/completions", {"prompt": PROMPT, "echo": True, "logprobs": 2, "n": 3}))
    assert (status, error["param"]) == (400, "n")
    assert error["message"] == (
        "n is 3, but this server returns one choice per request: send 3 requests (with different seeds) instead; "
        "echo is not supported: the reply holds the completion only (prepend the prompt yourself); "
        "logprobs is not supported: this server returns no log probabilities (leave it out or null)"
    )


def test_openai_client_sees_an_unimplemented_field_as_a_bad_request(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError, match="logprobs is not supported"):
        client(start(model)).completions.create(model="gptkit", prompt=PROMPT, max_tokens=2, logprobs=1)


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

TEXT_PROMPT = "prompt: the prompt must be a string (or a list of one string); this server does not take token ids, got {kind}"


@pytest.mark.parametrize(
    ("prompt", "kind"),
    [
        ([15496, 995], "a list of numbers (token ids)"),
        ([[15496, 995]], "a list of lists"),
        (15496, "a number"),
        (None, "null"),
        ({"text": "Hello"}, "an object"),
        (["Hello", 995], "a list"),
    ],
)
def test_a_prompt_that_is_not_text_gets_one_plain_message(
    start: Callable[..., CompletionServer], model: GPTModel, prompt: Any, kind: str,
) -> None:
    status, error = error_of(*request(start(model), "POST", "/v1/completions", {"prompt": prompt}))
    assert (status, error) == bad_request(TEXT_PROMPT.format(kind=kind), "prompt")
    # pydantic's union would name each alternative it tried ("str", "list[str]") and its docs' URL.
    assert "list[str]" not in error["message"] and "http" not in error["message"]


def test_a_list_of_prompts_is_still_one_prompt_per_request(start: Callable[..., CompletionServer], model: GPTModel) -> None:
    status, error = error_of(*request(start(model), "POST", "/v1/completions", {"prompt": ["one", "two"]}))
    assert (status, error) == bad_request("prompt: one prompt per request, got a list of 2", "prompt")


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
