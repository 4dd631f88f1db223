"""Options several verbs share, each defined once, and what the config options resolve to."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.dtypes import DTYPE_NAMES, QUANTIZE_SCHEMES
from gptkit.errors import CheckpointError, ConfigError
from gptkit.model.config import (
    PRESETS,  # pydantic only: the preset names for --help cost no torch
)

if TYPE_CHECKING:
    from config import RunConfig
    from gptkit.registry import Registry


class Once(argparse.Action):
    """Store an option's value, refusing the option a second time.

    argparse's plain store keeps the last of several and drops the others without a word:
    a second --config would silently replace the first instead of adding to it.
    """

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object, option_string: str | None = None
    ) -> None:
        previous = getattr(namespace, self.dest, None)
        if previous is not None:
            raise argparse.ArgumentError(self, f"given twice ('{previous}' and '{values}'); give it once")
        setattr(namespace, self.dest, values)


def integer(text: str) -> int:
    """An int option's value; the message quotes it as typed (argparse's own shows its repr)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None


def number(text: str) -> float:
    """A float option's value, finite: nan or inf would reach the sampling as nonsense probabilities."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action=Once, metavar="FILE", help="TOML or JSON run config")
    parser.add_argument("--preset", action=Once, metavar="NAME", help=f"model preset: {', '.join(PRESETS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting, e.g. train.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", action=Once, metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    parser.add_argument(
        "--init-from", action=Once, metavar="SOURCE",
        help="start a new run from trained weights: a run directory, RUN/checkpoints/step_N, a Hugging Face "
        "folder or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, owner/name); same as --set train.init_from=SOURCE",
    )


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """Where a trained model comes from: exactly one of a run directory and a Hugging Face folder."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="a gptkit run directory (its latest checkpoint)")
    source.add_argument("--hf-dir", metavar="DIR", help="a local Hugging Face GPT-2 checkpoint folder")


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    """--dtype and --quantize: how the loaded weights are stored (`gptkit.generation.loading.load_model` checks them)."""
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="weights' precision (default float32; float16: CUDA only)")
    parser.add_argument(
        "--quantize", choices=QUANTIZE_SCHEMES, metavar="SCHEME",
        help=f"store the linear weights in fewer bits ({', '.join(QUANTIZE_SCHEMES)}: weight-only, a scale per output channel; CPU only)",
    )


def add_sampler_options(parser: argparse.ArgumentParser) -> None:
    """The flags `gptkit.generation.loading.open_session` reads."""
    parser.add_argument("--temperature", type=number, help="0: greedy. Any sampler option replaces the run's chain")
    parser.add_argument("--top-k", type=integer, help="keep the k most likely tokens")
    parser.add_argument("--top-p", type=number, help="keep the most likely tokens up to this probability mass")
    parser.add_argument("--min-p", type=number, help="keep tokens at least this fraction as likely as the top one")
    parser.add_argument("--repetition-penalty", type=number, help="above 1 discourages tokens already seen")
    parser.add_argument("--max-new-tokens", type=integer, help="default: the run's sampling.max_new_tokens, else 200")
    parser.add_argument("--seed", type=integer, help="seed the sampling for a reproducible result")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end at this text, not printed (repeatable)")


def add_compile_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile", action="store_true",
        help="run the model through torch.compile; compiling delays the first token by tens of seconds",
    )


def read_stored_config(run_dir: str) -> dict[str, Any]:
    """A run directory's config.json as a dict, or a `CheckpointError` saying what is wrong with it."""
    from gptkit.training.checkpoint import (
        read_run_config,  # deferred: the checkpoint module imports torch
    )

    if not (Path(run_dir) / "config.json").is_file():
        raise CheckpointError(f"cannot resume {run_dir}: no config.json there (is it a gptkit run directory?)")
    try:
        return read_run_config(Path(run_dir))
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume {run_dir}: {err}") from None


def resolve_config(args: argparse.Namespace, registry: Registry) -> RunConfig:
    """The run config from defaults, preset, file and --set (on top of a stored one when resuming).

    Resuming reads and checks everything before a byte is written: a refused resume
    leaves the run directory as it was.
    """
    import config as run_config
    from gptkit.training.init_from import INIT_FROM_KEY
    from gptkit.training.run_components import COMPONENTS_KEY, missing_components_note

    if not getattr(args, "resume", None):
        return resolve_new_config(args, registry)
    if getattr(args, "init_from", None) is not None:
        raise ConfigError(f"--init-from {args.init_from} has no effect with --resume: a resumed run continues from its own checkpoint")
    if args.preset is not None:
        # The stored model would override every preset value: the flag would change nothing.
        raise ConfigError(
            f"--preset {args.preset} has no effect with --resume: a resumed run keeps the model it was made with"
        )
    stored = read_stored_config(args.resume)
    sources = stored.pop(COMPONENTS_KEY, None)  # provenance, not a setting
    stored.pop(INIT_FROM_KEY, None)  # likewise
    merged = run_config.build_raw_config(args.config, None, args.set, base=stored)
    try:
        cfg = run_config.validate_run_config(merged, registry)
    except ConfigError as err:
        note = missing_components_note({**stored, COMPONENTS_KEY: sources}, registry)
        raise ConfigError(f"{err}\n{note}" if note else str(err)) from None
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


def resolve_new_config(args: argparse.Namespace, registry: Registry) -> RunConfig:
    """A new run's config; with `--init-from` (or train.init_from) the model section is the source's."""
    import config as run_config
    from gptkit.training.init_from import resolve_init_source

    data = run_config.layered_config(args.config, args.preset, args.set)
    if getattr(args, "init_from", None) is not None:
        run_config.set_dotted(data, ["train", "init_from"], args.init_from)
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    given = train.get("init_from")
    if isinstance(given, str):
        source = resolve_init_source(given)
        data = run_config.with_source_model(data, source.model, given, source.tokenizer)
    return run_config.validate_run_config(run_config.expand_model_preset(data), registry)
