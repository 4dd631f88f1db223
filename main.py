"""gptkit's command line: `python main.py [COMMAND] [OPTIONS]`.

    python main.py                         train with the default config
    python main.py --set model.norm=rmsnorm --set train.max_steps=500
    python main.py --config configs/gpt2-124m.toml
    python main.py --resume runs/NAME      continue a run exactly where it stopped
    python main.py config [...]            print the resolved config
    python main.py components [PATTERN]    list every registered component name
    python main.py generate --run RUN_DIR --prompt "def "   stream a continuation
    python main.py chat --run RUN_DIR      talk with the model
    python main.py serve --run RUN_DIR     web demo + OpenAI-compatible API on http://127.0.0.1:8000
    python main.py export --run RUN_DIR --out DIR   a Hugging Face GPT-2 folder (transformers loads it)
    python main.py classify --run RUN_DIR --text "..."   the label of a text (a classification run)
    python main.py evaluate --run RUN_DIR --task perplexity --data FILE   score a model
    python main.py merge-lora --run RUN_DIR --out NEW_RUN_DIR   fold a LoRA run's adapters into its weights
    python main.py --init-from gpt2 --set data.format=instruction --set data.path=FILE   finetune

Each command is a module of commands/; this file is their table and the one place
where a user's mistake becomes a short message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from pydantic import ValidationError
from rich.markup import escape

from commands import (
    Interrupted,
    chat,
    classify,
    components,
    console,
    err_console,
    evaluate,
    export,
    generate,
    merge_lora,
    serve,
    show_config,
    train,
)
from gptkit.errors import GptkitError, UsageError
from gptkit.model.config import describe_validation_error

# Each verb's module has HELP, add_arguments(parser) and run(args, registry) -> int;
# a new verb (evaluate, finetune) is one more module and one more line.
COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "config": show_config,
    "components": components,
    "generate": generate,
    "chat": chat,
    "serve": serve,
    "export": export,
    "classify": classify,
    "evaluate": evaluate,
    "merge-lora": merge_lora,
}
# The system refusing a read or write (full disk, no permission): the user's to fix, not a bug.
REFUSED_IO = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}
# A path the user gave that no file can have (too long, through a file, a link loop): also theirs.
IMPOSSIBLE_PATH = {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is a `UsageError` like any other.

    argparse's own reaction prints the whole usage text before its error line, which
    buries the one line that matters; main.py prints that line alone and points at --help.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python main.py",
        description="Train and use GPT-2 style models. With no command, trains with the default config.",
    )
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = verbs.add_parser(name, help=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def with_command(argv: list[str]) -> list[str]:
    """`argv` with its command first: none, or options only, means `train`.

    A first word that is neither an option nor a command is a mistake (`python main.py trian`):
    taken as train's argument it would end in "unrecognized arguments" and hide the typo.
    """
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return ["train", *argv]
    if argv[0] in COMMANDS or argv[0] in ("-h", "--help"):
        return argv
    close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UsageError(
        f"unknown command '{argv[0]}'{hint}; the commands are {', '.join(COMMANDS)} "
        "(with no command, or only options, python main.py trains; python main.py --help describes them)"
    )


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush meets no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (a test's buffer): nothing flushes it at exit
        pass


def print_error(message: str) -> None:
    # Messages quote paths, names and values as the user typed them: never read as rich markup.
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(with_command(argv))
    except UsageError as err:
        print_error(str(err))
        return 2
    module: ModuleType = args.module
    for name, value in getattr(module, "PROCESS_ENV", {}).items():
        os.environ.setdefault(name, value)  # before torch loads: libraries read these once
    from gptkit.plugins import (
        default_registry,  # past the parsing: making a registry imports torch
    )
    from gptkit.training.distributed import env_is_main

    if not env_is_main():
        # Under torchrun only process 0 speaks: the others' errors are its own, which it prints.
        console.quiet = err_console.quiet = True
    try:
        # The registry is made once, here, so that a broken plugin fails like any other user error.
        return module.run(args, default_registry())
    except Interrupted as stop:
        err_console.print(str(stop), soft_wrap=True, markup=False, highlight=False)
        return 130
    except KeyboardInterrupt:
        # Ctrl-C before a command's own handling starts (a model still loading, say): the
        # user stopped it, so it ends as Ctrl-C ends a shell command, without a traceback.
        err_console.print("interrupted", soft_wrap=True, markup=False, highlight=False)
        return 130
    except BrokenPipeError:
        # The reader stopped reading (`generate ... | head -c 5`): a normal way to end, not an error.
        quiet_stdout()
        return 0
    except ValidationError as err:
        print_error(f"invalid config\n{describe_validation_error(err)}")
    except GptkitError as err:
        print_error(str(err))
    except OSError as err:
        if err.errno not in REFUSED_IO | IMPOSSIBLE_PATH:
            raise  # any other OSError may be a bug in gptkit: keep its traceback
        where = err.filename or "a file"
        hint = " (check the free space and permissions there)" if err.errno in REFUSED_IO else ""
        print_error(f"{where}: {err.strerror}{hint}")
    return 2


if __name__ == "__main__":
    sys.exit(run())
