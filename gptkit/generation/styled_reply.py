"""A reply in a prompt style: the conversation as the style writes it, where the reply ends, and how it reads.

An instruction-tuned model answers text written exactly as its finetuning data
was (`gptkit.data.prompt_styles`), so a chat with it, in the terminal or over the
server, writes each prompt with the run's style, encodes it as training did (each
"<|endoftext|>" of the template one end-of-text id), and ends the reply at the
style's stop strings. Used by `gptkit.generation.chat` and by `gptkit.serving`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence

from gptkit.data.instruction import Message
from gptkit.data.instruction_encoding import encode_text
from gptkit.data.tokenizer import ENDOFTEXT
from gptkit.errors import DataError
from gptkit.hookspecs import PromptStyle, Tokenizer


def prompt_ids(style: PromptStyle, messages: Sequence[Message], tokenizer: Tokenizer) -> list[int]:
    """The conversation so far as the style writes it, ending where the reply starts, as token ids."""
    return encode_text(style.prompt(messages), tokenizer)


def reply_stops(style: PromptStyle, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The style's stop strings, then the caller's, each once."""
    return tuple(dict.fromkeys([*style.stop, *extra]))


def marker_problem(text: str) -> str | None:
    """What is wrong with sending `text` in a message: it holds "<|endoftext|>", or None.

    In the prompt it would become the marker that ends a reply. Instruction data may
    not hold it either (`gptkit.data.instruction_files`): the style writes the
    marker itself, and the model knows it only as that.
    """
    if ENDOFTEXT in text:
        return f"contains '{ENDOFTEXT}', which the prompt style writes to end each reply; remove it"
    return None


def takes_history(style: PromptStyle) -> bool:
    """Whether the style writes earlier turns into a prompt (chat does; alpaca takes one instruction only)."""
    probe = [Message("user", "a"), Message("assistant", "b"), Message("user", "c")]
    try:
        style.prompt(probe)
    except DataError:
        return False
    return True


def strip_leading_space(pieces: Iterator[str]) -> Generator[str, None, None]:
    """`pieces` without the whitespace the reply starts with; closing this closes `pieces`.

    The chat template puts a space after "Assistant:" and GPT-2's tokens carry the
    space before a word, so the reply's first token is " Word": the space is the
    template's, not the reply's. A reply's message content is what follows it.
    """
    started = False
    try:
        for piece in pieces:
            if not started:
                piece = piece.lstrip()
                started = bool(piece)
            yield piece
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
