"""`python main.py export --run RUN_DIR [--checkpoint NAME_OR_PATH] --out DIR [--overwrite] [--dtype D] [--adapter]`.

Writes the Hugging Face folder that `transformers.GPT2LMHeadModel.from_pretrained(DIR)` and
`GPT2Tokenizer.from_pretrained(DIR)` load; `gptkit.interop.hf_checkpoint.export_hf` does the
writing. A LoRA run exports merged (base + adapter, one plain model); `--adapter` writes
its adapter alone instead, in Hugging Face PEFT's format (`adapter_config.json` and
`adapter_model.safetensors`, `gptkit.interop.peft_adapter`), which
`peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(BASE), DIR)` loads onto
the run's base. Every path is checked before the model loads, and the export is staged beside DIR
and moved into place whole, so a refused or failed export leaves the disk as it was.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from commands import console
from commands.options import Once
from gptkit.dtypes import DTYPE_NAMES
from gptkit.errors import CheckpointError, GptkitError

if TYPE_CHECKING:
    from gptkit.model.gpt import GPTModel
    from gptkit.registry import Registry

HELP = "write a run's model as a Hugging Face GPT-2 folder (transformers' from_pretrained loads it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action=Once, required=True, metavar="RUN_DIR", help="the gptkit run directory to export")
    parser.add_argument(
        "--checkpoint", action=Once, metavar="NAME_OR_PATH",
        help="step_N (step_100 is step_000100) in RUN_DIR/checkpoints, or a checkpoint folder's path; default: the latest",
    )
    parser.add_argument("--out", action=Once, required=True, metavar="DIR", help="the folder to write: new, empty, or an earlier export")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="the saved weights' precision (default float32)")
    parser.add_argument("--adapter", action="store_true", help="a LoRA run: write its adapter alone, as a PEFT adapter folder (float32)")


def check_run(run: str) -> dict[str, Any]:
    """The run directory's stored config, or an error saying what `--run` points at instead."""
    from gptkit.generation.loading import hugging_face_folder
    from gptkit.training.checkpoint import read_run_config

    if not Path(run).is_dir():
        what = "is not a folder" if Path(run).exists() else "does not exist"
        raise CheckpointError(f"run directory {run} {what}")
    if hugging_face_folder(run):
        raise GptkitError(
            f"{run} is already a Hugging Face checkpoint folder, not a gptkit run directory: there is nothing to "
            f"export (from_pretrained loads it as it is, and so does python main.py generate --hf-dir {run})"
        )
    stored = read_run_config(Path(run))
    data = stored.get("data") if isinstance(stored.get("data"), dict) else {}
    spec = data.get("tokenizer")
    name = spec.get("name") if isinstance(spec, dict) else spec
    # The export carries GPT-2's tokenizer files: another tokenizer's ids would decode as the wrong text.
    if name not in (None, "gpt2"):
        raise GptkitError(
            f"{run} was trained with tokenizer '{name}' (data.tokenizer), but a Hugging Face GPT-2 export carries "
            "GPT-2's tokenizer; only runs with data.tokenizer=gpt2 can be exported"
        )
    return stored


def chosen_checkpoint(run: str, choice: str | None) -> Path:
    """The checkpoint folder `--checkpoint` names: a `step_N` of the run, a path, or (None) the latest."""
    from gptkit.training.checkpoint import (
        CHECKPOINT_NAME,
        CHECKPOINTS,
        latest_checkpoint,
        named_checkpoint,
    )

    if choice is None:
        return latest_checkpoint(Path(run))
    if CHECKPOINT_NAME.fullmatch(choice):
        return named_checkpoint(Path(run), choice)
    if not Path(choice).is_dir():
        raise CheckpointError(
            f"--checkpoint {choice} is no checkpoint folder; expected step_N (a checkpoint in {Path(run) / CHECKPOINTS}) "
            "or the path of a checkpoint folder"
        )
    return Path(choice)


def inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_destination(out: str, run: str, checkpoint: Path, overwrite: bool) -> None:
    """Refuse an `--out` the export must not replace, with the way out; messages quote `--out` as typed."""
    from gptkit.interop.hf_checkpoint import is_gptkit_export
    from gptkit.training.checkpoint import CHECKPOINTS

    # Compared as real paths: `runs/r/../r` or a link to the run is still the run.
    target, run_dir, source = (Path(os.path.realpath(p)) for p in (out, run, checkpoint))
    if inside(run_dir, target):
        # The export replaces its folder whole: this one holds the run itself.
        raise GptkitError(f"--out {out} is the run directory {run} or a folder holding it; choose a folder outside the run")
    if inside(target, run_dir / CHECKPOINTS):
        raise GptkitError(
            f"--out {out} is inside {Path(run) / CHECKPOINTS}, where training keeps (and prunes) its checkpoints; "
            f"choose a folder outside it, such as {Path(run) / 'hf'}"
        )
    if inside(target, source) or inside(source, target):
        raise GptkitError(f"--out {out} overlaps the checkpoint {checkpoint} it would be made from; choose another folder")
    given = Path(out)
    existing = next(p for p in (given, *given.parents) if p.exists())  # a relative path ends at ".", which exists
    if not existing.is_dir():
        where = "is a file" if existing == given else f"is inside {existing}, which is a file"
        raise GptkitError(f"--out {out} {where}; expected a folder to write the export into")
    if existing != given or not any(existing.iterdir()):
        return
    if not is_gptkit_export(existing):
        # Deleting a folder of the user's own files is never what an export should do, --overwrite or not.
        raise GptkitError(
            f"--out {out} is not empty and is not an earlier gptkit export; choose a new or empty folder "
            "(--overwrite replaces only an earlier export)"
        )
    if not overwrite:
        raise GptkitError(f"--out {out} already holds an export; pass --overwrite to replace it, or choose another folder")


def check_finite(model: GPTModel, where: str, dtype: str) -> None:
    """Refuse weights that are nan or inf, as trained or once cast to `dtype`: the export would compute nonsense."""
    import torch

    if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return
    if dtype == "float32":
        raise GptkitError(f"{where} has weights that are nan or inf; export an earlier checkpoint with --checkpoint")
    raise GptkitError(f"{where} has weights too large for {dtype} (they become inf); use --dtype bfloat16 or float32")


def run(args: argparse.Namespace, registry: Registry) -> int:
    """Export the run's checkpoint to --out, printing where it went.

    `registry` goes unused: loading the model takes its components from the
    process-wide registry, which is the one main.py built.
    """
    from gptkit.dtypes import torch_dtype
    from gptkit.interop.hf_checkpoint import check_exportable, export_hf
    from gptkit.training.checkpoint import load_run_model

    stored = check_run(args.run)
    checkpoint = chosen_checkpoint(args.run, args.checkpoint)
    check_destination(args.out, args.run, checkpoint, args.overwrite)
    if args.adapter:
        return export_adapter(args, checkpoint, stored)
    model = load_run_model(Path(args.run), checkpoint)
    where = f"{args.run} ({checkpoint.name})"
    try:
        check_exportable(model.cfg)
    except GptkitError as err:
        raise GptkitError(f"{where}: {err}") from None
    check_finite(model, where, "float32")
    if args.dtype != "float32":
        model.to(torch_dtype(args.dtype))
        check_finite(model, where, args.dtype)
    # export_hf alone would replace an earlier export unasked: check_destination made that wait for --overwrite.
    directory = export_hf(model, args.out)
    console.print(
        f"exported {where} to {directory} ({args.dtype}); transformers loads it with "
        "GPT2LMHeadModel.from_pretrained and GPT2Tokenizer.from_pretrained",
        markup=False, highlight=False, soft_wrap=True,
    )
    return 0


def export_adapter(args: argparse.Namespace, checkpoint: Path, stored: dict[str, Any]) -> int:
    """`--adapter`: the LoRA checkpoint's adapter as a PEFT folder; its base must be a model Hugging Face can load."""
    from gptkit.interop.hf_convert import check_exportable
    from gptkit.model.config import ModelConfig
    from gptkit.training.lora import ADAPTER_FILE, export_peft_adapter

    where = f"{args.run} ({checkpoint.name})"
    if not (checkpoint / ADAPTER_FILE).is_file():
        raise GptkitError(f"--adapter: {where} is not a LoRA checkpoint (no {ADAPTER_FILE}); export it without --adapter")
    try:
        check_exportable(ModelConfig.model_validate(stored["model"]))
    except GptkitError as err:
        raise GptkitError(f"{where}: {err}") from None
    directory = export_peft_adapter(checkpoint, stored, Path(args.out))
    console.print(
        f"exported the adapter of {where} to {directory}; peft loads it with "
        "PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(BASE), DIR)",
        markup=False, highlight=False, soft_wrap=True,
    )
    return 0
