"""The command line's verbs, one module each: `python main.py VERB ...` runs `commands/VERB.py`.

Each verb module has `HELP` (its line in `python main.py --help`), `add_arguments(parser)`
and `run(args, registry) -> int`. Defining the arguments imports neither torch nor gptkit's
model code, so `--help` answers at once; `run` imports what it needs. main.py holds the
table of verbs and the one place where errors become an `error:` line.

Like config.py and trainer.py this is application code, run from a checkout: the
installed package is `gptkit` alone.
"""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)  # messages about the run, so that stdout holds only the output


class Interrupted(Exception):
    """Ctrl-C stopped a command; the message says how to go on (main.py prints it and exits 130)."""
