"""`python main.py components [PATTERN]`: every name a config can hold, by kind, with where it comes from."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from commands import console

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "list every registered component name"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob filter on names, e.g. 'rms*'")


def run(args: argparse.Namespace, registry: Registry) -> int:
    from rich.table import Table

    from gptkit.model.config import PRESETS

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
