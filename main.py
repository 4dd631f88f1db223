"""gptkit's command line: `python main.py [COMMAND] [OPTIONS]`.

Commands: components (list every registered name). User mistakes end with a
short message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from gptkit import GptkitError, PRESETS, default_registry, describe_validation_error

console = Console()
err_console = Console(stderr=True)


def cmd_components(args: argparse.Namespace) -> int:
    """Print every registered component name, by kind, with where it comes from."""
    registry = default_registry()
    table = Table(title="gptkit components", show_lines=False)
    table.add_column("kind", style="bold cyan")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("source", style="dim")
    for kind in registry.kinds():
        for component in registry.list(kind, args.pattern):
            table.add_row(kind, component.name, component.description, component.source)
    console.print(table)
    console.print("model presets: " + ", ".join(PRESETS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python main.py", description="Train and use GPT-2 style models.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    components = commands.add_parser("components", help="list every registered component name")
    components.add_argument("pattern", nargs="?", default="*", help="glob filter on names, e.g. 'rms*'")
    components.set_defaults(handler=cmd_components)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        console.print("Training arrives with the next piece of work; try `python main.py components`.")
        return 0
    try:
        return handler(args)
    except ValidationError as err:
        err_console.print(f"[red]error:[/red] invalid config\n{describe_validation_error(err)}", highlight=False)
    except GptkitError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False)
    return 2


if __name__ == "__main__":
    sys.exit(run())
