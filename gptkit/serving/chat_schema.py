"""The body of an OpenAI-style chat completion request: messages, and the fields every request has.

`ChatCompletionRequest` is what `POST /v1/chat/completions` accepts: OpenAI's
request shape on `GenerationFields` (`gptkit.serving.openai_schema`), so the
samplers, stop strings, seed, streaming and the refused fields are checked as
for a completion. Each message is a role and its text; the server writes them
as a prompt in a prompt style (`gptkit.serving.engine`).

Where OpenAI's chat API leaves room:

* `developer` is OpenAI's newer name for the system role and is read as
  `system`; `tool` and `function` messages are refused: this server calls no tools.
* Content is a string or a list of text parts (`{"type": "text", "text": ...}`),
  joined; any other part (an image, audio) is refused by its type.
* Content holding "<|endoftext|>" is refused, as instruction data holding it is:
  the prompt style writes that marker itself, to end each reply.
* `max_tokens` and `max_completion_tokens` are one setting; left out, the reply
  may be as long as the server allows, as OpenAI's chat API reads it.
* Several choices (`n` above 1), tools, structured output, log probabilities and audio are
  refused by name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gptkit.data.instruction import Message
from gptkit.generation.styled_reply import marker_problem
from gptkit.serving.openai_schema import GenerationFields, json_kind

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MESSAGE_SHAPE = "{role, content}"


class ChatMessage(BaseModel):
    """One message of the conversation: its role and its text (`name` is accepted and ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    role: str
    content: str
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, message: Any) -> Any:
        # pydantic's own words would name this class ("a valid dictionary or instance of ChatMessage").
        if not isinstance(message, dict):
            raise PydanticCustomError("message_object", "expected a {shape} object, got {kind}", {"shape": MESSAGE_SHAPE, "kind": json_kind(message)})
        return message

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, role: Any) -> Any:
        if role in ("tool", "function"):
            raise PydanticCustomError("tool_role", "{role} messages are not supported: this server calls no tools", {"role": role})
        if isinstance(role, str) and role not in ROLES:
            raise PydanticCustomError(
                "unknown_role", "unknown role '{role}'; expected 'system', 'user' or 'assistant' ('developer' is read as 'system')",
                {"role": role},
            )
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _text_content(cls, content: Any) -> Any:
        if isinstance(content, list):
            kinds = [part.get("type") if isinstance(part, dict) else json_kind(part) for part in content]
            other = next((k for k in kinds if k != "text"), None)
            if other is not None:
                raise PydanticCustomError("text_parts", "only text content is supported, got a part of type {kind}", {"kind": repr(other)})
            texts = [part.get("text") for part in content]
            if not all(isinstance(t, str) for t in texts):
                raise PydanticCustomError("text_parts", "each text part needs a 'text' string", {})
            content = "".join(texts)
        if isinstance(content, str):
            problem = marker_problem(content)
            if problem:
                raise PydanticCustomError("endoftext", "the content {problem}", {"problem": problem})
            return content
        raise PydanticCustomError(
            "text_content", "the content must be a string (or a list of text parts), got {kind}", {"kind": json_kind(content)},
        )

    def message(self) -> Message:
        return Message(ROLES[self.role], self.content)


class ChatCompletionRequest(GenerationFields):
    """The body of POST /v1/chat/completions."""

    messages: list[ChatMessage]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # OpenAI's fields this server refuses unless they ask for nothing (see `own_unsupported`).
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[Any] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _a_list_of_messages(cls, messages: Any) -> Any:
        # Before pydantic's own check, which would word these as "Input should be a valid list".
        if not isinstance(messages, list):
            raise PydanticCustomError(
                "messages_list", "expected a list of {shape} objects, got {kind}", {"shape": MESSAGE_SHAPE, "kind": json_kind(messages)},
            )
        if not messages:
            raise PydanticCustomError("messages_empty", "expected at least one message, got an empty list", {})
        return messages

    def conversation(self) -> tuple[Message, ...]:
        return tuple(m.message() for m in self.messages)

    def token_limit(self) -> tuple[str, int | None]:
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens

    def own_unsupported(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.n != 1:
            found.append(("n", f"n is {self.n}, but this server returns one choice per request: send {self.n} requests (with different seeds) instead"))
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            found.append(("max_tokens", "max_tokens and max_completion_tokens are one setting: give one of them"))
        if self.logprobs or self.top_logprobs is not None:
            found.append(("logprobs", "logprobs is not supported: this server returns no log probabilities (leave it out or false)"))
        if self.tools or self.functions:
            found.append(("tools", "tools are not supported: this model calls no functions (leave tools out)"))
        if self.tool_choice not in (None, "none") or self.function_call not in (None, "none"):
            found.append(("tool_choice", "tool_choice is not supported: this model calls no functions (leave it out or 'none')"))
        if self.response_format is not None and self.response_format.get("type") != "text":
            found.append(("response_format", "response_format is not supported: replies are plain text (leave it out or {\"type\": \"text\"})"))
        if (self.modalities is not None and self.modalities != ["text"]) or self.audio is not None:
            found.append(("modalities", "only text replies are supported (leave modalities and audio out)"))
        return found
