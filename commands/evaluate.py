"""`python main.py evaluate (--run RUN | --hf-dir DIR | --init-from SOURCE) --task TASK --data SOURCE`.

Tasks: `perplexity` over a text (a file, folder, glob or URL, as data.path takes),
scored with a sliding window (`--stride`, default half the context); `multiple-choice`
over JSON lines of HellaSwag-shaped or harness-shaped questions (`--limit N`). The
figures are printed as a table and written as JSON: into RUN/eval/ for a run, else
into ./eval/, or to `--out FILE`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from commands import console
from commands.options import Once, add_dtype_option, integer

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "score a model: perplexity on a text, or accuracy on multiple-choice questions"
TASKS = ("perplexity", "multiple-choice")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action=Once, metavar="RUN_DIR", help="a gptkit run directory (its latest checkpoint)")
    source.add_argument("--hf-dir", action=Once, metavar="DIR", help="a local Hugging Face GPT-2 folder")
    source.add_argument("--init-from", action=Once, metavar="SOURCE", help="anything --init-from takes: a run, a checkpoint, a folder, a hub name")
    parser.add_argument("--task", action=Once, required=True, choices=TASKS, help="what to score")
    parser.add_argument("--data", action=Once, required=True, metavar="SOURCE", help="the text (perplexity) or the JSONL questions (multiple-choice)")
    parser.add_argument("--stride", type=integer, metavar="N", help="perplexity: tokens the window moves by (default: half the context)")
    parser.add_argument("--limit", type=integer, metavar="N", help="multiple-choice: score only the first N questions")
    parser.add_argument("--out", action=Once, metavar="FILE", help="where the JSON results go (default: RUN/eval/TASK-TIME.json, or ./eval/)")
    add_dtype_option(parser)


def run(args: argparse.Namespace, registry: Registry) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from gptkit.errors import GptkitError

    if args.limit is not None and args.limit < 1:
        raise GptkitError(f"--limit must be at least 1, got {args.limit}")
    if args.stride is not None and args.stride < 1:
        raise GptkitError(f"--stride must be at least 1, got {args.stride}")
    model, tokenizer, checkpoint = load(args)
    columns = (TextColumn(f"{args.task}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(args.task, total=None)
        advance = lambda done, total: progress.update(task, completed=done, total=total)
        figures, data_files = score(args, model, tokenizer, advance)
    table = Table(title=f"{args.task} of {checkpoint}")
    for name in ("metric", "value"):
        table.add_column(name)
    for name, value in figures.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    console.print(table)
    record = {
        "task": args.task, "checkpoint": checkpoint, "data": args.data, "data_sha256": files_sha256(data_files),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **figures,
        **({"stride": args.stride or model.cfg.context_length // 2} if args.task == "perplexity" else {}),
    }
    path = write_results(args, record)
    console.print(f"results: {path}", markup=False, highlight=False)
    return 0


def load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The model in eval mode, its tokenizer, and what to call the checkpoint in the results."""
    from gptkit.data.tokenizer import Tokenizer
    from gptkit.dtypes import torch_dtype
    from gptkit.generation.loading import load_model

    if args.init_from is None:
        loaded = load_model(args.run, args.hf_dir, torch_dtype(args.dtype), quantize=args.quantize)  # refuses a classifier run
        return loaded.model, loaded.tokenizer, loaded.description
    from gptkit.generation.loading import check_precision, prepare_for_use, refuse_classifier
    from gptkit.model.config import ModelConfig
    from gptkit.model.gpt import GPTModel
    from gptkit.training.init_from import load_initial_weights, resolve_init_source

    check_precision(torch_dtype(args.dtype), "cpu", args.quantize)
    source = resolve_init_source(args.init_from)
    model = GPTModel(ModelConfig.model_validate(source.model))
    refuse_classifier(Path(args.init_from), model)
    load_initial_weights(model, source)
    prepare_for_use(model, torch_dtype(args.dtype), quantize=args.quantize)  # as load_model does
    return model, Tokenizer(), f"{args.init_from} ({source.kind})"


def score(args: argparse.Namespace, model: Any, tokenizer: Any, progress: Any) -> tuple[dict[str, float | int], list[Path]]:
    if args.task == "perplexity":
        import torch

        from gptkit.data.corpus import read_text, resolve_source
        from gptkit.evaluation.perplexity import sliding_window_loss

        files = resolve_source(args.data)
        text = "\n\n".join(read_text(path) for path in files)
        result = sliding_window_loss(model, torch.tensor(tokenizer.encode(text)), args.stride, progress)
        return {"loss": result.loss, "perplexity": result.perplexity, "tokens": result.tokens, "windows": result.windows}, files
    from gptkit.evaluation.multiple_choice import read_questions, score_questions

    scores = score_questions(model, tokenizer, read_questions(args.data, args.limit), progress)
    return {"acc": scores.acc, "acc_norm": scores.acc_norm, "questions": scores.questions}, [Path(args.data)]


def files_sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_results(args: argparse.Namespace, record: dict[str, Any]) -> Path:
    from gptkit.atomic import write_text_atomic

    if args.out is not None:
        path = Path(args.out)
    else:
        folder = Path(args.run) / "eval" if args.run is not None else Path("eval")
        path = folder / f"{args.task}-{record['date'].replace(':', '').replace('+0000', 'Z')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
