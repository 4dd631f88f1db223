"""The body of an OpenAI-style completion request: its schema, its errors, its samplers.

`GenerationFields` are the fields every generation request shares (model,
samplers, stop strings, seed, streaming, how many choices, OpenAI's fields this
server refuses); `CompletionRequest` is what `POST /v1/completions` (and the demo
page's `/api/generate`) accept, one prompt or several (text or token ids), echo and
log probabilities, and those fields, validated strictly by pydantic
(`gptkit.serving.chat_schema` adds the chat request on the same base);
`ApiError` is how any problem is answered, in OpenAI's error shape. The samplers
a request's fields amount to are `gptkit.serving.request_sampling`'s. No HTTP
here: `gptkit.serving.server` does that.

OpenAI's fields this server does not implement are refused by name
(`unsupported`), not ignored: a client asking for a ranking of candidates
(`best_of`), a suffix, biased logits or OpenAI's penalties must not get a reply
that silently lacks them.
`user` is accepted and ignored: OpenAI documents it as metadata about the
caller, which changes nothing in the completion.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from gptkit.errors import problems_line, validation_problems

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_CHOICES = 128  # OpenAI's bound on n; here on prompts x n, all generated within one request's slot
# OpenAI allows 0 to 5 alternatives per token, vLLM 20 by default: clients written for either fit.
MAX_LOGPROBS = 20

# The request's sampler fields, and the value of each that switches its sampler off.
SAMPLER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
NEUTRAL_SAMPLING: dict[str, float] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


def json_kind(value: Any) -> str:
    """How a JSON value reads in a message: "a number", "a list of numbers", ..."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", dict: "an object", type(None): "null"}
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "a list of numbers (token ids)"
        if value and all(isinstance(v, list) for v in value):
            return "a list of lists"
        return "a list"
    return names.get(type(value), type(value).__name__)


class GenerationFields(BaseModel):
    """The fields of every generation request: the model, its samplers, where it stops, its seed, how it is sent.

    `top_k` (0 = off), `min_p` (0 = off) and `repetition_penalty` (1 = off) are
    extensions, as in vLLM; the OpenAI client sends them through `extra_body`.
    A sampler field left out (or null) takes the server's default: the value in
    the run's own chain (`DefaultChain`). A subclass adds what is generated from
    (a prompt, messages) and how long it may be (`token_limit`).
    """

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    # OpenAI's fields, typed as OpenAI types them; the values this server cannot honour are
    # refused by `unsupported`, with a message, rather than by a bound pydantic words for it.
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None  # metadata about the caller: accepted, ignored

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stop

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def token_limit(self) -> tuple[str, int | None]:
        """(the field that bounds the reply, its value): None asks for as many as the server allows."""
        raise NotImplementedError

    def sampler_fields(self) -> dict[str, float]:
        """The sampler fields the request gives (not left out, not null)."""
        return {name: value for name in SAMPLER_FIELDS if (value := getattr(self, name)) is not None}

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, message) for each OpenAI field set to something this server does not do.

        The values that change nothing (an empty logit_bias, penalties of 0, and a
        subclass's own, `own_unsupported`) are accepted, since clients send them as defaults.
        """
        found = self.own_unsupported()
        if self.logit_bias:
            found.append(("logit_bias", "logit_bias is not supported (leave it out or send {})"))
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value:
                found.append((name, f"{name} is {value:g}, but only 0 is supported: use repetition_penalty instead (above 1 discourages tokens already seen)"))
        return found

    def own_unsupported(self) -> list[tuple[str, str]]:
        """`unsupported` for the fields of a subclass's own."""
        return []


PROMPT_SHAPES = "a string, a list of strings, a list of token ids, or a list of lists of token ids"
# How each kind of item reads when a prompt list mixes them.
_ITEM_KINDS = {str: "strings", int: "token ids", list: "lists of token ids"}


def is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _item_kind(item: Any) -> str | None:
    """How a prompt list's item reads, or None for an item no prompt list holds."""
    if isinstance(item, str):
        return _ITEM_KINDS[str]
    if is_token_id(item):
        return _ITEM_KINDS[int]
    return _ITEM_KINDS[list] if isinstance(item, list) else None


class CompletionRequest(GenerationFields):
    """The body of POST /v1/completions (and /api/generate): prompts, and the fields every request has.

    A prompt is text or token ids, and the request holds one or a list of them, as
    OpenAI's API takes them; `n` choices are made for each. `echo` puts the prompt
    before each completion, `logprobs` (0 to MAX_LOGPROBS) asks for each token's
    log-probability and that many likeliest alternatives, and `max_tokens` 0 with
    `echo` scores a prompt without generating. `max_tokens` null is the server's
    cap, as OpenAI reads it; left out it is OpenAI's 16.
    """

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    best_of: int | None = Field(None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, prompt: Any) -> Any:
        # Before pydantic's own check: its union of four shapes words a wrong one as problems
        # per alternative; one plain sentence says what the server takes.
        if isinstance(prompt, str):
            return prompt
        if not isinstance(prompt, list):
            raise PydanticCustomError("prompt_shape", "the prompt must be {shapes}, got {kind}", {"shapes": PROMPT_SHAPES, "kind": json_kind(prompt)})
        if not prompt:
            raise PydanticCustomError("prompt_empty", "the prompt is an empty list; expected {shapes}", {"shapes": PROMPT_SHAPES})
        kinds = [_item_kind(item) for item in prompt]
        odd = next((i for i, kind in enumerate(kinds) if kind is None), None)
        if odd is not None:
            raise PydanticCustomError(
                "prompt_item", "item {i} of the prompt list is {kind}; expected a string, a token id or a list of token ids",
                {"i": odd, "kind": json_kind(prompt[odd])},
            )
        if len(set(kinds)) > 1:
            first, other = kinds[0], next(k for k in kinds if k != kinds[0])
            raise PydanticCustomError("prompt_mixed", "the prompt list mixes {first} and {other}; expected {shapes}", {"first": first, "other": other, "shapes": PROMPT_SHAPES})
        for i, item in enumerate(prompt):
            if isinstance(item, list) and not item:
                raise PydanticCustomError("prompt_ids", "item {i} of the prompt list is an empty list; a prompt of token ids needs at least one", {"i": i})
            if isinstance(item, list) and not all(map(is_token_id, item)):
                other = next(t for t in item if not is_token_id(t))
                raise PydanticCustomError(
                    "prompt_ids", "item {i} of the prompt list holds {value}, which is not a token id (a whole number)",
                    {"i": i, "value": json.dumps(other)[:40]},
                )
        return prompt

    @property
    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text, or a list of token ids."""
        if isinstance(self.prompt, str) or is_token_id(self.prompt[0]):
            return [self.prompt]  # type: ignore[list-item]  # one prompt: a text, or its token ids
        return list(self.prompt)  # type: ignore[arg-type]

    def token_limit(self) -> tuple[str, int | None]:
        return "max_tokens", self.max_tokens

    def own_unsupported(self) -> list[tuple[str, str]]:
        # best_of 1 and an empty suffix change nothing.
        found: list[tuple[str, str]] = []
        if self.best_of is not None and self.best_of != 1:
            found.append(("best_of", f"best_of is {self.best_of}, but this server ranks no candidates: leave it out (or 1), and ask for several choices with n"))
        if self.suffix:
            found.append(("suffix", "suffix is not supported: this server continues the prompt, it does not fill in text before a suffix"))
        if self.stream and self.logprobs is not None:
            # Each token's log-probability comes from one pass over the whole text, once it is generated.
            found.append(("logprobs", "logprobs is not supported with stream: ask without stream (the log probabilities come with the whole reply)"))
        return found


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


Request = TypeVar("Request", bound=GenerationFields)


def parse_request(body: bytes, schema: type[Request] = CompletionRequest) -> Request:  # type: ignore[assignment]
    """The body as a `schema` request (a completion by default); ApiError 400 naming the first bad field."""
    try:
        data = json.loads(body)
    except ValueError as err:  # UnicodeDecodeError included
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    try:
        request = schema.model_validate(data)
    except ValidationError as err:
        where = validation_problems(err)[0][0]
        raise ApiError(400, problems_line(err, empty_location="body"), param=where or None) from None
    refused = request.unsupported()
    if refused:
        raise ApiError(400, "; ".join(message for _, message in refused), param=refused[0][0])
    return request
