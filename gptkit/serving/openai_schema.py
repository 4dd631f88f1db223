"""The body of an OpenAI-style completion request: its schema, its errors, its samplers.

`CompletionRequest` is what `POST /v1/completions` (and the demo page's
`/api/generate`) accept, validated strictly by pydantic; `ApiError` is how any
problem is answered, in OpenAI's error shape; `sampler_chain` turns a request's
settings into gptkit's registry samplers. No HTTP here: `gptkit.serving.server` does that.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gptkit.errors import GptkitError, problems_line, validation_problems
from gptkit.generation.samplers import build_samplers, sampler_specs

MAX_STOP_STRINGS = 4  # OpenAI's limit
MIN_TEMPERATURE = 1e-3  # lower temperatures are served as greedy decoding


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions (and /api/generate).

    `top_k` (0 = off), `min_p` (0 = off) and `repetition_penalty` (1 = off) are
    extensions, as in vLLM; the OpenAI client sends them through `extra_body`.
    """

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=100.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError(f"one prompt per request, got a list of {len(prompt)}")
        return prompt

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
        return CompletionRequest.model_validate(data)
    except ValidationError as err:
        where = validation_problems(err)[0][0]
        raise ApiError(400, problems_line(err, empty_location="body"), param=where or None) from None


def sampler_chain(request: CompletionRequest) -> tuple[list[Any], list[str]]:
    """The request's samplers, built through the registry, and how they read in a reply."""
    # Below MIN_TEMPERATURE the draw is greedy in all but name, and logits / temperature would overflow.
    specs = sampler_specs(
        temperature=0.0 if request.temperature < MIN_TEMPERATURE else request.temperature,
        top_k=request.top_k or None,
        top_p=request.top_p if request.top_p < 1 else None,
        min_p=request.min_p or None,
        repetition_penalty=request.repetition_penalty if request.repetition_penalty != 1 else None,
    ) or []
    # Temperature 1 with no filter is a plain draw from the model's distribution: no sampler needed.
    specs = [s for s in specs if s != {"name": "temperature", "value": 1.0}]
    try:
        samplers = build_samplers(specs)
    except GptkitError as err:  # bounds the request model does not know (a plugin's, say)
        raise ApiError(400, str(err)) from None
    names = [s["name"] + "".join(f"({v:g})" for k, v in s.items() if k != "name") for s in specs]
    return samplers, names or ["multinomial"]
