"""A conversation with a trained model: alternating "User:" / "Assistant:" lines in its context window.

What `main.py chat` talks to.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gptkit.generation.generate import stream_text
from gptkit.generation.samplers import Sampler
from gptkit.model.gpt import GPTModel


@dataclass
class Chat:
    """A conversation as alternating "User:" / "Assistant:" lines, kept within the context window.

    Each exchange is kept as token ids; a prompt is the newest exchanges that fit
    in the window after leaving room for the reply, then the new user line. The
    oldest exchanges are dropped whole, so the model never sees half a turn.
    """

    model: GPTModel
    tokenizer: Any
    samplers: Sequence[Sampler]
    max_new_tokens: int
    stop: Sequence[str] = ()
    generator: torch.Generator | None = None
    exchanges: list[list[int]] = field(default_factory=list)
    compile: bool | str = False

    USER = "User:"
    ASSISTANT = "Assistant:"

    @property
    def budget(self) -> int:
        """Prompt tokens allowed: the window less room for the reply (at most half of it)."""
        window = self.model.cfg.context_length
        return window - min(self.max_new_tokens, window // 2)

    def prompt_ids(self, line: str) -> list[int]:
        ids = self.tokenizer.encode(f"{self.USER} {line}\n{self.ASSISTANT}")[-self.budget :]
        for exchange in reversed(self.exchanges):
            if len(ids) + len(exchange) > self.budget:
                break
            ids = exchange + ids
        return ids

    def reply(self, line: str) -> Iterator[str]:
        """Stream the assistant's answer to `line`, then remember the exchange."""
        stop = [f"\n{self.USER}", *self.stop]
        pieces: list[str] = []
        prompt = self.prompt_ids(line)
        for piece in stream_text(
            self.model, self.tokenizer, prompt, self.max_new_tokens, self.samplers, stop=stop, generator=self.generator,
            compile=self.compile,
        ):
            pieces.append(piece)
            yield piece
        answer = "".join(pieces).rstrip("\n")
        self.exchanges.append(self.tokenizer.encode(f"{self.USER} {line}\n{self.ASSISTANT}{answer}\n"))
