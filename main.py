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

User mistakes end with a short message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.syntax import Syntax
from rich.table import Table

import config as run_config
from gptkit import PRESETS, CheckpointError, GptkitError, Registry, default_registry, describe_validation_error
from gptkit.atomic import write_text_atomic
from gptkit.training.checkpoint import latest_checkpoint
from gptkit.data.corpus import default_cache_dir
from gptkit.data.dataset import PreparedData, prepare_dataset
from gptkit.serving.server import add_serve_arguments, cmd_serve

console = Console()
err_console = Console(stderr=True)
COMMANDS = ("train", "config", "components", "generate", "chat", "serve")
# The system refusing a read or write (full disk, no permission): the user's to fix, not a bug.
REFUSED_IO = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def resolve_config(args: argparse.Namespace) -> run_config.RunConfig:
    """The run config from defaults, preset, file and --set (on top of a stored one when resuming)."""
    if not getattr(args, "resume", None):
        return run_config.load_run_config(args.config, args.preset, args.set)
    stored_path = Path(args.resume) / "config.json"
    if not stored_path.is_file():
        raise CheckpointError(f"cannot resume {args.resume}: no config.json there (is it a gptkit run directory?)")
    stored = json.loads(stored_path.read_text(encoding="utf-8"))
    merged = run_config.build_raw_config(args.config, args.preset, args.set, base=stored)
    cfg = run_config.validate_run_config(merged)
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


def make_run_dir(cfg: run_config.RunConfig) -> Path:
    name = cfg.run.name or time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise GptkitError(f"run directory {run_dir} already exists; pick another run.name or continue it with --resume {run_dir}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise GptkitError(f"cannot write the run directory {run_dir}: {err.strerror or err}; set run.out_dir to a writable folder") from None
    return run_dir


def prepare_data(cfg: run_config.RunConfig, tokenizer: object) -> PreparedData:
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    columns = (TextColumn("tokenizing {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(cfg.data.path or "the Python standard library", total=None)
        data = prepare_dataset(
            cfg.data.path, tokenizer, cache, cfg.data.val_fraction,  # type: ignore[arg-type]
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    s = data.stats
    how = "cached" if s.cached else f"tokenized at {s.mb_per_s:.1f} MB/s"
    console.print(f"data: {s.n_files} files, {s.text_mb:.1f} MB, {data.train.n_tokens:,} train / {data.val.n_tokens:,} val tokens ({how})")
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from gptkit.training import distributed  # deferred with the trainer: torch is slow to import for `--help`
    from trainer import pick_device

    if not distributed.env_is_main():
        # Under torchrun only process 0 speaks: the others' errors are its own, which it prints.
        console.quiet = err_console.quiet = True
    cfg = resolve_config(args)
    registry = default_registry()
    distributed.init_distributed(pick_device(cfg.run.device).type)  # nothing to join without torchrun
    try:
        return train(args, cfg, registry)
    finally:
        distributed.shutdown_distributed()


def train(args: argparse.Namespace, cfg: run_config.RunConfig, registry: Registry) -> int:
    """Train in this process: alone, or as one of torchrun's processes (process 0 creates and writes)."""
    from gptkit.training import distributed
    from trainer import Trainer

    checkpoint: Path | None = None
    if args.resume:
        run_dir = Path(args.resume)
        checkpoint = distributed.on_main(lambda: latest_checkpoint(run_dir))
        console.print(f"resuming {run_dir} from {checkpoint.name}")
    else:
        run_dir = distributed.on_main(lambda: make_run_dir(cfg))  # one timestamped name for all processes
    if distributed.current().is_main:
        write_text_atomic(run_dir / "config.json", json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
    tokenizer = registry.create("tokenizer", cfg.data.tokenizer)
    data = distributed.main_first(lambda: prepare_data(cfg, tokenizer))  # tokenized once, then read from the cache
    trainer = Trainer(cfg, run_dir, data, tokenizer, registry, resume_from=checkpoint)
    if trainer.batch_note:
        console.print(f"note: {trainer.batch_note}")
    world = trainer.process.world_size
    where = f"{trainer.device.type} x {world} processes ({cfg.run.parallel})" if world > 1 else str(trainer.device)
    console.print(
        f"model: {trainer.model.num_parameters() / 1e6:.1f}M parameters on {where} ({cfg.run.dtype}); "
        f"run directory {run_dir}"
    )
    if world > 1:
        console.print(
            f"batch: {trainer.global_batch} sequences per step = {trainer.micro_batch} per micro-batch x "
            f"{trainer.accum} accumulation steps x {world} processes ({trainer.tokens_per_step:,} tokens)"
        )
    try:
        trainer.fit()
    except KeyboardInterrupt:
        err_console.print(f"interrupted; continue with: python main.py --resume {run_dir}", soft_wrap=True)
        return 130
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config as JSON (what a run directory's config.json will hold)."""
    cfg = resolve_config(args)
    text = json.dumps(cfg.model_dump(mode="json"), indent=2)
    console.print(Syntax(text, "json", background_color="default") if console.is_terminal else text, soft_wrap=True)
    return 0


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


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue --prompt with a trained model, printing the text as it is generated."""
    from gptkit.generation.generate import stream_text
    from gptkit.generation.loading import open_session

    session = open_session(args)
    loaded = session.loaded
    err_console.print(f"model: {loaded.description}, {loaded.model.num_parameters() / 1e6:.1f}M parameters", highlight=False)
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


def cmd_chat(args: argparse.Namespace) -> int:
    """Talk with a model: each line on stdin is a turn, each reply streams back; EOF or /exit ends."""
    from gptkit.generation.loading import Chat, open_session

    session = open_session(args)
    loaded = session.loaded
    chat = Chat(
        loaded.model, loaded.tokenizer, session.samplers, session.max_new_tokens, args.stop, session.generator,
        compile=session.compile,
    )
    interactive = sys.stdin.isatty()
    if interactive:
        err_console.print(f"chatting with {loaded.description}; /exit or Ctrl-D ends", highlight=False)
    try:
        while True:
            try:
                line = input(f"{Chat.USER} ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not line and not interactive:
                break  # readline() gives "" only at the end of the input
            line = line.strip()
            if line == "/exit":
                break
            if not line:
                continue
            if not interactive:  # a piped conversation reads as a transcript
                sys.stdout.write(f"{Chat.USER} {line}\n")
            sys.stdout.write(Chat.ASSISTANT)
            for piece in chat.reply(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130
    return 0


def add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML or JSON run config")
    parser.add_argument("--preset", metavar="NAME", help=f"model preset: {', '.join(PRESETS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting, e.g. train.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python main.py",
        description="Train and use GPT-2 style models. With no command, trains with the default config.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser("train", help="train a model (the default command)")
    add_config_options(train)
    train.set_defaults(handler=cmd_train)
    show = commands.add_parser("config", help="print the resolved run config")
    add_config_options(show)
    show.set_defaults(handler=cmd_config)
    components = commands.add_parser("components", help="list every registered component name")
    components.add_argument("pattern", nargs="?", default="*", help="glob filter on names, e.g. 'rms*'")
    components.set_defaults(handler=cmd_components)
    generate = commands.add_parser("generate", help="continue a prompt with a trained model")
    generate.add_argument("--prompt", default="", help="text to continue; empty: start from <|endoftext|>")
    generate.set_defaults(handler=cmd_generate)
    chat = commands.add_parser("chat", help="talk with a model, one stdin line per turn")
    chat.set_defaults(handler=cmd_chat)
    for sub in (generate, chat):
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--run", metavar="RUN_DIR", help="a gptkit run directory (its latest checkpoint)")
        source.add_argument("--hf-dir", metavar="DIR", help="a Hugging Face GPT-2 checkpoint folder")
        sub.add_argument("--temperature", type=float, help="0: greedy. Any sampler option replaces the run's chain")
        sub.add_argument("--top-k", type=int, help="keep the k most likely tokens")
        sub.add_argument("--top-p", type=float, help="keep the most likely tokens up to this probability mass")
        sub.add_argument("--min-p", type=float, help="keep tokens at least this fraction as likely as the top one")
        sub.add_argument("--repetition-penalty", type=float, help="above 1 discourages tokens already seen")
        sub.add_argument("--max-new-tokens", type=int, help="default: the run's sampling.max_new_tokens, else 200")
        sub.add_argument("--seed", type=int, help="seed the sampling for a reproducible result")
        sub.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end at this text, not printed (repeatable)")
        sub.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights' precision")
        sub.add_argument("--compile", action="store_true", help="run the model through torch.compile; compiling delays the first token by tens of seconds")
    serve = commands.add_parser("serve", help="serve a web demo and an OpenAI-compatible completions API")
    add_serve_arguments(serve)
    serve.set_defaults(handler=cmd_serve)
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
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
