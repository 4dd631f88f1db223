"""`python main.py chat (--run RUN_DIR | --hf-dir DIR) [sampler options]`: talk with a model.

At a terminal the line is read with readline: the arrow keys edit it and recall
earlier lines, and the history is kept in ~/.cache/gptkit/chat_history (under
$XDG_CACHE_HOME where that is set) from one chat to the next, as Python's own
prompt and ollama's do: trying the same questions against each new
checkpoint of a run is what this command is mostly for. Ctrl-C stops a reply and
returns to the prompt; at the prompt Ctrl-C, Ctrl-D or /exit ends the chat.

From a pipe each line is a turn and stdout reads as a transcript ("User: ..." then
"Assistant: ..."); nothing is recorded in the history.

A run finetuned on instructions (config.json's `data.format = "instruction"`) is
shown each turn in its prompt style, as its training data was written, after an
optional `--system` message; its replies end where the style's do. Any other
model is shown "User:" / "Assistant:" lines and a reply ends at a blank line too.

Lines starting with "/" are commands, never sent to the model; "//" sends a line
that starts with "/". What the commands say goes to stderr, so that stdout holds
only the conversation.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from commands import err_console
from commands.options import (
    add_compile_option,
    add_dtype_option,
    add_sampler_options,
    add_source_options,
)
from gptkit.errors import GptkitError

if TYPE_CHECKING:
    from gptkit.generation.chat import Conversation
    from gptkit.generation.loading import Session
    from gptkit.registry import Registry

HELP = "talk with a model: line editing and history at a terminal, one stdin line per turn from a pipe"

COMMANDS = {
    "/help": "list these commands",
    "/reset": "forget the conversation so far (the model starts afresh)",
    "/exit": "end the chat (so do Ctrl-D, and Ctrl-C at the prompt)",
}
ALIASES = {"/quit": "/exit"}
HISTORY_LINES = 1000  # kept in the history file; older lines are dropped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_options(parser)
    add_sampler_options(parser)
    add_dtype_option(parser)
    add_compile_option(parser)
    parser.add_argument(
        "--stop-newlines", type=int, default=None, metavar="N",
        help="end a reply at N newlines in a row (0: no such limit; default 2, a blank line, "
        "except for a run with a prompt style, whose model learnt where its replies end)",
    )
    parser.add_argument(
        "--system", metavar="TEXT",
        help="a system message before the conversation (a run with a prompt style only)",
    )


def history_path() -> Path:
    """Where the line history is kept: $XDG_CACHE_HOME/gptkit/chat_history, else ~/.cache/gptkit/chat_history."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "gptkit" / "chat_history"


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Talk with a model: each line is a turn, each reply streams back.

    `registry` goes unused, as in `generate`: loading uses the process-wide one, which is it.
    """
    if args.stop_newlines is not None and args.stop_newlines < 0:  # checked before the model loads, as the sampler options are
        raise GptkitError(f"--stop-newlines must be 0 (no limit) or more, got {args.stop_newlines}")
    from gptkit.generation.loading import open_session

    session = open_session(args)
    chat = _conversation(args, session)
    if sys.stdin.isatty():
        err_console.print(
            f"chatting with {session.loaded.description}; /help lists the commands, Ctrl-C stops a reply, Ctrl-D ends",
            highlight=False, markup=False, soft_wrap=True,
        )
    if not chat.multi_turn:
        err_console.print(
            "(this run's prompt style takes one message at a time: each line is answered on its own)",
            highlight=False, markup=False, soft_wrap=True,
        )
    return _interactive(chat) if sys.stdin.isatty() else _piped(chat)


def _conversation(args: argparse.Namespace, session: Session) -> Conversation[Any]:
    """A chat in the run's prompt style if it has one, else in "User:" / "Assistant:" lines."""
    from gptkit.generation.chat import DEFAULT_NEWLINE_RUN, Chat, StyledChat

    loaded = session.loaded
    common = (loaded.model, loaded.tokenizer, session.samplers, session.max_new_tokens, args.stop, session.generator)
    if loaded.prompt_style is not None:
        return StyledChat(
            *common, compile=session.compile, newline_run=args.stop_newlines or 0, style=loaded.prompt_style, system=args.system,
        )
    if args.system is not None:
        raise GptkitError(
            f"--system needs a run finetuned on instructions (data.format instruction, with a prompt style); "
            f"{loaded.description} continues text"
        )
    newline_run = DEFAULT_NEWLINE_RUN if args.stop_newlines is None else args.stop_newlines
    return Chat(*common, compile=session.compile, newline_run=newline_run)


def _piped(chat: Conversation[Any]) -> int:
    """One stdin line per turn, echoed, so that stdout reads as a transcript; EOF or /exit ends."""
    try:
        while line := sys.stdin.readline():  # "" only at the end of the input
            going_on, text = _turn(line, chat)
            if not going_on:
                break
            if text is None:
                continue
            sys.stdout.write(f"{chat.USER} {text}\n")
            _reply(chat, text)
    except KeyboardInterrupt:  # a script being stopped: no prompt to go back to
        sys.stdout.write("\n")
        return 130
    return 0


def _interactive(chat: Conversation[Any]) -> int:
    """The prompt loop at a terminal. Every way out leaves the cursor at the start of a line."""
    history = _LineEditing.start()
    try:
        while True:
            try:
                line = input(f"{chat.USER} ")
            except (EOFError, KeyboardInterrupt):
                # Ctrl-D or Ctrl-C at the prompt: the cursor is still after "User: ".
                sys.stdout.write("\n")
                break
            going_on, text = _turn(line, chat)
            if not going_on:
                break
            if text is None:
                continue
            try:
                _reply(chat, text)
            except KeyboardInterrupt:
                # Ctrl-C stops this reply only (the terminal has echoed ^C); the chat goes on.
                sys.stdout.write("\n")
                sys.stdout.flush()
    except KeyboardInterrupt:  # Ctrl-C between reading a line and starting its reply: end cleanly
        sys.stdout.write("\n")
    finally:
        sys.stdout.flush()
        history.save()
    return 0


def _reply(chat: Conversation[Any], text: str) -> None:
    try:
        chat.check(text)
    except GptkitError as err:  # this line cannot be sent; the chat goes on
        err_console.print(f"(not sent: {err})", highlight=False, markup=False, soft_wrap=True)
        return
    forgotten = chat.forgotten
    sys.stdout.write(chat.reply_prefix)
    sys.stdout.flush()
    # closing(): a reply stopped by Ctrl-C is remembered now, not whenever the generator is collected.
    with closing(chat.reply(text)) as pieces:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()  # a pipe would otherwise hold the reply back until the end
    sys.stdout.write("\n")
    sys.stdout.flush()
    if chat.forgotten > forgotten:
        # Dropping the oldest turns is how the conversation fits the window; saying so keeps a
        # user from wondering why the model forgot what they told it.
        err_console.print(
            f"(the model no longer sees the first {chat.forgotten} exchange(s): its context holds "
            f"{chat.model.cfg.context_length} tokens; /reset starts afresh)",
            highlight=False, markup=False, soft_wrap=True,
        )


def _turn(line: str, chat: Conversation[Any]) -> tuple[bool, str | None]:
    """One input line, piped or typed: (whether the chat goes on, the text to send, or None).

    A blank line sends nothing; a /command is carried out and sends nothing.
    """
    text = line.strip()
    if not text:
        return True, None
    if _is_command(text):
        return _command(text, chat) != "exit", None
    return True, _unescape(text)


def _is_command(text: str) -> bool:
    return text.startswith("/") and not text.startswith("//")


def _unescape(text: str) -> str:
    """ "//etc" is how a line starting with "/" reaches the model (as "/etc")."""
    return text[1:] if text.startswith("//") else text


def _command(text: str, chat: Conversation[Any]) -> str | None:
    """Carry out a /command; "exit" when the chat should end."""
    typed = text.split()[0]
    word = ALIASES.get(typed.lower(), typed.lower())
    if word == "/exit":
        return "exit"
    if word == "/reset":
        chat.reset()
        err_console.print("(the conversation starts afresh)", highlight=False, markup=False)
    elif word == "/help":
        width = max(map(len, COMMANDS))
        lines = [f"  {name.ljust(width)}  {what}" for name, what in COMMANDS.items()]
        lines += [
            f"  {'//...'.ljust(width)}  a line starting with \"//\" goes to the model with one \"/\" less",
            "  the arrow keys edit the line; Up and Down recall earlier lines, Tab completes a command",
            f"  the line history is kept in {history_path()}; Ctrl-C stops a reply",
        ]
        err_console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
    else:
        err_console.print(
            f'unknown command {typed}; /help lists them (start the line with "//" to send it to the model)',
            highlight=False, markup=False, soft_wrap=True,
        )
    return None


class _LineEditing:
    """readline at the prompt, with the history file read at start and written at the end.

    Where Python has no readline (Windows), `input()` still works, without editing or history.
    """

    def __init__(self, readline: ModuleType | None, path: Path) -> None:
        self.readline = readline
        self.path = path

    @classmethod
    def start(cls) -> _LineEditing:
        path = history_path()
        try:
            import readline
        except ImportError:
            return cls(None, path)
        readline.set_history_length(HISTORY_LINES)
        try:
            readline.read_history_file(path)
        except FileNotFoundError:
            pass  # the first chat
        except OSError as err:
            err_console.print(f"note: cannot read the chat history {path}: {err.strerror}", highlight=False, markup=False)
        readline.set_completer(_completer(readline, list(COMMANDS)))
        readline.set_completer_delims(" \t\n")
        readline.parse_and_bind("tab: complete")
        return cls(readline, path)

    def save(self) -> None:
        """Write the history back; a chat never fails at its end for a history it cannot keep."""
        if self.readline is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(self.path)
        except OSError as err:
            err_console.print(f"note: cannot save the chat history to {self.path}: {err.strerror}", highlight=False, markup=False)


def _completer(readline: ModuleType, words: list[str]) -> Callable[[str, int], str | None]:
    """Tab completes a command at the start of the line, and is a no-op anywhere else."""

    def complete(text: str, state: int) -> str | None:
        at_start = text.startswith("/") and readline.get_begidx() == 0
        # Failing that, the text itself as the one match: no match at all would make readline complete file names.
        matches = [w for w in words if at_start and w.startswith(text)] or [text]
        return matches[state] if state < len(matches) else None

    return complete
