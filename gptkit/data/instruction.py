"""Instruction examples: conversations of messages, whatever file format they came from.

An `Example` is a conversation: a tuple of `Message`s, each a role ("system",
"user" or "assistant") and its text. The assistant's messages are what
finetuning teaches; the rest is the prompt it answers.

An Alpaca record (instruction, optional input, output) becomes a user message
and an assistant message. The user message's text is the instruction, then a
blank line and the input when there is one, which is how a chat style shows it;
the Alpaca template shows the two under headings of their own, so the record's
original fields are kept on the example as `Example.alpaca`, and the `alpaca`
prompt style reads them from there. A chat record has `alpaca=None`.

Reading files is `gptkit.data.instruction_files`; turning examples into text is a
prompt style (`gptkit.data.prompt_styles`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from gptkit.errors import DataError

ROLES: tuple[str, ...] = ("system", "user", "assistant")
T = TypeVar("T")  # what split_examples splits: instruction examples, or labelled texts


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str

    def __post_init__(self) -> None:
        # Checked here too, not only by the file reader: a server builds messages from requests.
        if self.role not in ROLES:
            raise DataError(f"unknown message role {self.role!r}; expected 'system', 'user' or 'assistant'")


@dataclass(frozen=True)
class AlpacaFields:
    """An Alpaca record's prompt as it was written: `input` is "" when the record had none."""

    instruction: str
    input: str = ""


@dataclass(frozen=True)
class Example:
    """A conversation to finetune on.

    `source` says where it came from ("data.jsonl line 7"), for messages about
    this example; `alpaca` holds the original fields of an Alpaca record.
    """

    messages: tuple[Message, ...]
    source: str = "an example"
    alpaca: AlpacaFields | None = None

    @classmethod
    def from_alpaca(cls, instruction: str, input: str, output: str, source: str = "an example") -> Example:
        user = f"{instruction}\n\n{input}" if input else instruction
        return cls(
            (Message("user", user), Message("assistant", output)),
            source=source,
            alpaca=AlpacaFields(instruction, input),
        )


def example_key(example: Example) -> bytes:
    """The example's content, independent of where it was read: equal conversations, equal keys."""
    return json.dumps([[m.role, m.content] for m in example.messages], ensure_ascii=False).encode()


def split_examples(
    examples: Sequence[T], val_fraction: float, seed: int = 0, key: Callable[[T], bytes] = example_key  # type: ignore[assignment]
) -> tuple[list[T], list[T]]:
    """Split into (train, val), each in the original order, holding out round(n * val_fraction).

    Which examples are held out is decided by a SHA-256 of the seed and each
    example's content, not by a shuffle of positions: the same on every machine
    and Python, and reordering the file or adding an example moves at most one
    other across. With val_fraction > 0 each side gets at least one example.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(examples)
    if val_fraction == 0.0:
        return list(examples), []
    if n < 2:
        raise DataError(
            f"holding out a validation set needs at least 2 examples, got {n}; add examples or set val_fraction=0"
        )
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    scores = [hashlib.sha256(f"{seed}:".encode() + key(e)).digest() for e in examples]
    held_out = set(sorted(range(n), key=lambda i: (scores[i], i))[:n_val])
    train = [e for i, e in enumerate(examples) if i not in held_out]
    return train, [e for i, e in enumerate(examples) if i in held_out]
