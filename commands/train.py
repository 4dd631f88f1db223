"""`python main.py [train] [--config FILE] [--preset NAME] [--set KEY=VALUE ...] [--resume RUN_DIR]`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from commands import Interrupted, console
from commands.options import add_config_options, resolve_config
from gptkit.atomic import write_text_atomic
from gptkit.errors import GptkitError

if TYPE_CHECKING:
    from config import RunConfig
    from gptkit.data.dataset import PreparedData
    from gptkit.registry import Registry

HELP = "train a model (the default command)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser)


def run(args: argparse.Namespace, registry: Registry) -> int:
    # Deferred with the trainer: torch is slow to import, and `--help` needs none of it.
    from gptkit.training import distributed
    from trainer import pick_device

    cfg = resolve_config(args, registry)
    distributed.init_distributed(pick_device(cfg.run.device).type)  # nothing to join without torchrun
    try:
        return train(args, cfg, registry)
    finally:
        distributed.shutdown_distributed()


def make_run_dir(cfg: RunConfig) -> Path:
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


def prepare_data(cfg: RunConfig, tokenizer: object) -> PreparedData:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from gptkit.data.corpus import default_cache_dir
    from gptkit.data.dataset import prepare_dataset

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


def train(args: argparse.Namespace, cfg: RunConfig, registry: Registry) -> int:
    """Train in this process: alone, or as one of torchrun's processes (process 0 creates and writes)."""
    from gptkit.training import distributed
    from gptkit.training.checkpoint import latest_checkpoint
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
        raise Interrupted(f"interrupted; continue with: python main.py --resume {run_dir}") from None
    return 0
