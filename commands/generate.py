"""`python main.py generate (--run RUN_DIR | --hf-dir DIR) [--prompt TEXT] [sampler options]`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from commands import err_console
from commands.options import (
    add_compile_option,
    add_dtype_option,
    add_sampler_options,
    add_source_options,
)

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "continue a prompt with a trained model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default="", help="text to continue; empty: start from <|endoftext|>")
    add_source_options(parser)
    add_sampler_options(parser)
    add_dtype_option(parser)
    add_compile_option(parser)


def warn_if_prompt_too_long(prompt: str, tokenizer: Any, context_length: int) -> None:
    """Say so when the model will not see the whole prompt: generation reads only the last window of it."""
    from gptkit.generation.generate import encode_prompt

    n = len(encode_prompt(tokenizer, prompt))
    if n > context_length:
        err_console.print(
            f"warning: the prompt is {n} tokens, longer than the model's context of {context_length}; "
            f"the model sees only its last {context_length} tokens",
            highlight=False, markup=False, soft_wrap=True,
        )


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Continue --prompt with a trained model, printing the text as it is generated.

    `registry` goes unused: loading takes its tokenizer and samplers from the
    process-wide registry, which is the one main.py built.
    """
    from gptkit.generation.generate import stream_text
    from gptkit.generation.loading import open_session

    session = open_session(args)
    loaded = session.loaded
    err_console.print(f"model: {loaded.description}, {loaded.model.num_parameters() / 1e6:.1f}M parameters", highlight=False, markup=False)
    warn_if_prompt_too_long(args.prompt, loaded.tokenizer, loaded.model.cfg.context_length)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    try:
        for piece in stream_text(
            loaded.model, loaded.tokenizer, args.prompt, session.max_new_tokens, session.samplers,
            stop=args.stop, generator=session.generator, compile=session.compile,
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()  # a pipe would otherwise hold the text back until the end
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    sys.stdout.write("\n")
    return 0
