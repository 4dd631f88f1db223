"""`python main.py merge-lora --run RUN_DIR --out NEW_RUN_DIR`: a LoRA run's adapters folded into its base weights.

NEW_RUN_DIR is a plain run directory: its config.json is the LoRA run's without
`train.lora` (and says what it was merged from), and its one checkpoint holds the
whole model, `W + (alpha / rank) · B A` in each adapted linear, with the LoRA run's
progress. Everything that reads a run reads it, `--init-from` included. Nothing is
written until the merged model is ready.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from commands import console
from commands.options import Once

if TYPE_CHECKING:
    from gptkit.registry import Registry

HELP = "fold a LoRA run's adapters into its base weights: a plain run directory"
MERGED_FROM_KEY = "merged_from"  # config.json provenance: the LoRA run and checkpoint it came from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action=Once, required=True, metavar="RUN_DIR", help="a run trained with train.lora")
    parser.add_argument("--out", action=Once, required=True, metavar="NEW_RUN_DIR", help="the run directory to write (must not exist)")


def run(args: argparse.Namespace, registry: Registry) -> int:
    import json
    import shutil
    from pathlib import Path

    from gptkit.atomic import write_text_atomic
    from gptkit.errors import CheckpointError, GptkitError
    from gptkit.training.checkpoint import (
        latest_checkpoint,
        load_run_model,
        read_run_config,
        read_train_state,
        save_checkpoint,
    )
    from gptkit.training.lora import ADAPTER_FILE

    run_dir, out = Path(args.run), Path(args.out)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {args.run} does not exist")
    stored = read_run_config(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if not (checkpoint / ADAPTER_FILE).is_file():
        raise GptkitError(f"{args.run} is not a LoRA run ({checkpoint.name} holds no {ADAPTER_FILE}); its checkpoints are whole models already")
    if out.exists():
        raise GptkitError(f"--out {args.out} already exists; merge-lora writes a new run directory")
    model = load_run_model(run_dir, checkpoint)  # base + adapter, merged, the base's hash checked
    state, meta = read_train_state(checkpoint)
    merged = {**stored, "train": {**stored["train"], "lora": None}}
    merged[MERGED_FROM_KEY] = {"run": str(run_dir.resolve()), "checkpoint": checkpoint.name}
    extra = {k: v for k, v in meta.items() if k not in ("format_version", "state", "param_groups")}
    try:
        out.mkdir(parents=True)
        write_text_atomic(out / "config.json", json.dumps(merged, indent=2) + "\n")
        # No optimizer state: the merged weights are a new starting point (--init-from), not a run to resume.
        written = save_checkpoint(out, model, {"state": {}, "param_groups": []}, state, extra=extra)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    console.print(f"merged {args.run} ({checkpoint.name}) into {written}", markup=False, highlight=False, soft_wrap=True)
    return 0
