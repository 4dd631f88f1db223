"""OpenAI's reply shapes: a model card, and a completion or chat completion, whole or as stream chunks.

A route streams any job the same way (`gptkit.serving.server`): the chunks that
open the stream, one per text delta, one that carries the finish reason, and
with `stream_options.include_usage` one with the usage and no choices. Only the
shapes differ, so each endpoint has a `Replies` subclass that writes them:
`TextReplies` for /v1/completions ("text_completion"), `ChatReplies` for
/v1/chat/completions ("chat.completion", its chunks "chat.completion.chunk",
opened by one that gives the role).
"""

from __future__ import annotations

from typing import Any

from gptkit.serving.engine import Job, ModelService


def model_card(service: ModelService) -> dict[str, Any]:
    """The one model served, with the prompt style chat requests get (extra fields OpenAI's client keeps)."""
    return {
        "id": service.model_name, "object": "model", "created": service.created, "owned_by": "gptkit",
        **service.chat_style.describe(),
    }


class Replies:
    """The reply objects of one job: `whole` (not streamed), or `opening`, `delta`s, `finish` and `usage` chunks."""

    def __init__(self, service: ModelService, job: Job) -> None:
        self.service, self.job = service, job

    def envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.job.id, "object": obj, "created": self.job.created, "model": self.service.model_name}

    def whole(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self) -> list[dict[str, Any]]:
        """Chunks sent before any text."""
        return []

    def delta(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        raise NotImplementedError

    def usage(self) -> dict[str, Any]:
        """The last chunk when the client asks for usage: no choices, as OpenAI sends it."""
        return {**self.delta(""), "choices": [], "usage": self.job.usage()}


class TextReplies(Replies):
    def completion(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {**self.envelope("text_completion"), "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]}

    def whole(self, text: str) -> dict[str, Any]:
        return {**self.completion(text, self.job.finish_reason), "usage": self.job.usage()}

    def delta(self, text: str) -> dict[str, Any]:
        return self.completion(text, None)

    def finish(self) -> dict[str, Any]:
        return self.completion("", self.job.finish_reason)


class ChatReplies(Replies):
    def chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {**self.envelope("chat.completion.chunk"), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def whole(self, text: str) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": self.job.finish_reason}
        return {**self.envelope("chat.completion"), "choices": [choice], "usage": self.job.usage()}

    def opening(self) -> list[dict[str, Any]]:
        # As OpenAI's own stream starts: the role, with empty content, before any text.
        return [self.chunk({"role": "assistant", "content": ""}, None)]

    def delta(self, text: str) -> dict[str, Any]:
        return self.chunk({"content": text}, None)

    def finish(self) -> dict[str, Any]:
        return self.chunk({}, self.job.finish_reason)
