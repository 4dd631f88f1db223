"""The body of an OpenAI-style completion request: its schema, its errors, its samplers.

`CompletionRequest` is what `POST /v1/completions` (and the demo page's
`/api/generate`) accept, validated strictly by pydantic; `ApiError` is how any
problem is answered, in OpenAI's error shape; `DefaultChain` is the sampler
chain a request starts from (the run's own), and `resolve_sampling` turns a
request's settings into gptkit's registry samplers. No HTTP here:
`gptkit.serving.server` does that.

OpenAI's fields this server does not implement are refused by name
(`CompletionRequest.unsupported`), not ignored: a client asking for log
probabilities, echoed prompts or several choices must not get a reply that
silently lacks them. `user` is accepted and ignored: OpenAI documents it as
metadata about the caller, which changes nothing in the completion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from gptkit.errors import GptkitError, problems_line, validation_problems
from gptkit.generation.samplers import (
    Greedy,
    MinP,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    build_samplers,
    sampler_specs,
)
from gptkit.registry import split_spec

MAX_STOP_STRINGS = 4  # OpenAI's limit
MIN_TEMPERATURE = 1e-3  # lower temperatures are served as greedy decoding

# The request's sampler fields, and the value of each that switches its sampler off.
SAMPLER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
NEUTRAL_SAMPLING: dict[str, float] = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


def _kind(value: Any) -> str:
    """How a JSON value reads in a message: "a number", "a list of numbers", ..."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", dict: "an object", type(None): "null"}
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "a list of numbers (token ids)"
        if value and all(isinstance(v, list) for v in value):
            return "a list of lists"
        return "a list"
    return names.get(type(value), type(value).__name__)


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions (and /api/generate).

    `top_k` (0 = off), `min_p` (0 = off) and `repetition_penalty` (1 = off) are
    extensions, as in vLLM; the OpenAI client sends them through `extra_body`.
    A sampler field left out (or null) takes the server's default: the value in
    the run's own chain (`DefaultChain`). `max_tokens` null is the server's cap,
    as OpenAI reads it; left out it is OpenAI's 16.
    """

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # OpenAI's fields, typed as OpenAI types them; the values this server cannot honour are
    # refused by `unsupported`, with a message, rather than by a bound pydantic words for it.
    n: int = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0)
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None  # metadata about the caller: accepted, ignored

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_text_prompt(cls, prompt: Any) -> Any:
        # Before pydantic's own check: its union of str and list[str] words a wrong shape as two
        # problems per alternative; one plain sentence says what the server takes.
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise PydanticCustomError("one_prompt", "one prompt per request, got a list of {n}", {"n": len(prompt)})
            return prompt
        raise PydanticCustomError(
            "text_prompt", "the prompt must be a string (or a list of one string); this server does not take token ids, got {kind}",
            {"kind": _kind(prompt)},
        )

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
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def sampler_fields(self) -> dict[str, float]:
        """The sampler fields the request gives (not left out, not null)."""
        return {name: value for name in SAMPLER_FIELDS if (value := getattr(self, name)) is not None}

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, message) for each OpenAI field set to something this server does not do.

        The values that change nothing (n=1, echo=false, logprobs null, an empty suffix or
        logit_bias, penalties of 0) are accepted, since clients send them as defaults.
        """
        found: list[tuple[str, str]] = []
        if self.n != 1:
            found.append(("n", f"n is {self.n}, but this server returns one choice per request: send {self.n} requests (with different seeds) instead"))
        if self.best_of is not None and self.best_of != 1:
            found.append(("best_of", f"best_of is {self.best_of}, but this server generates one completion per request and ranks none"))
        if self.echo:
            found.append(("echo", "echo is not supported: the reply holds the completion only (prepend the prompt yourself)"))
        if self.logprobs is not None:
            found.append(("logprobs", "logprobs is not supported: this server returns no log probabilities (leave it out or null)"))
        if self.suffix:
            found.append(("suffix", "suffix is not supported: this server continues the prompt, it does not fill in text before a suffix"))
        if self.logit_bias:
            found.append(("logit_bias", "logit_bias is not supported (leave it out or send {})"))
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value:
                found.append((name, f"{name} is {value:g}, but only 0 is supported: use repetition_penalty instead (above 1 discourages tokens already seen)"))
        return found


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_request(body: bytes) -> CompletionRequest:
    try:
        data = json.loads(body)
    except ValueError as err:  # UnicodeDecodeError included
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    try:
        request = CompletionRequest.model_validate(data)
    except ValidationError as err:
        where = validation_problems(err)[0][0]
        raise ApiError(400, problems_line(err, empty_location="body"), param=where or None) from None
    refused = request.unsupported()
    if refused:
        raise ApiError(400, "; ".join(message for _, message in refused), param=refused[0][0])
    return request


def spec_name(spec: Any) -> str:
    """How a sampler spec reads in a reply: `top_k(50)`."""
    name, params = split_spec(spec)
    return name + "".join(f"({v:g})" if isinstance(v, int | float) else f"({v})" for v in params.values())


# The samplers a request's fields can express, in the order `sampler_specs` builds them.
_FIELD_ORDER: tuple[tuple[type, str | None, str | None], ...] = (
    (RepetitionPenalty, "repetition_penalty", "penalty"),
    (Temperature, "temperature", "value"),
    (TopK, "top_k", "k"),
    (TopP, "top_p", "p"),
    (MinP, "min_p", "p"),
    (Greedy, None, None),
)


def chain_fields(samplers: Sequence[Any]) -> dict[str, float] | None:
    """The request fields a built chain amounts to, or None if they cannot express it.

    They can when each sampler is one of the built-ins above, at most once, in that
    order (greedy last): then rebuilding the chain from the fields gives the same draws.
    """
    fields = dict(NEUTRAL_SAMPLING)
    last = -1
    for sampler in samplers:
        rank = next((i for i, (cls, _, _) in enumerate(_FIELD_ORDER) if type(sampler) is cls), None)
        if rank is None or rank <= last:
            return None
        last = rank
        _, name, attribute = _FIELD_ORDER[rank]
        if name is None or attribute is None:  # greedy: what temperature 0 means
            fields["temperature"] = 0.0
        else:
            fields[name] = getattr(sampler, attribute)
    return fields


@dataclass(frozen=True)
class DefaultChain:
    """The chain a request with no sampler fields is served with, and its field values.

    `specs` is the run's own chain as its config.json stores it; `fields` what those
    samplers amount to in the request's fields (None when they cannot say it: a
    plugin's sampler, or an order of its own). The default, `DefaultChain()`, is
    OpenAI's: temperature 1 and no filter, a plain draw from the model.
    """

    specs: tuple[Any, ...] = ()
    fields: dict[str, float] | None = field(default_factory=lambda: dict(NEUTRAL_SAMPLING))

    @classmethod
    def of(cls, specs: Sequence[Any] | None) -> DefaultChain:
        """From a run's `sampling.samplers` (None: OpenAI's defaults); a bad spec raises GptkitError."""
        if specs is None:
            return cls()
        # As plain {"name": ..., **params} dicts: /api/info sends them as JSON.
        plain = tuple({"name": name, **params} for name, params in map(split_spec, specs))
        return cls(plain, chain_fields(build_samplers(plain)))


@dataclass(frozen=True)
class Sampling:
    """A request's samplers, how they read in a reply, and the field values they amount to."""

    samplers: list[Any]
    names: list[str]
    fields: dict[str, float] | None  # None: the run's chain as it stands, which the fields cannot express


def resolve_sampling(request: CompletionRequest, default: DefaultChain) -> Sampling:
    """The request's samplers, built through the registry.

    With no sampler field given, the default chain as it stands (the run's own,
    repetition penalty included). With some, the chain is rebuilt from the fields,
    each one left out taking its value in the default chain (or, when the fields
    cannot express that chain, OpenAI's: off).
    """
    given = request.sampler_fields()
    if not given:
        return Sampling(build_samplers(default.specs), [spec_name(s) for s in default.specs] or ["multinomial"], default.fields)
    values = {**(default.fields or NEUTRAL_SAMPLING), **given}
    temperature = float(values["temperature"])
    # Below MIN_TEMPERATURE the draw is greedy in all but name, and logits / temperature would overflow.
    specs = sampler_specs(
        temperature=0.0 if temperature < MIN_TEMPERATURE else temperature,
        top_k=int(values["top_k"]) or None,
        top_p=values["top_p"] if values["top_p"] < 1 else None,
        min_p=values["min_p"] or None,
        repetition_penalty=values["repetition_penalty"] if values["repetition_penalty"] != 1 else None,
    ) or []
    # Temperature 1 with no filter is a plain draw from the model's distribution: no sampler needed.
    specs = [s for s in specs if s != {"name": "temperature", "value": 1.0}]
    try:
        samplers = build_samplers(specs)
    except GptkitError as err:  # bounds the request model does not know (a plugin's, say)
        raise ApiError(400, str(err)) from None
    return Sampling(samplers, [spec_name(s) for s in specs] or ["multinomial"], values)
