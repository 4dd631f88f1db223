"""`python main.py config [--config FILE] [--preset NAME] [--set KEY=VALUE ...] [--resume RUN_DIR]`.

Named show_config so that it cannot be mistaken for config.py, the run config itself.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from commands import console
from commands.options import add_config_options, resolve_config

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "print the resolved run config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Print the resolved config as JSON (what a run directory's config.json will hold)."""
    from rich.syntax import Syntax

    cfg = resolve_config(args, registry)
    text = json.dumps(cfg.model_dump(mode="json"), indent=2)
    console.print(Syntax(text, "json", background_color="default") if console.is_terminal else text, soft_wrap=True)
    return 0
