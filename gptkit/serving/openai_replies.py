"""OpenAI's reply shapes: a model card, and a completion or chat completion, whole or as stream chunks.

A route streams any request the same way (`gptkit.serving.server`): the chunks
that open the stream, then for each choice one per text delta (after its echoed
prompt, if asked for) and one that carries its finish reason, and with
`stream_options.include_usage` one with the usage and no choices. Only the
shapes differ, so each endpoint has a `Replies` subclass that writes them:
`TextReplies` for /v1/completions ("text_completion"), `ChatReplies` for
/v1/chat/completions ("chat.completion", its chunks "chat.completion.chunk",
opened by one that gives the role).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gptkit.serving.engine import Job, ModelService, total_usage


def model_card(service: ModelService) -> dict[str, Any]:
    """The one model served, with the prompt style chat requests get (extra fields OpenAI's client keeps)."""
    return {
        "id": service.model_name, "object": "model", "created": service.created, "owned_by": "gptkit",
        **service.chat_style.describe(),
    }


class Replies:
    """The reply objects of one request's jobs, one per choice: `whole` (not streamed), or the chunks of a stream.

    A stream is `opening`, then for each choice its `start` chunks, its `delta`s and its
    `finish`, and `usage` last when the client asks for it.
    """

    def __init__(self, service: ModelService, jobs: Sequence[Job]) -> None:
        self.service, self.jobs = service, list(jobs)

    def envelope(self, obj: str) -> dict[str, Any]:
        first = self.jobs[0]  # every choice shares the request's id and time
        return {"id": first.id, "object": obj, "created": first.created, "model": self.service.model_name}

    def whole(self, texts: Sequence[str], logprobs: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """The reply, given each choice's completion text and `logprobs` object."""
        raise NotImplementedError

    def opening(self) -> list[dict[str, Any]]:
        """Chunks sent before any choice's text."""
        return []

    def start(self, job: Job) -> list[dict[str, Any]]:
        """Chunks sent before a choice's completion."""
        return []

    def delta(self, job: Job, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def finish(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError

    def usage(self) -> dict[str, Any]:
        """The last chunk when the client asks for usage: no choices, as OpenAI sends it."""
        return {**self.delta(self.jobs[0], ""), "choices": [], "usage": total_usage(self.jobs)}


class TextReplies(Replies):
    def completion(self, job: Job, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
        choice = {"text": text, "index": job.index, "logprobs": logprobs, "finish_reason": finish_reason}
        return {**self.envelope("text_completion"), "choices": [choice]}

    def whole(self, texts: Sequence[str], logprobs: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        choices = [
            {"text": job.echo + text, "index": job.index, "logprobs": scores, "finish_reason": job.finish_reason}
            for job, text, scores in zip(self.jobs, texts, logprobs)
        ]
        return {**self.envelope("text_completion"), "choices": choices, "usage": total_usage(self.jobs)}

    def start(self, job: Job) -> list[dict[str, Any]]:
        # An echoed prompt comes first, as the whole reply's text starts with it.
        return [self.delta(job, job.echo)] if job.echo else []

    def delta(self, job: Job, text: str) -> dict[str, Any]:
        return self.completion(job, text, None, None)

    def finish(self, job: Job) -> dict[str, Any]:
        return self.completion(job, "", None, job.finish_reason)


class ChatReplies(Replies):
    def chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {**self.envelope("chat.completion.chunk"), "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def whole(self, texts: Sequence[str], logprobs: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        [job], [text] = self.jobs, texts  # a chat request is one choice
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": job.finish_reason}
        return {**self.envelope("chat.completion"), "choices": [choice], "usage": job.usage()}

    def opening(self) -> list[dict[str, Any]]:
        # As OpenAI's own stream starts: the role, with empty content, before any text.
        return [self.chunk({"role": "assistant", "content": ""}, None)]

    def delta(self, job: Job, text: str) -> dict[str, Any]:
        return self.chunk({"content": text}, None)

    def finish(self, job: Job) -> dict[str, Any]:
        return self.chunk({}, job.finish_reason)
