"""`python main.py serve (--run RUN_DIR | --hf-dir DIR) [--host H] [--port N] [limits]`.

A web demo and an OpenAI-compatible completions and chat API
(gptkit/serving/server.py) for a model loaded as `generate` and `chat` load it;
it serves until Ctrl-C. Chat requests are written in the run's prompt style when
it was finetuned on instructions, else in the built-in `chat` style.
Requests that give no sampler field, and the page, get the source's own chain
(a run's `sampling.samplers`), as `generate` without sampler options does; the
page starts from the source's example prompt and `sampling.max_new_tokens`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from commands.options import add_dtype_option, add_source_options
from gptkit.errors import GptkitError

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "serve a web demo and an OpenAI-compatible completions and chat API"
# Set before torch loads (main.py does it for the command it runs). Generations run on a pool of
# worker threads (as many as the slots let run and wait, and a few), and MKL (float32 linears on
# Intel CPUs) keeps a buffer pool per thread it ran on: under tests/test_server_load.py's 8 clients
# the server, then a thread per connection, grew ~25 MiB in 60 s with the pools and stayed flat without them.
PROCESS_ENV = {"MKL_DISABLE_FAST_MM": "1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--model-name", metavar="NAME", help="the model's name in API replies (default: the folder's name)")
    parser.add_argument("--device", default="cpu", help="torch device to run the model on (default cpu)")
    add_dtype_option(parser)
    parser.add_argument("--max-concurrent", type=int, default=8, metavar="N", help="generations decoded together in one batch (default 8)")
    parser.add_argument("--max-queue", type=int, default=8, metavar="N", help="requests waiting for a slot before 429 (default 8)")
    parser.add_argument("--queue-timeout", type=float, default=10.0, metavar="SECONDS", help="longest wait for a slot before 429 (default 10)")
    parser.add_argument("--max-tokens-cap", type=int, default=512, metavar="N", help="largest max_tokens a request may ask for (default 512)")
    parser.add_argument("--max-prompt-tokens", type=int, metavar="N", help="longest prompt in tokens (default: the context length)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")


def check_limits(args: argparse.Namespace) -> None:
    """Refuse a port or limit out of range by its flag, before the model is loaded."""
    if not 0 <= args.port <= 65535:
        raise GptkitError(f"--port must be 0 (any free port) to 65535, got {args.port}")
    for flag, value, least in (
        ("--max-concurrent", args.max_concurrent, 1),
        ("--max-queue", args.max_queue, 0),
        ("--max-tokens-cap", args.max_tokens_cap, 1),
        ("--max-prompt-tokens", args.max_prompt_tokens, 1),
    ):
        if value is not None and value < least:
            raise GptkitError(f"{flag} must be at least {least}, got {value}")
    if not 0 < args.queue_timeout < float("inf"):
        raise GptkitError(f"--queue-timeout must be a positive number of seconds, got {args.queue_timeout}")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Load the model, then serve it until Ctrl-C. `registry` goes unused: loading uses the process-wide one, which is it."""
    from gptkit.dtypes import torch_dtype
    from gptkit.generation.loading import load_model
    from gptkit.serving.engine import ServedStyle
    from gptkit.serving.server import serve_forever

    check_limits(args)
    # On the serving device before the CPU kernels are considered: a GPU model gets none.
    loaded = load_model(args.run, args.hf_dir, torch_dtype(args.dtype), device=args.device, quantize=args.quantize)
    model = loaded.model
    name = args.model_name or Path(args.run or args.hf_dir).resolve().name
    serve_forever(
        model, loaded.tokenizer, host=args.host, port=args.port, model_name=name,
        max_concurrent=args.max_concurrent, max_queue=args.max_queue, queue_timeout=args.queue_timeout,
        max_new_tokens_cap=args.max_tokens_cap, max_prompt_tokens=args.max_prompt_tokens, log_requests=not args.quiet,
        samplers=loaded.samplers, example_prompt=loaded.prompt, default_max_tokens=loaded.max_new_tokens,
        chat_style=ServedStyle.of(loaded.prompt_style, loaded.prompt_style_spec),
    )
    return 0
