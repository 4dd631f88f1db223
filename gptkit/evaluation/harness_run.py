"""One lm-evaluation-harness task run on a gptkit model: `evaluate --task lm-eval:TASK`.

The harness is optional (`pip install -e ".[eval]"`), so nothing here imports it
until a task is run, and a harness that is not there is a message naming the extra.
Finding a task means indexing the harness's few thousand task files (about ten
seconds); a task in `--include-path` is looked for there alone first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptkit.errors import GptkitError

INSTALL_HINT = 'pip install -e ".[eval]"'


@dataclass(frozen=True)
class HarnessResult:
    figures: dict[str, float | int]  # "acc", "acc_norm", ...; a metric after a filter other than none is "acc,FILTER"
    samples: int  # how many of the task's documents were scored
    num_fewshot: int
    version: str  # the harness's


def harness_model() -> type:
    """The harness's model class for gptkit (`GptkitLM`), the harness imported on first use."""
    try:
        from gptkit.evaluation.harness import GptkitLM
    except ImportError as err:
        raise GptkitError(f"lm-eval tasks need the lm-evaluation-harness, which cannot be imported ({err}); install it with {INSTALL_HINT}") from None
    return GptkitLM


def task_manager(task: str, include_path: str | None) -> Any:
    """A harness TaskManager that knows `task`, or a `GptkitError` if none does."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise GptkitError(f"--include-path {include_path} is not a folder; expected a folder of harness task YAML files")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if task in local.all_tasks:
            return local
    manager = TaskManager(include_path=include_path)
    if task not in manager.all_tasks:
        where = f" nor in {include_path}" if include_path is not None else ""
        raise GptkitError(
            f"unknown lm-eval task {task!r}: not one of the harness's tasks{where}; "
            "lm-eval ls tasks lists them, and --include-path DIR adds a folder of task YAML files"
        )
    return manager


def run_harness_task(
    lm: Any, task: str, include_path: str | None = None, limit: int | None = None, num_fewshot: int | None = None,
) -> HarnessResult:
    """`task` through the harness's `simple_evaluate` with the model `lm` (a `GptkitLM`)."""
    import lm_eval

    manager = task_manager(task, include_path)
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False)
    assert results is not None  # one process: rank 0 always gets the results
    figures: dict[str, float | int] = {}
    for key, value in results["results"][task].items():
        metric, _, kept = key.partition(",")
        if metric == "sample_len" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # the count is `samples`; the name, alias, and stderr the harness could not compute ("N/A")
        figures[metric if kept == "none" else key] = value
    samples = results.get("n-samples", {}).get(task, {}).get("effective", 0)
    shots = results.get("n-shot", {}).get(task, num_fewshot or 0)
    return HarnessResult(figures, int(samples), int(shots), lm_eval.__version__)
