"""`python main.py [train] [--config FILE] [--preset NAME] [--set KEY=VALUE ...] [--resume RUN_DIR]`."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from commands import Interrupted, console
from commands.options import add_config_options, resolve_config
from gptkit.atomic import write_text_atomic
from gptkit.dtypes import dtype_name
from gptkit.errors import ConfigError, GptkitError

if TYPE_CHECKING:
    from config import RunConfig
    from gptkit.data.dataset import PreparedData
    from gptkit.data.example_data import ExampleData
    from gptkit.registry import Registry
    from trainer import Trainer

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


def make_run_dir(cfg: RunConfig) -> tuple[Path, list[Path]]:
    """The new run's directory, made and checked writable; also the folders this made, outermost first.

    Those folders are what a failure before the first checkpoint removes again (`remove_made`),
    so that a failed start leaves no folder behind to block the same run.name.
    """
    name = cfg.run.name or time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run.out_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise GptkitError(f"run directory {run_dir} already exists; pick another run.name or continue it with --resume {run_dir}")
    # Only what this command makes is removed again: an empty folder already there stays.
    made = [p for p in (run_dir, *run_dir.parents) if not p.exists()][::-1]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        remove_made(made)
        raise GptkitError(f"cannot write the run directory {run_dir}: {err.strerror or err}; set run.out_dir to a writable folder") from None
    return run_dir, made


def remove_made(made: list[Path]) -> None:
    """Remove the folders `make_run_dir` made, innermost first; the run folder with what this command wrote in it."""
    for folder in reversed(made):
        if folder == made[-1]:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: another run may have appeared beside ours


def prepare_data(cfg: RunConfig, tokenizer: object, registry: Registry) -> PreparedData | ExampleData:
    if cfg.data.format != "text":
        return prepare_examples(cfg, tokenizer, registry)
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


def prepare_examples(cfg: RunConfig, tokenizer: object, registry: Registry) -> ExampleData:
    """Instruction or classification examples; a classifier learns its label names and count here."""
    from gptkit.data.example_data import (
        prepare_classification_data,
        prepare_instruction_data,
    )

    d, ctx, seed = cfg.data, cfg.model.context_length, cfg.run.seed
    if d.format == "instruction":
        style = registry.create("prompt_style", d.prompt_style)
        data = prepare_instruction_data(d.path, style, tokenizer, ctx, d.val_fraction, seed, d.train_on_prompt, d.overflow)
    else:
        data = prepare_classification_data(d.path, tokenizer, ctx, d.val_fraction, seed, d.text_field, d.label_field, d.labels, d.overflow)
        set_classes(cfg, list(data.classes))
    console.print(f"data: {d.path}: {data.summary()}", markup=False, highlight=False)
    return data


def set_classes(cfg: RunConfig, classes: list[str]) -> None:
    """Record the label names in data.labels and their count in the classifier head (config.json keeps both)."""
    from gptkit import ComponentSpec

    head = cfg.model.head
    given = head.params.get("num_classes")
    if given is not None and given != len(classes):
        raise ConfigError(f"model.head.num_classes is {given}, but the data has {len(classes)} labels: {', '.join(classes)}")
    cfg.data.labels = classes
    cfg.model.head = ComponentSpec(name=head.name, **{**head.params, "num_classes": len(classes)})


def ready_learned_tokenizer(cfg: RunConfig, tokenizer: object, resume: Path | None) -> None:
    """A tokenizer learned from the data (char, bpe): read back from the run being resumed (or the
    run --init-from names), else fitted on data.path; the model's vocab_size then follows it."""
    from gptkit.data.corpus import default_cache_dir
    from gptkit.data.learned_tokenizer import (
        TOKENIZER_FILE,
        corpus_texts,
        is_learned,
        load_tokenizer_state,
        run_dir_of,
    )

    if not is_learned(tokenizer):
        return
    name = cfg.data.tokenizer.name
    if cfg.data.format != "text":
        raise ConfigError(
            f"data.tokenizer '{name}' is learned from plain text; data.format={cfg.data.format} wraps examples in "
            "text of its own (prompt templates, labels), so it needs a fixed tokenizer such as gpt2"
        )
    # --init-from a run (or one of its checkpoints): the ids its weights were trained on
    init_run = run_dir_of(Path(cfg.train.init_from)) if cfg.train.init_from else None
    if init_run is not None and not (init_run / TOKENIZER_FILE).is_file():
        init_run = None  # a Hugging Face folder or a hub name: nothing learned to read back
    if resume is not None:
        load_tokenizer_state(tokenizer, resume)
    elif init_run is not None:
        load_tokenizer_state(tokenizer, init_run)
    else:
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
        with console.status(f"building the {name} tokenizer from {cfg.data.path or 'the Python standard library'}"):
            tokenizer.fit(corpus_texts(cfg.data.path, cache / "downloads"))  # type: ignore[attr-defined]
    cfg.model.vocab_size = int(tokenizer.vocab_size)  # type: ignore[attr-defined]


def check_vocabulary(cfg: RunConfig, tokenizer: object) -> None:
    """A model with fewer token ids than its tokenizer would fail at the first batch holding a larger id."""
    tokens = int(tokenizer.vocab_size)  # type: ignore[attr-defined]
    if cfg.model.vocab_size < tokens:
        raise ConfigError(
            f"model.vocab_size is {cfg.model.vocab_size}, but tokenizer '{cfg.data.tokenizer.name}' has {tokens} "
            f"token ids; set model.vocab_size to at least {tokens}"
        )


def stored_config(cfg: RunConfig, registry: Registry, initial_weights: dict[str, object] | None = None) -> str:
    """config.json: the resolved config, where each of its components came from and where its first weights did."""
    from gptkit.training.init_from import INIT_FROM_KEY
    from gptkit.training.run_components import COMPONENTS_KEY, component_sources

    data = cfg.model_dump(mode="json")
    data[COMPONENTS_KEY] = component_sources(data, registry)
    if initial_weights is not None:
        data[INIT_FROM_KEY] = initial_weights
    return json.dumps(data, indent=2) + "\n"


def initial_weights(trainer: Trainer, run_dir: Path, resumed: bool) -> dict[str, object] | None:
    """Where the run's first weights came from: measured for a new run, kept as stored for a resumed one."""
    from gptkit.training.checkpoint import read_run_config
    from gptkit.training.init_from import INIT_FROM_KEY, provenance

    if resumed:
        return read_run_config(run_dir).get(INIT_FROM_KEY)
    return provenance(trainer.init_source) if trainer.init_source is not None else None


def train(args: argparse.Namespace, cfg: RunConfig, registry: Registry) -> int:
    """Train in this process: alone, or as one of torchrun's processes (process 0 creates and writes).

    Nothing is written before the data is ready and the trainer is built (checkpoint loaded,
    batches sized): a command that fails before training leaves the disk as it found it.
    """
    from gptkit.data.learned_tokenizer import is_learned, save_tokenizer
    from gptkit.training import distributed
    from gptkit.training.checkpoint import (
        latest_checkpoint,
        list_checkpoints,
        read_train_state,
    )
    from trainer import Trainer, budget_reason

    tokenizer = registry.create("tokenizer", cfg.data.tokenizer)
    ready_learned_tokenizer(cfg, tokenizer, Path(args.resume) if args.resume else None)
    check_vocabulary(cfg, tokenizer)
    checkpoint: Path | None = None
    made: list[Path] = []
    if args.resume:
        run_dir = Path(args.resume)
        checkpoint = distributed.on_main(lambda: latest_checkpoint(run_dir))
        console.print(f"resuming {run_dir} from {checkpoint.name}", markup=False, highlight=False)
        state, _ = read_train_state(checkpoint)
        if (reached := budget_reason(cfg, state)) is not None:
            # Training on would add nothing but a second end record to metrics.jsonl.
            console.print(
                f"{run_dir} has already {reached} (step {state.step}); nothing to train. "
                f"To go on, raise the budget: python main.py --resume {run_dir} --set train.max_steps=N",
                markup=False, highlight=False, soft_wrap=True,
            )
            return 0
    else:
        run_dir, made = distributed.on_main(lambda: make_run_dir(cfg))  # one timestamped name for all processes
    is_main = distributed.current().is_main
    try:
        data = distributed.main_first(lambda: prepare_data(cfg, tokenizer, registry))  # tokenized once, then read from the cache
        trainer = Trainer(cfg, run_dir, data, tokenizer, registry, resume_from=checkpoint)
        if is_main:
            if is_learned(tokenizer):
                save_tokenizer(tokenizer, run_dir)  # before config.json: a run with one has the other
            write_text_atomic(run_dir / "config.json", stored_config(cfg, registry, initial_weights(trainer, run_dir, checkpoint is not None)))
        report_setup(trainer, cfg, run_dir)
        try:
            trainer.fit()
        except KeyboardInterrupt:
            if made and not list_checkpoints(run_dir):
                raise Interrupted("interrupted before the first checkpoint; nothing was kept") from None
            raise Interrupted(f"interrupted; continue with: python main.py --resume {run_dir}") from None
    except BaseException:
        if is_main and made and not list_checkpoints(run_dir):
            remove_made(made)  # nothing to resume from: a failed start leaves nothing behind
        raise
    return 0


def report_setup(trainer: Trainer, cfg: RunConfig, run_dir: Path) -> None:
    for note in (trainer.batch_note, trainer.precision_note):
        if note:
            console.print(f"note: {note}", markup=False, highlight=False)
    world = trainer.process.world_size
    where = f"{trainer.device.type} x {world} processes ({cfg.run.parallel})" if world > 1 else str(trainer.device)
    console.print(
        f"model: {trainer.model.num_parameters() / 1e6:.1f}M parameters{trainable_note(trainer)} on {where} ({dtype_name(trainer.amp_dtype)}); "
        f"run directory {run_dir}", markup=False, highlight=False,
    )
    if world > 1:
        console.print(
            f"batch: {trainer.global_batch} sequences per step = {trainer.micro_batch} per micro-batch x "
            f"{trainer.accum} accumulation steps x {world} processes ({trainer.tokens_per_step:,} tokens)"
        )


def trainable_note(trainer: Trainer) -> str:
    """' (7.1M trainable)' when train.trainable or train.freeze keep some parameters fixed."""
    t = trainer.trainable
    return "" if t.trainable == t.total else f" ({t.trainable / 1e6:.1f}M trainable)"
