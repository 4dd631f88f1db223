"""The conversation behind `main.py chat`: where a reply ends, /reset, a reply cut short."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from gptkit import GPTModel, ModelConfig
from gptkit.generation.chat import Chat
from gptkit.generation.samplers import Greedy

# --- a model that says a script ------------------------------------------------------------------


class Bytes:
    """A tokenizer whose ids are the UTF-8 bytes (EOT 256): a script's text is its token ids."""

    eot_id = 256
    vocab_size = 257

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(i for i in ids if i != self.eot_id)


class Scripted(GPTModel):
    """Answers any prompt with `script`, then newlines for as long as it is asked: what a model
    that has said its piece tends to do (a GPTModel, so generation treats it as it treats any)."""

    def __init__(self, script: str) -> None:
        super().__init__(ModelConfig(vocab_size=257, emb_dim=8, n_heads=1, n_layers=1, context_length=512))
        self.script = script.encode("utf-8")
        self.said = 0

    def forward(self, idx: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        # Several tokens are a new prompt (the prefill); one is the token just said.
        self.said = 0 if idx.shape[1] > 1 else self.said + 1
        nxt = self.script[self.said] if self.said < len(self.script) else ord("\n")
        logits = torch.zeros(idx.shape[0], 1, 257)
        logits[..., nxt] = 1.0
        return logits


def scripted_chat(script: str, max_new_tokens: int = 60, **options: Any) -> Chat:
    return Chat(Scripted(script), Bytes(), [Greedy()], max_new_tokens, **options)


def test_a_reply_ends_at_a_blank_line_rather_than_filling_max_new_tokens_with_newlines() -> None:
    chat = scripted_chat(" Fine, thanks.\nAnd you?\n\nUnrelated next paragraph")
    assert "".join(chat.reply("how are you")) == " Fine, thanks.\nAnd you?"
    # A model that falls silent at once gives an empty reply, not 60 newlines.
    assert "".join(scripted_chat("").reply("hi")) == ""


def test_the_newline_run_is_configurable_and_zero_turns_it_off() -> None:
    script = " one\n\ntwo\n\n\nthree"
    assert "".join(scripted_chat(script, newline_run=3).reply("x")) == " one\n\ntwo"
    assert "".join(scripted_chat(script, newline_run=1).reply("x")) == " one"
    free = "".join(scripted_chat(script, max_new_tokens=40, newline_run=0).reply("x"))
    assert free == script + "\n" * (40 - len(script))  # only max_new_tokens ends it
    with pytest.raises(ValueError, match="newline_run"):
        scripted_chat(script, newline_run=-1)


def test_a_reply_ends_at_the_next_turn_marker_and_at_the_given_stop_strings() -> None:
    assert "".join(scripted_chat(" Sure.\nUser: and then I said").reply("x")) == " Sure."
    assert "".join(scripted_chat(" Sure. END and more", stop=[" END"]).reply("x")) == " Sure."


def test_reset_forgets_the_conversation() -> None:
    chat = scripted_chat(" ok")
    fresh = chat.prompt_ids("second")
    "".join(chat.reply("first"))
    assert chat.prompt_ids("second") == Bytes().encode("User: first\nAssistant: ok\nUser: second\nAssistant:")
    chat.reset()
    assert chat.prompt_ids("second") == fresh == Bytes().encode("User: second\nAssistant:")


def test_a_reply_stopped_early_is_remembered_as_far_as_it_was_shown() -> None:
    chat = scripted_chat(" abcdefgh")
    pieces = chat.reply("go")
    shown = next(pieces) + next(pieces) + next(pieces)
    pieces.close()  # what the command does when Ctrl-C stops a reply
    assert shown == " ab"
    assert chat.exchanges == [Bytes().encode("User: go\nAssistant: ab\n")]
