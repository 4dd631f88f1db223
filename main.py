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

Each command is a module of commands/; this file is their table and the one place
where a user's mistake becomes a short message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from types import ModuleType

from pydantic import ValidationError

from commands import (
    Interrupted,
    chat,
    components,
    console,
    err_console,
    generate,
    serve,
    show_config,
    train,
)
from gptkit.errors import GptkitError
from gptkit.model.config import describe_validation_error

# Each verb's module has HELP, add_arguments(parser) and run(args, registry) -> int;
# a new verb (evaluate, export, finetune) is one more module and one more line.
COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "config": show_config,
    "components": components,
    "generate": generate,
    "chat": chat,
    "serve": serve,
}
# The system refusing a read or write (full disk, no permission): the user's to fix, not a bug.
REFUSED_IO = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        description="Train and use GPT-2 style models. With no command, trains with the default config.",
    )
    verbs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = verbs.add_parser(name, help=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(module=module)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    args = build_parser().parse_args(argv)
    from gptkit.plugins import (
        default_registry,  # past the parsing: making a registry imports torch
    )
    from gptkit.training.distributed import env_is_main

    if not env_is_main():
        # Under torchrun only process 0 speaks: the others' errors are its own, which it prints.
        console.quiet = err_console.quiet = True
    module: ModuleType = args.module
    try:
        # The registry is made once, here, so that a broken plugin fails like any other user error.
        return module.run(args, default_registry())
    except Interrupted as stop:
        err_console.print(str(stop), soft_wrap=True)
        return 130
    except ValidationError as err:
        err_console.print(f"[red]error:[/red] invalid config\n{describe_validation_error(err)}", highlight=False, soft_wrap=True)
    except GptkitError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
    except OSError as err:
        if err.errno not in REFUSED_IO:
            raise  # any other OSError may be a bug in gptkit: keep its traceback
        where = err.filename or "a file"
        err_console.print(f"[red]error:[/red] {where}: {err.strerror} (check the free space and permissions there)", highlight=False, soft_wrap=True)
    return 2


if __name__ == "__main__":
    sys.exit(run())
