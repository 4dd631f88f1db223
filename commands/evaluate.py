"""`python main.py evaluate (--run RUN | --hf-dir DIR | --init-from SOURCE) --task TASK [--data SOURCE]`.

Tasks: `perplexity` over a text (a file, folder, glob or URL, as data.path takes),
scored with a sliding window (`--stride`, default half the context); `multiple-choice`
over JSON lines of HellaSwag-shaped or harness-shaped questions (`--limit N`);
`lm-eval:NAME`, any task of the lm-evaluation-harness (an optional extra), or one
whose YAML is in `--include-path DIR`, run by the harness with gptkit as its model
(`--limit`, `--num-fewshot`, `--batch-size`). The figures are printed as a table and
written as JSON: into RUN/eval/ for a run, else into ./eval/, or to `--out FILE`.
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

HELP = "score a model: perplexity on a text, accuracy on multiple-choice questions, or an lm-evaluation-harness task"
TASKS = ("perplexity", "multiple-choice")
HARNESS_PREFIX = "lm-eval:"
HARNESS_ONLY = ("include_path", "num_fewshot", "batch_size")  # options only a harness task takes


def task_name(text: str) -> str:
    """--task's value: one of TASKS, or lm-eval: and a harness task's name."""
    if text in TASKS or (text.startswith(HARNESS_PREFIX) and text != HARNESS_PREFIX):
        return text
    raise argparse.ArgumentTypeError(f"expected {', '.join(TASKS)} or {HARNESS_PREFIX}TASK (a harness task), got '{text}'")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action=Once, metavar="RUN_DIR", help="a gptkit run directory (its latest checkpoint)")
    source.add_argument("--hf-dir", action=Once, metavar="DIR", help="a local Hugging Face GPT-2 folder")
    source.add_argument("--init-from", action=Once, metavar="SOURCE", help="anything --init-from takes: a run, a checkpoint, a folder, a hub name")
    parser.add_argument("--task", action=Once, required=True, type=task_name, metavar="TASK", help=f"what to score: {', '.join(TASKS)} or {HARNESS_PREFIX}NAME")
    parser.add_argument("--data", action=Once, metavar="SOURCE", help="the text (perplexity) or the JSONL questions (multiple-choice)")
    parser.add_argument("--stride", type=integer, metavar="N", help="perplexity: tokens the window moves by (default: half the context)")
    parser.add_argument("--limit", type=integer, metavar="N", help="multiple-choice, lm-eval: score only the first N questions (documents)")
    parser.add_argument("--include-path", action=Once, metavar="DIR", help="lm-eval: a folder of harness task YAML files to look in")
    parser.add_argument("--num-fewshot", type=integer, metavar="K", help="lm-eval: examples put before each question (default: the task's)")
    parser.add_argument("--batch-size", type=integer, metavar="B", help="lm-eval: requests scored together (default: 8)")
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

    check_options(args)
    if args.task.startswith(HARNESS_PREFIX):
        figures, record = run_harness(args)
    else:
        scored = load(args)
        columns = (TextColumn(f"{args.task}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(args.task, total=None)
            advance = lambda done, total: progress.update(task, completed=done, total=total)
            figures, data_files = score(args, scored.model, scored.tokenizer, advance)
        record = {
            "task": args.task, "checkpoint": scored.description, "data": args.data, "data_sha256": files_sha256(data_files),
            **({"stride": args.stride or scored.model.cfg.context_length // 2} if args.task == "perplexity" else {}),
        }
    table = Table(title=f"{args.task} of {record['checkpoint']}")
    for name in ("metric", "value"):
        table.add_column(name)
    for name, value in figures.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else f"{value:,}")
    console.print(table)
    record = {**record, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **figures}
    path = write_results(args, record)
    console.print(f"results: {path}", markup=False, highlight=False)
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Refuse options out of range or meant for another kind of task, before anything loads."""
    from gptkit.errors import GptkitError

    for option in ("limit", "stride", "batch_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise GptkitError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise GptkitError(f"--num-fewshot must be 0 or more, got {args.num_fewshot}")
    if args.task.startswith(HARNESS_PREFIX):
        for option in ("data", "stride"):
            if getattr(args, option) is not None:
                raise GptkitError(f"--{option} is not used by lm-eval tasks (the task names its own data); leave it out")
        return
    if args.data is None:
        raise GptkitError(f"--task {args.task} needs --data SOURCE (the {'text' if args.task == 'perplexity' else 'JSONL questions'} to score)")
    for option in HARNESS_ONLY:
        if getattr(args, option) is not None:
            raise GptkitError(f"--{option.replace('_', '-')} is for lm-eval tasks only; --task {args.task} does not use it")


def load(args: argparse.Namespace) -> Any:
    """The model in eval mode, its tokenizer, and what to call the checkpoint in the results (a `ScoredModel`)."""
    from gptkit.dtypes import torch_dtype
    from gptkit.evaluation.model_source import load_scored_model

    return load_scored_model(args.run, args.hf_dir, args.init_from, torch_dtype(args.dtype), quantize=args.quantize)


def run_harness(args: argparse.Namespace) -> tuple[dict[str, float | int], dict[str, Any]]:
    from gptkit.evaluation.harness_run import harness_model, run_harness_task

    model_class = harness_model()  # before the weights load: a missing harness is said at once
    scored = load(args)
    lm = model_class(scored.model, scored.tokenizer, batch_size=args.batch_size, description=scored.description)
    name = args.task.removeprefix(HARNESS_PREFIX)
    with console.status(f"lm-eval {name}"):
        result = run_harness_task(lm, name, args.include_path, args.limit, args.num_fewshot)
    figures = {**result.figures, "samples": result.samples}
    record = {
        "task": args.task, "checkpoint": scored.description, "include_path": args.include_path,
        "num_fewshot": result.num_fewshot, "lm_eval_version": result.version,
    }
    return figures, record


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
        task = args.task.replace(HARNESS_PREFIX, "lm-eval-").replace("/", "-")
        path = folder / f"{task}-{record['date'].replace(':', '').replace('+0000', 'Z')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path
