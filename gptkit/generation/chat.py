"""A conversation with a trained model: alternating "User:" / "Assistant:" lines in its context window.

What `main.py chat` talks to. The terminal side (line editing, commands, Ctrl-C) is
the command's; this is the conversation itself: what the model is shown for each new
line, where its reply ends, and what is remembered afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gptkit.generation.generate import stream_text
from gptkit.generation.samplers import Sampler
from gptkit.model.gpt import GPTModel

# A reply ends at a blank line: two newlines in a row. A model that has said what it
# says tends to go on with blank lines (or a new paragraph on another topic) until
# max_new_tokens runs out; the turn marker alone would not stop it.
DEFAULT_NEWLINE_RUN = 2


@dataclass
class Chat:
    """A conversation as alternating "User:" / "Assistant:" lines, kept within the context window.

    Each exchange is kept as token ids; a prompt is the newest exchanges that fit
    in the window after leaving room for the reply, then the new user line. The
    oldest exchanges are dropped whole, so the model never sees half a turn.

    A reply ends at the first of: `newline_run` newlines in a row (0: no such
    rule), the next turn marker "\\nUser:", one of `stop`, <|endoftext|>, or
    `max_new_tokens`. None of these is part of the reply.
    """

    model: GPTModel
    tokenizer: Any
    samplers: Sequence[Sampler]
    max_new_tokens: int
    stop: Sequence[str] = ()
    generator: torch.Generator | None = None
    exchanges: list[list[int]] = field(default_factory=list)
    compile: bool | str = False
    newline_run: int = DEFAULT_NEWLINE_RUN
    # Of the last prompt: how many of the oldest exchanges no longer fit the window.
    forgotten: int = 0

    USER = "User:"
    ASSISTANT = "Assistant:"

    def __post_init__(self) -> None:
        if self.newline_run < 0:
            raise ValueError(f"newline_run must be 0 (no limit) or more, got {self.newline_run}")

    @property
    def budget(self) -> int:
        """Prompt tokens allowed: the window less room for the reply (at most half of it)."""
        window = self.model.cfg.context_length
        return window - min(self.max_new_tokens, window // 2)

    @property
    def stop_strings(self) -> list[str]:
        """Where a reply ends: the next turn marker, the newline run and the caller's own stop strings."""
        stops = [f"\n{self.USER}", *self.stop]
        if self.newline_run:
            stops.append("\n" * self.newline_run)
        return stops

    def prompt_ids(self, line: str) -> list[int]:
        ids = self.tokenizer.encode(f"{self.USER} {line}\n{self.ASSISTANT}")[-self.budget :]
        kept = 0
        for exchange in reversed(self.exchanges):
            if len(ids) + len(exchange) > self.budget:
                break
            ids = exchange + ids
            kept += 1
        self.forgotten = len(self.exchanges) - kept
        return ids

    def reset(self) -> None:
        """Forget every exchange: the next prompt is the new line alone."""
        self.exchanges.clear()
        self.forgotten = 0

    def reply(self, line: str) -> Iterator[str]:
        """Stream the assistant's answer to `line`, then remember the exchange.

        A reply cut short (Ctrl-C while it streams, or the caller stopping early) is
        remembered as far as it got: that is what the user saw, so the next turn
        follows on from it, as in a chat UI whose "stop" button keeps the partial answer.
        """
        pieces: list[str] = []
        prompt = self.prompt_ids(line)
        try:
            for piece in stream_text(
                self.model, self.tokenizer, prompt, self.max_new_tokens, self.samplers, stop=self.stop_strings,
                generator=self.generator, compile=self.compile,
            ):
                pieces.append(piece)
                yield piece
        finally:
            answer = "".join(pieces).rstrip("\n")
            self.exchanges.append(self.tokenizer.encode(f"{self.USER} {line}\n{self.ASSISTANT}{answer}\n"))
