"""Prompt styles: the built-in templates written out by hand, prompts that match training text, plugin styles."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gptkit import (
    DataError,
    Registry,
    RegistryError,
    build_registry,
    default_registry,
    hookimpl,
)
from gptkit.data.instruction import Example, Message
from gptkit.data.instruction_encoding import encode_example
from gptkit.data.tokenizer import Tokenizer
from gptkit.hookspecs import FACTORY_CONTRACTS, PromptStyleFactory
from gptkit.registry import CORE_KINDS

EOT = "<|endoftext|>"
PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
CONVERSATION = (
    Message("system", "Be brief."),
    Message("user", "Hi"),
    Message("assistant", "Hello."),
    Message("user", "Name?"),
    Message("assistant", "Kit."),
)


def style(name: str, **params: object) -> object:
    return default_registry().create("prompt_style", {"name": name, **params})


def joined(segments: Sequence[tuple[str, bool]]) -> str:
    return "".join(text for text, _ in segments)


def test_alpaca_writes_stanford_alpacas_template() -> None:
    alpaca = style("alpaca")
    with_input = Example.from_alpaca("Add the numbers.", "2 3", "5")
    assert alpaca.segments(with_input) == [
        (f"{PREAMBLE_WITH_INPUT}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 3\n\n### Response:\n", False),
        ("5", True),
        (EOT, True),
    ]
    assert alpaca.segments(Example.from_alpaca("Say hi.", "", "Hi.")) == [
        (f"{PREAMBLE}\n\n### Instruction:\nSay hi.\n\n### Response:\n", False),
        ("Hi.", True),
        (EOT, True),
    ]
    # A chat example: the user message is the instruction, a system message replaces the preamble.
    chat = Example((Message("system", "Answer in French."), Message("user", "Say hi."), Message("assistant", "Salut.")))
    assert alpaca.segments(chat) == [("Answer in French.\n\n### Instruction:\nSay hi.\n\n### Response:\n", False), ("Salut.", True), (EOT, True)]
    assert alpaca.prompt(chat.messages[:2]) == alpaca.segments(chat)[0][0]
    assert alpaca.prompt([Message("user", "Say hi.")]) == f"{PREAMBLE}\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    assert tuple(alpaca.stop) == (EOT, "\n\n### Instruction:")


def test_alpaca_refuses_conversations() -> None:
    alpaca = style("alpaca")
    with pytest.raises(DataError) as err:
        alpaca.segments(Example(CONVERSATION, source="chat.jsonl line 2"))
    assert str(err.value) == (
        "chat.jsonl line 2: prompt style 'alpaca' takes one user message and one assistant reply, after an optional "
        "system message; got roles: system, user, assistant, user, assistant; use prompt style 'chat' for conversations"
    )
    with pytest.raises(DataError) as err:
        alpaca.prompt(CONVERSATION[:4])
    assert str(err.value) == (
        "prompt style 'alpaca' takes one user message, after an optional system message; "
        "got roles: system, user, assistant, user; use prompt style 'chat' for conversations"
    )


def test_chat_writes_turns_and_its_prompts_are_the_training_text_so_far() -> None:
    chat = style("chat")
    example = Example(CONVERSATION + (Message("user", "Thanks"),))  # nothing after the last reply is trained
    text = "System: Be brief.\nUser: Hi\nAssistant: Hello.<|endoftext|>\nUser: Name?\nAssistant: Kit.<|endoftext|>"
    assert joined(chat.segments(example)) == text
    assert [text for text, trained in chat.segments(example) if trained] == [" Hello.", EOT, " Kit.", EOT]
    assert chat.prompt(CONVERSATION[:2]) == "System: Be brief.\nUser: Hi\nAssistant:"
    assert chat.prompt(CONVERSATION[:4]) == "System: Be brief.\nUser: Hi\nAssistant: Hello.<|endoftext|>\nUser: Name?\nAssistant:"
    for k, message in enumerate(CONVERSATION):
        if message.role == "assistant":  # the prompt is the training text up to the reply, to the character
            assert text.startswith(chat.prompt(CONVERSATION[:k]) + f" {message.content}{EOT}")
    assert tuple(chat.stop) == (EOT, "\nUser:")
    for messages in ((), CONVERSATION[:3]):
        with pytest.raises(DataError) as err:
            chat.prompt(messages)
        roles = ", ".join(m.role for m in messages) or "none"
        assert str(err.value) == f"a prompt ends with the message the reply answers (a user or system message); got roles: {roles}"


def test_chat_role_names_are_parameters_checked_by_the_registry() -> None:
    named = style("chat", user="Q", assistant="A")
    assert named.prompt([Message("user", "2+2?")]) == "Q: 2+2?\nA:"
    assert tuple(named.stop) == (EOT, "\nQ:")
    with pytest.raises(RegistryError) as err:
        style("chat", human="Q")
    assert str(err.value) == "prompt_style 'chat': human: Extra inputs are not permitted"
    with pytest.raises(RegistryError) as err:
        style("chat", user="Q:")
    assert str(err.value) == "prompt_style 'chat': user: String should match pattern '^[^\\n:]+$'"


def test_prompt_style_is_a_core_kind_with_a_contract_and_built_ins() -> None:
    assert "prompt_style" in CORE_KINDS and FACTORY_CONTRACTS["prompt_style"] is PromptStyleFactory
    registry = default_registry()
    assert {name: registry.get("prompt_style", name).source for name in ("alpaca", "chat")} == {
        "alpaca": "built-in",
        "chat": "built-in",
    }


class Shouting:
    """A third party's style: "Q: ..." and "A: ..." in capitals."""

    stop = (EOT,)

    def segments(self, example: Example) -> list[tuple[str, bool]]:
        user, reply = example.messages
        return [(f"Q: {user.content.upper()}\nA:", False), (f" {reply.content.upper()}", True), (EOT, True)]

    def prompt(self, messages: Sequence[Message]) -> str:
        return f"Q: {messages[-1].content.upper()}\nA:"


class ShoutingPlugin:
    @hookimpl
    def gptkit_register_components(self, registry: Registry) -> None:
        registry.register("prompt_style", "shouting", Shouting)


def test_a_plugin_registers_a_prompt_style_by_name_and_it_is_used() -> None:
    registry = build_registry(plugin_dirs=[], entry_points=False, extra_plugins=[("shouting plugin", ShoutingPlugin())])
    component = registry.get("prompt_style", "shouting")
    assert (component.source, component.description) == ("shouting plugin", 'A third party\'s style: "Q: ..." and "A: ..." in capitals.')
    shouting = registry.create("prompt_style", "shouting")
    tokenizer = Tokenizer()
    encoded = encode_example(Example.from_alpaca("hi", "", "yo"), shouting, tokenizer, max_length=64)
    prompt = tokenizer.encode("Q: HI\nA:")
    assert encoded is not None
    assert encoded.ids.tolist() == prompt + tokenizer.encode(" YO") + [tokenizer.eot_id]
    assert encoded.labels.tolist() == [-100] * (len(prompt) - 1) + tokenizer.encode(" YO") + [tokenizer.eot_id]
