"""Prompt styles: how a conversation is written out as text for the model.

A style turns an `Example` into `segments`, its text in order, each piece marked
True where it is response text, the text finetuning trains on, the
"<|endoftext|>" that closes each response included (the model learns to stop).
`prompt` writes a conversation so far for inference, ending where the assistant's
reply begins, in exactly the text the segments would have there, and `stop` are
the strings at which a generated reply ends.

Built-ins: `alpaca`, Stanford Alpaca's template (Raschka's chapter 7), and
`chat`, "User:" / "Assistant:" turns as `main.py chat` writes them. Plugins add
others under the ``prompt_style`` kind; the contract is `gptkit.hookspecs.PromptStyle`.

"<|endoftext|>" is written into the text as the marker itself: encode segments and
prompts with `tokenizer.encode(text, allow_special=True)` so it becomes the one
end-of-text id (`gptkit.data.instruction_files` refuses data that contains the marker).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from gptkit.data.instruction import AlpacaFields, Example, Message
from gptkit.data.tokenizer import ENDOFTEXT
from gptkit.errors import DataError
from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.registry import Registry

Segments = list[tuple[str, bool]]

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


def roles(messages: Sequence[Message]) -> str:
    return ", ".join(m.role for m in messages) or "none"


def check_prompt_end(messages: Sequence[Message]) -> None:
    if not messages or messages[-1].role == "assistant":
        raise DataError(
            f"a prompt ends with the message the reply answers (a user or system message); got roles: {roles(messages)}"
        )


class AlpacaStyle:
    """Stanford Alpaca: a preamble, "### Instruction:", "### Input:" when given, "### Response:".

    One instruction and one response per example. A system message, if one comes
    first, is written in place of the preamble (the preamble is Alpaca's system
    prompt). An example read from an Alpaca record uses its own instruction and
    input fields; any other uses the user message as the instruction.
    """

    stop: tuple[str, ...] = (ENDOFTEXT, "\n\n### Instruction:")

    def segments(self, example: Example) -> Segments:
        system, (user, reply) = self.single_turn(example.messages, ("user", "assistant"), example.source)
        fields = example.alpaca or AlpacaFields(user.content)
        return [(self.render(system, fields), False), (reply.content, True), (ENDOFTEXT, True)]

    def prompt(self, messages: Sequence[Message]) -> str:
        check_prompt_end(messages)
        system, (user,) = self.single_turn(messages, ("user",), None)
        return self.render(system, AlpacaFields(user.content))

    @staticmethod
    def render(system: Message | None, fields: AlpacaFields) -> str:
        preamble = system.content if system else ALPACA_PREAMBLE_WITH_INPUT if fields.input else ALPACA_PREAMBLE
        text = f"{preamble}\n\n### Instruction:\n{fields.instruction}\n\n"
        if fields.input:
            text += f"### Input:\n{fields.input}\n\n"
        return text + "### Response:\n"

    @staticmethod
    def single_turn(
        messages: Sequence[Message], shape: tuple[str, ...], source: str | None
    ) -> tuple[Message | None, list[Message]]:
        """(system message or None, the messages after it), which must have the roles `shape`.

        `source` names the example in the message; None means a prompt is being written.
        """
        system = messages[0] if messages and messages[0].role == "system" else None
        rest = list(messages[1:] if system else messages)
        if tuple(m.role for m in rest) != shape:
            what = "one user message" if len(shape) == 1 else "one user message and one assistant reply"
            where = f"{source}: " if source is not None else ""
            raise DataError(
                f"{where}prompt style 'alpaca' takes {what}, after an optional system message; "
                f"got roles: {roles(messages)}; use prompt style 'chat' for conversations"
            )
        return system, rest


class ChatParams(ComponentParams):
    user: str = Field("User", pattern=r"^[^\n:]+$", description="Name before the user's turns.")
    assistant: str = Field("Assistant", pattern=r"^[^\n:]+$", description="Name before the assistant's turns.")
    system: str = Field("System", pattern=r"^[^\n:]+$", description="Name before a system message.")


@dataclass(frozen=True)
class ChatStyle:
    """Turns as lines "User: ...", "Assistant: ...<|endoftext|>", a system message as "System: ...".

    The reply starts after "Assistant:" with its own space, as GPT-2's tokens carry
    the space before a word, and `main.py chat` writes its prompts that way. The
    segments end with the last assistant turn: what follows it trains nothing.
    """

    user: str = "User"
    assistant: str = "Assistant"
    system: str = "System"

    @property
    def stop(self) -> tuple[str, ...]:
        return (ENDOFTEXT, f"\n{self.user}:")

    def segments(self, example: Example) -> Segments:
        segments, _ = self.render(example.messages)
        if not segments:
            raise DataError(f"{example.source}: the conversation has no assistant message, so there is nothing to train on")
        return segments

    def prompt(self, messages: Sequence[Message]) -> str:
        check_prompt_end(messages)
        segments, rest = self.render(messages)
        return "".join(text for text, _ in segments) + rest + f"{self.assistant}:"

    def render(self, messages: Sequence[Message]) -> tuple[Segments, str]:
        """The segments up to the last reply, and the prompt text written after it."""
        names = {"system": self.system, "user": self.user}
        segments: Segments = []
        pending = ""
        for m in messages:
            if m.role == "assistant":
                segments += [(f"{pending}{self.assistant}:", False), (f" {m.content}", True), (ENDOFTEXT, True)]
                pending = "\n"
            else:
                pending += f"{names[m.role]}: {m.content}\n"
        return segments, pending


# --- registration: `prompt_style = "alpaca"` ----------------------------------------


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("prompt_style", "alpaca", AlpacaStyle, description="Stanford Alpaca: ### Instruction / Input / Response")
    registry.register(
        "prompt_style", "chat", ChatStyle, params=ChatParams, description="User: / Assistant: turns, <|endoftext|> after each reply"
    )
