"""Instruction examples as token ids and next-token labels, the prompt masked out.

`encode_example` writes an example with a prompt style, encodes each segment on
its own and concatenates the ids, so a segment's tokens are exactly those of its
text alone, as at inference, where the prompt is encoded and the reply generated
after it. For the model's input x = ids[:-1] the targets are y = ids[1:]; `labels`
is y with IGNORE_INDEX (-100) wherever the target token is prompt text, so the
loss counts only the response (and the "<|endoftext|>" that ends it), unless
`train_on_prompt`.

Examples longer than `max_length` tokens (the model's context + 1: a full row of
inputs plus the last target) are cut at the end (`overflow="truncate"`, counted in
`EncodedSet.truncated`) or refused (`overflow="refuse"`). An example cut so short
that none of its response is left to predict is dropped, not kept with every
label masked: `encode_example` returns None and `encode_examples` lists its source
in `EncodedSet.dropped`, so the caller can say how many went.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gptkit.data.instruction import Example
from gptkit.data.tokenizer import ENDOFTEXT
from gptkit.errors import DataError
from gptkit.hookspecs import PromptStyle, Tokenizer
from gptkit.model.gpt import IGNORE_INDEX

Overflow = Literal["truncate", "refuse"]
OVERFLOWS: tuple[str, ...] = ("truncate", "refuse")


@dataclass(frozen=True)
class EncodedExample:
    """`ids` (int32, at most max_length) and `labels` (int32, one shorter: the target of each input id)."""

    ids: np.ndarray
    labels: np.ndarray
    source: str
    truncated: bool = False


@dataclass(frozen=True)
class EncodedSet:
    """The encoded examples, how many of them were cut short, and the sources of those dropped."""

    examples: list[EncodedExample]
    truncated: int
    dropped: tuple[str, ...]


def encode_text(text: str, tokenizer: Tokenizer) -> list[int]:
    """`text` as ids, each "<|endoftext|>" the tokenizer's one end-of-text id.

    The same as GPT-2's `encode(text, allow_special=True)`, but asks only the
    `encode(text)` and `eot_id` every gptkit tokenizer has.
    """
    ids: list[int] = []
    for i, part in enumerate(text.split(ENDOFTEXT)):
        if i:
            ids.append(tokenizer.eot_id)
        ids.extend(tokenizer.encode(part))
    return ids


def encode_segments(segments: Sequence[tuple[str, bool]], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """Ids of the segments in order, and for each id whether it is response text."""
    ids: list[int] = []
    response: list[bool] = []
    for text, trained in segments:
        piece = encode_text(text, tokenizer)
        ids.extend(piece)
        response.extend([trained] * len(piece))
    return ids, response


def encode_example(
    example: Example,
    style: PromptStyle,
    tokenizer: Tokenizer,
    max_length: int,
    train_on_prompt: bool = False,
    overflow: Overflow = "truncate",
) -> EncodedExample | None:
    """The example's ids and labels; None if truncation left none of its response to predict."""
    if max_length < 2:
        raise DataError(f"max_length must be at least 2 (one input and its target), got {max_length}")
    if overflow not in OVERFLOWS:
        raise DataError(f"overflow must be 'truncate' or 'refuse', got {overflow!r}")
    ids, response = encode_segments(style.segments(example), tokenizer)
    # The first token is never a target, so response text there alone teaches nothing.
    if not any(response[1:]):
        raise DataError(f"{example.source}: the prompt style marked no response text, so there is nothing to train on")
    truncated = len(ids) > max_length
    if truncated:
        if overflow == "refuse":
            raise DataError(
                f"{example.source} is {len(ids)} tokens, longer than max_length {max_length} "
                f"(the model's context + 1); shorten it, use a longer context, or truncate (overflow='truncate')"
            )
        ids, response = ids[:max_length], response[:max_length]
        if not any(response[1:]):
            return None
    labels = [t if trained or train_on_prompt else IGNORE_INDEX for t, trained in zip(ids[1:], response[1:])]
    return EncodedExample(np.array(ids, dtype=np.int32), np.array(labels, dtype=np.int32), example.source, truncated)


def encode_examples(
    examples: Sequence[Example],
    style: PromptStyle,
    tokenizer: Tokenizer,
    max_length: int,
    train_on_prompt: bool = False,
    overflow: Overflow = "truncate",
) -> EncodedSet:
    """`encode_example` of each, with the counts a run reports; refuses a set where every example was dropped."""
    kept: list[EncodedExample] = []
    dropped: list[str] = []
    for example in examples:
        encoded = encode_example(example, style, tokenizer, max_length, train_on_prompt, overflow)
        if encoded is None:
            dropped.append(example.source)
        else:
            kept.append(encoded)
    if examples and not kept:
        raise DataError(
            f"all {len(examples)} examples were dropped: none has any of its response within its first "
            f"{max_length} tokens (the model's context + 1); use a longer context or shorter prompts"
        )
    return EncodedSet(kept, sum(e.truncated for e in kept), tuple(dropped))
