"""Options several verbs share, each defined once, and what the config options resolve to."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.dtypes import INFERENCE_DTYPES
from gptkit.errors import CheckpointError
from gptkit.model.config import (
    PRESETS,  # pydantic only: the preset names for --help cost no torch
)

if TYPE_CHECKING:
    from config import RunConfig
    from gptkit.registry import Registry


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON run config")
    parser.add_argument("--preset", metavar="NAME", help=f"model preset: {', '.join(PRESETS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting, e.g. train.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Where a trained model comes from: exactly one of a run directory and a Hugging Face folder."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="a gptkit run directory (its latest checkpoint)")
    source.add_argument("--hf-dir", metavar="DIR", help="a local Hugging Face GPT-2 checkpoint folder")


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=INFERENCE_DTYPES, default="float32", help="weights' precision (default float32)")


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """The flags `gptkit.generation.loading.open_session` reads."""
    parser.add_argument("--temperature", type=float, help="0: greedy. Any sampler option replaces the run's chain")
    parser.add_argument("--top-k", type=int, help="keep the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="keep the most likely tokens up to this probability mass")
    parser.add_argument("--min-p", type=float, help="keep tokens at least this fraction as likely as the top one")
    parser.add_argument("--repetition-penalty", type=float, help="above 1 discourages tokens already seen")
    parser.add_argument("--max-new-tokens", type=int, help="default: the run's sampling.max_new_tokens, else 200")
    parser.add_argument("--seed", type=int, help="seed the sampling for a reproducible result")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end at this text, not printed (repeatable)")


def add_compile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile", action="store_true",
        help="run the model through torch.compile; compiling delays the first token by tens of seconds",
    )


def resolve_config(args: argparse.Namespace, registry: Registry) -> RunConfig:
    """The run config from defaults, preset, file and --set (on top of a stored one when resuming)."""
    import config as run_config

    if not getattr(args, "resume", None):
        return run_config.load_run_config(args.config, args.preset, args.set, registry=registry)
    stored_path = Path(args.resume) / "config.json"
    if not stored_path.is_file():
        raise CheckpointError(f"cannot resume {args.resume}: no config.json there (is it a gptkit run directory?)")
    stored = json.loads(stored_path.read_text(encoding="utf-8"))
    merged = run_config.build_raw_config(args.config, args.preset, args.set, base=stored)
    cfg = run_config.validate_run_config(merged, registry)
    changed = [
        key for key in run_config.config_differences(stored, cfg.model_dump(mode="json"))
        if not key.startswith(run_config.RESUMABLE_PREFIXES)
    ]
    if changed:
        raise CheckpointError(
            f"cannot resume {args.resume} with a different config: {', '.join(changed)} differ from the stored "
            f"config.json. Only budgets, callbacks, sampling, device settings and train.lr, train.min_lr, "
            "train.grad_clip, run.dtype may change on resume"
        )
    return cfg
