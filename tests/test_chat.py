"""`main.py chat`: where a reply ends, the /commands, and the terminal (line editing, history, Ctrl-C) in a pty."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pexpect
import pytest
import torch
from conftest import randomize_weights, subprocess_env
from rich.console import Console
from test_cli_generate import (
    greedy_text,  # a helper, not a test: nothing is collected twice
)

import config as run_config
import main
from gptkit import GPTModel, ModelConfig
from gptkit.generation.chat import Chat
from gptkit.generation.samplers import Greedy
from gptkit.training.checkpoint import save_checkpoint
from gptkit.training.train_state import TrainState

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"vocab_size": 50257, "emb_dim": 32, "n_heads": 2, "n_layers": 1, "context_length": 32, "weight_tying": False}
PTY_TIMEOUT = 20  # seconds for any one expected output; a start-up (torch, the model) takes a few


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


# --- the command, from a pipe ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> GPTModel:
    return randomize_weights(GPTModel(ModelConfig(**MODEL)), 0)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def run_dir(model: GPTModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as training leaves it (config.json, one checkpoint), greedy by its own sampling."""
    overrides = [f"model.{k}={json.dumps(v)}" for k, v in MODEL.items()] + ['sampling.samplers=["greedy"]']
    cfg = run_config.load_run_config(overrides=overrides)
    path = tmp_path_factory.mktemp("runs") / "r"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    save_checkpoint(path, model, torch.optim.AdamW(model.parameters()), TrainState(step=2))
    return path


def greedy_reply(model: GPTModel, prompt: str, n: int) -> str:
    """Greedy text after `prompt`, the whole context recomputed per token, cut where a chat reply ends."""
    return re.split(r"\nUser:|\n\n", greedy_text(model, prompt, n))[0]


def run_chat(monkeypatch: pytest.MonkeyPatch, argv: Sequence[str], stdin: str) -> tuple[int, str, str]:
    """main.run("chat", ...) in this process with piped stdin: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    quiet = Console(file=err, width=1000, no_color=True)
    monkeypatch.setattr(main, "err_console", quiet)
    monkeypatch.setattr("commands.chat.err_console", quiet)
    code = main.run(["chat", *argv])
    return code, out.getvalue(), err.getvalue()


def test_commands_are_carried_out_not_sent_to_the_model(monkeypatch: pytest.MonkeyPatch, run_dir: Path, model: GPTModel) -> None:
    code, out, err = run_chat(monkeypatch, ["--run", str(run_dir), "--max-new-tokens", "8"], "/help\n/foo bar\nhello\n/quit\nnever\n")
    assert code == 0
    # stdout is the transcript of the one real turn; /quit ended the chat before "never".
    assert out == f"User: hello\nAssistant:{greedy_reply(model, 'User: hello' + chr(10) + 'Assistant:', 8)}\n"
    for command in ("/help", "/reset", "/exit"):
        assert command in err
    assert "unknown command /foo; /help lists them" in err


def test_reset_starts_the_conversation_afresh(monkeypatch: pytest.MonkeyPatch, run_dir: Path, model: GPTModel) -> None:
    args = ["--run", str(run_dir), "--max-new-tokens", "8"]
    fresh = greedy_reply(model, "User: again\nAssistant:", 8)
    _, went_on, _ = run_chat(monkeypatch, args, "first\nagain\n")
    code, reset, err = run_chat(monkeypatch, args, "first\n/reset\nagain\n")
    assert code == 0 and "afresh" in err
    assert not went_on.endswith(f"User: again\nAssistant:{fresh}\n"), "the first turn should change the second reply"
    assert reset.endswith(f"User: again\nAssistant:{fresh}\n")


def test_a_double_slash_sends_a_line_starting_with_a_slash(monkeypatch: pytest.MonkeyPatch, run_dir: Path, model: GPTModel) -> None:
    code, out, err = run_chat(monkeypatch, ["--run", str(run_dir), "--max-new-tokens", "6"], "//etc/hosts\n")
    assert code == 0 and err == ""
    assert out == f"User: /etc/hosts\nAssistant:{greedy_reply(model, 'User: /etc/hosts' + chr(10) + 'Assistant:', 6)}\n"


def test_a_negative_newline_run_fails_before_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out, err = run_chat(monkeypatch, ["--run", str(tmp_path / "absent"), "--stop-newlines", "-1"], "hi\n")
    assert code == 2 and out == ""
    assert err == "error: --stop-newlines must be 0 (no limit) or more, got -1\n"


# --- the command at a terminal -------------------------------------------------------------------


def spawn_chat(run_dir: Path, home: Path, *options: str) -> pexpect.spawn:
    """`main.py chat` in a pseudo-terminal, with its own home (so its own history file) and no inputrc."""
    env = subprocess_env(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"), INPUTRC=os.devnull, PYTHONIOENCODING="utf-8")
    child = pexpect.spawn(
        sys.executable, [str(ROOT / "main.py"), "chat", "--run", str(run_dir), "--seed", "0", *options],
        cwd=str(ROOT), env=env, encoding="utf-8", timeout=PTY_TIMEOUT, dimensions=(24, 200),
    )
    child.expect_exact("User: ")
    return child


def next_reply(child: pexpect.spawn) -> str:
    """The reply the terminal shows next, with the terminal's \\r\\n read as \\n."""
    child.expect_exact("Assistant:")
    child.expect_exact("\r\nUser: ")
    return str(child.before).replace("\r\n", "\n")


def ended(child: pexpect.spawn) -> str:
    """Everything the chat printed after the last prompt, once it has exited."""
    child.expect(pexpect.EOF)
    child.close()
    return str(child.before)


LEFT, UP = "\x1b[D", "\x1b[A"  # what the arrow keys send
needs_pty = pytest.mark.skipif(sys.platform == "win32", reason="pexpect.spawn needs POSIX pseudo-terminals")


@needs_pty
def test_arrow_keys_edit_the_line_and_ctrl_d_ends_on_a_fresh_line(run_dir: Path, model: GPTModel, tmp_path: Path) -> None:
    edited, typed = (greedy_reply(model, f"User: {line}\nAssistant:", 8) for line in ("hello", "helol"))
    assert edited != typed, "the two lines should get different replies"
    child = spawn_chat(run_dir, tmp_path, "--max-new-tokens", "8")
    child.send(f"helo{LEFT}l\r")  # "helo", Left, "l", Enter: "hello", had the Left key moved the cursor
    assert next_reply(child) == edited
    child.sendeof()  # Ctrl-D at the prompt
    assert ended(child) == "\r\n"  # the shell's prompt starts on a line of its own
    assert child.exitstatus == 0
    assert (tmp_path / "cache" / "gptkit" / "chat_history").read_text().splitlines() == ["hello"]


@needs_pty
def test_up_recalls_a_line_from_an_earlier_chat(run_dir: Path, model: GPTModel, tmp_path: Path) -> None:
    history = tmp_path / "cache" / "gptkit" / "chat_history"
    history.parent.mkdir(parents=True)
    history.write_text("what is a tensor\nhello\n")  # as an earlier chat left it
    child = spawn_chat(run_dir, tmp_path, "--max-new-tokens", "8")
    child.send(f"{UP}{UP}\r")  # two lines back: the older of the two
    assert next_reply(child) == greedy_reply(model, "User: what is a tensor\nAssistant:", 8)
    child.send("/exit\r")
    assert ended(child).endswith("\r\n") and child.exitstatus == 0
    assert history.read_text().splitlines() == ["what is a tensor", "hello", "what is a tensor", "/exit"]


@needs_pty
def test_ctrl_c_stops_a_reply_and_returns_to_the_prompt(run_dir: Path, tmp_path: Path) -> None:
    # A reply of up to 100,000 tokens runs for minutes; Ctrl-C comes once the first 30 characters show.
    child = spawn_chat(run_dir, tmp_path, "--max-new-tokens", "100000")
    child.send("tell me everything\r")
    child.expect(re.compile(r"Assistant:[^\r\n]{30}"))
    child.sendintr()  # Ctrl-C
    child.expect_exact("\r\nUser: ", timeout=10)
    assert child.isalive(), "Ctrl-C during a reply should stop the reply, not the chat"
    child.sendintr()  # a second Ctrl-C, at the prompt, ends the chat
    assert ended(child).endswith("\r\n")
    assert child.exitstatus == 0


def test_the_chat_says_when_the_oldest_exchanges_no_longer_fit(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    # A 32-token window with room for 8 new tokens: the second or third turn pushes the first out.
    lines = "".join(f"tell me about the number {i} please\n" for i in range(4))
    code, _, err = run_chat(monkeypatch, ["--run", str(run_dir), "--max-new-tokens", "8"], lines)
    assert code == 0
    assert "the model no longer sees the first 1 exchange(s): its context holds 32 tokens; /reset starts afresh" in err
    _, _, short = run_chat(monkeypatch, ["--run", str(run_dir), "--max-new-tokens", "8"], "hi\n")
    assert "no longer sees" not in short
