"""A conversation with a trained model, kept within its context window.

What `main.py chat` talks to. The terminal side (line editing, commands, Ctrl-C) is
the command's; this is the conversation itself: what the model is shown for each new
line, where its reply ends, and what is remembered afterwards.

`Chat` talks to a model that continues text: alternating "User:" / "Assistant:"
lines, which is all such a model can be shown. `StyledChat` talks to a model
finetuned on instructions, in the prompt style its data was written in
(`gptkit.data.prompt_styles`). Both keep the newest whole exchanges that fit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from gptkit.data.instruction import Message
from gptkit.errors import DataError
from gptkit.generation.generate import stream_text
from gptkit.generation.samplers import Sampler
from gptkit.generation.styled_reply import (
    marker_problem,
    prompt_ids,
    reply_stops,
    strip_leading_space,
    takes_history,
)
from gptkit.hookspecs import PromptStyle
from gptkit.model.gpt import GPTModel

# A reply ends at a blank line: two newlines in a row. A model that has said what it
# says tends to go on with blank lines (or a new paragraph on another topic) until
# max_new_tokens runs out; the turn marker alone would not stop it.
DEFAULT_NEWLINE_RUN = 2

Exchange = TypeVar("Exchange")


@dataclass
class Conversation(Generic[Exchange]):
    """What both chats share: the reply budget, where a reply ends, and the exchanges remembered.

    A reply ends at the first of: `newline_run` newlines in a row (0: no such rule),
    one of the chat's own turn stops, one of `stop`, <|endoftext|>, or
    `max_new_tokens`. None of these is part of the reply. A subclass says how a
    prompt is written (`prompt_ids`) and what an exchange is (`remember`).
    """

    model: GPTModel
    tokenizer: Any
    samplers: Sequence[Sampler]
    max_new_tokens: int
    stop: Sequence[str] = ()
    generator: torch.Generator | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    compile: bool | str = False
    newline_run: int = DEFAULT_NEWLINE_RUN
    # Of the last prompt: how many of the oldest exchanges no longer fit the window.
    forgotten: int = 0

    # How the terminal labels the turns.
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
    def reply_prefix(self) -> str:
        """What the terminal writes before a reply."""
        return self.ASSISTANT

    @property
    def multi_turn(self) -> bool:
        """Whether a prompt shows earlier exchanges at all (as many as fit), or the new line alone."""
        return True

    @property
    def stop_strings(self) -> list[str]:
        """Where a reply ends: the turn stops, the caller's own stop strings and the newline run."""
        stops = [*self.turn_stops(), *self.stop]
        if self.newline_run:
            stops.append("\n" * self.newline_run)
        return stops

    def turn_stops(self) -> Sequence[str]:
        raise NotImplementedError

    def prompt_ids(self, line: str) -> list[int]:
        """The prompt for `line`: the newest exchanges that fit, then the line; sets `forgotten`."""
        raise NotImplementedError

    def remember(self, line: str, answer: str) -> None:
        raise NotImplementedError

    def check(self, line: str) -> None:
        """Raise a `GptkitError` if `line` cannot be sent; any line can, unless a subclass says otherwise."""

    def shown(self, pieces: Iterator[str]) -> Iterator[str]:
        """The reply as the user sees it, from the text the model generates."""
        return pieces

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
        self.check(line)
        pieces: list[str] = []
        prompt = self.prompt_ids(line)
        try:
            for piece in self.shown(stream_text(
                self.model, self.tokenizer, prompt, self.max_new_tokens, self.samplers, stop=self.stop_strings,
                generator=self.generator, compile=self.compile,
            )):
                pieces.append(piece)
                yield piece
        finally:
            self.remember(line, "".join(pieces))


@dataclass
class Chat(Conversation[list[int]]):
    """A conversation as alternating "User:" / "Assistant:" lines, for a model that continues text.

    Each exchange is kept as token ids; a prompt is the newest exchanges that fit
    in the window after leaving room for the reply, then the new user line. The
    oldest exchanges are dropped whole, so the model never sees half a turn. The
    next turn marker "\\nUser:" ends a reply.
    """

    def turn_stops(self) -> Sequence[str]:
        return [f"\n{self.USER}"]

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

    def remember(self, line: str, answer: str) -> None:
        answer = answer.rstrip("\n")
        self.exchanges.append(self.tokenizer.encode(f"{self.USER} {line}\n{self.ASSISTANT}{answer}\n"))


@dataclass
class StyledChat(Conversation[tuple[Message, Message]]):
    """A conversation with an instruction-tuned model, each prompt written in its prompt `style`.

    An exchange is the user's message and the reply as shown; a prompt is the
    optional `system` message, the newest exchanges whose prompt fits the budget
    (the oldest dropped whole), and the new line, as `style.prompt` writes them. A
    style that takes one message at a time (alpaca) is shown the new line alone:
    `multi_turn` says which. The style's stop strings end a reply; no newline run
    does unless asked, since the model learnt where its replies end. The reply
    is shown without the space the template puts before it.
    """

    newline_run: int = 0
    style: PromptStyle = field(kw_only=True)
    system: str | None = field(default=None, kw_only=True)
    _multi_turn: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._multi_turn = takes_history(self.style)

    @property
    def reply_prefix(self) -> str:
        return f"{self.ASSISTANT} "

    @property
    def multi_turn(self) -> bool:
        return self._multi_turn

    def turn_stops(self) -> Sequence[str]:
        return reply_stops(self.style)

    def check(self, line: str) -> None:
        problem = marker_problem(line)
        if problem:
            raise DataError(f"the line {problem}")

    def prompt_ids(self, line: str) -> list[int]:
        head = [Message("system", self.system)] if self.system else []
        user = Message("user", line)
        ids = prompt_ids(self.style, [*head, user], self.tokenizer)[-self.budget :]
        kept = 0
        # The prompt grows with each exchange added, so the first that does not fit ends the search.
        while self.multi_turn and kept < len(self.exchanges):
            history = [m for exchange in self.exchanges[len(self.exchanges) - kept - 1 :] for m in exchange]
            longer = prompt_ids(self.style, [*head, *history, user], self.tokenizer)
            if len(longer) > self.budget:
                break
            ids, kept = longer, kept + 1
        self.forgotten = len(self.exchanges) - kept
        return ids

    def remember(self, line: str, answer: str) -> None:
        if self.multi_turn:  # a one-message style never shows an earlier turn: nothing to keep
            self.exchanges.append((Message("user", line), Message("assistant", answer.rstrip())))

    def shown(self, pieces: Iterator[str]) -> Iterator[str]:
        return strip_leading_space(pieces)
