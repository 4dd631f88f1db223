"""`python main.py chat (--run RUN_DIR | --hf-dir DIR) [sampler options]`: one stdin line per turn."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from commands import err_console
from commands.options import (
    add_compile_option,
    add_dtype_option,
    add_sampler_options,
    add_source_options,
)

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "talk with a model, one stdin line per turn"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_options(parser)
    add_sampler_options(parser)
    add_dtype_option(parser)
    add_compile_option(parser)


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Talk with a model: each line on stdin is a turn, each reply streams back; EOF or /exit ends.

    `registry` goes unused, as in `generate`: loading uses the process-wide one, which is it.
    """
    from gptkit.generation.chat import Chat
    from gptkit.generation.loading import open_session

    session = open_session(args)
    loaded = session.loaded
    chat = Chat(
        loaded.model, loaded.tokenizer, session.samplers, session.max_new_tokens, args.stop, session.generator,
        compile=session.compile,
    )
    interactive = sys.stdin.isatty()
    if interactive:
        err_console.print(f"chatting with {loaded.description}; /exit or Ctrl-D ends", highlight=False)
    try:
        while True:
            try:
                line = input(f"{Chat.USER} ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not line and not interactive:
                break  # readline() gives "" only at the end of the input
            line = line.strip()
            if line == "/exit":
                break
            if not line:
                continue
            if not interactive:  # a piped conversation reads as a transcript
                sys.stdout.write(f"{Chat.USER} {line}\n")
            sys.stdout.write(Chat.ASSISTANT)
            for piece in chat.reply(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    return 0
