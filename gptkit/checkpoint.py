"""Training checkpoints: safetensors for tensors, JSON for everything else.

Layout of a run directory::

    run_dir/config.json              the resolved run config
    run_dir/checkpoints/step_000500/ model.safetensors, optimizer.safetensors, trainer.json
    run_dir/checkpoints/latest       the name of the newest complete checkpoint

Each checkpoint is written into a temporary directory, every file fsynced, and
then renamed into place in one step, so a kill at any moment leaves either the
old set of checkpoints or the old set plus one complete new one. Nothing is
pickled: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gptkit.atomic import fsync_dir, fsync_file, write_text_atomic
from gptkit.errors import CheckpointError
from gptkit.train_state import TrainState

if TYPE_CHECKING:
    from gptkit.model import GPTModel

CHECKPOINTS = "checkpoints"
LATEST = "latest"
FORMAT_VERSION = 1
COMPILE_PREFIX = "_orig_mod."  # what torch.compile puts before every parameter name


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights by name, without torch.compile's prefix and with tied tensors stored once."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        name = name.replace(COMPILE_PREFIX, "")
        if tensor.data_ptr() in seen:
            continue  # the tied output head: restored by the model's own tying
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().contiguous().cpu()
    return state


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split an optimizer's state into tensors (for safetensors) and hyper-parameters (for JSON)."""
    sd = optimizer.state_dict()
    tensors = {
        f"state.{index}.{key}": value.detach().contiguous().cpu()
        for index, per_param in sd["state"].items()
        for key, value in per_param.items()
        if isinstance(value, torch.Tensor)
    }
    return tensors, sd["param_groups"]


def optimizer_state_from(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": groups}


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint `step_<step>` atomically and point `latest` at it."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        opt_tensors, groups = optimizer_tensors(optimizer)
        save_file(clean_state_dict(model), tmp / "model.safetensors", metadata={"format": "pt"})
        save_file({**opt_tensors, **rng_tensors()}, tmp / "optimizer.safetensors")
        meta = {"format_version": FORMAT_VERSION, "state": asdict(state), "param_groups": groups, **(extra or {})}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. at the end right after a periodic save)
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, final.name + "\n")
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never complete)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def latest_checkpoint(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    pointer = run_dir / CHECKPOINTS / LATEST
    if pointer.is_file():
        named = pointer.parent / pointer.read_text(encoding="utf-8").strip()
        if named.is_dir():
            return named
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoint (expected {run_dir / CHECKPOINTS}/step_*/)")
    return found[-1]


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns what was deleted."""
    found = list_checkpoints(run_dir)
    doomed = found[: max(0, len(found) - keep_last)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupted ({err})") from None


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Load a model.safetensors into `model`, naming any missing, unexpected or misshapen keys."""
    tensors = {k.replace(COMPILE_PREFIX, ""): v for k, v in read_tensors(path).items()}
    expected = model.state_dict()
    # A tied output head shares the embedding's storage, so it was stored once, under the embedding.
    stored = {expected[k].data_ptr() for k in tensors if k in expected}
    tied = {k for k in expected if k not in tensors and expected[k].data_ptr() in stored}
    missing = sorted(set(expected) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = sorted(
        f"{k} {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(tensors) & set(expected)
        if tensors[k].shape != expected[k].shape
    )
    problems = [
        f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen))
        if items
    ]
    if problems:
        raise CheckpointError(f"{path} does not fit this model ({'; '.join(problems)})")
    model.load_state_dict(tensors, strict=False)


def load_checkpoint(
    checkpoint: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore weights (and optimizer and RNG); return the train state and trainer.json."""
    meta_path = checkpoint / "trainer.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        state = TrainState(**meta["state"])
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {checkpoint} has no trainer.json") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_path} is corrupted ({err})") from None
    load_model_weights(model, checkpoint / "model.safetensors")
    if optimizer is not None or restore_rng:
        tensors = read_tensors(checkpoint / "optimizer.safetensors")
        if optimizer is not None:
            opt = {k: v for k, v in tensors.items() if k.startswith("state.")}
            optimizer.load_state_dict(optimizer_state_from(opt, meta["param_groups"]))
        if restore_rng:
            torch.set_rng_state(tensors["rng.cpu"])
            cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda)
    return state, meta


def load_run_model(run_dir: Path, checkpoint: Path | None = None) -> GPTModel:
    """The model of a run directory with its latest (or the given) checkpoint's weights, in eval mode."""
    from pydantic import ValidationError

    from gptkit.config import ModelConfig, describe_validation_error
    from gptkit.model import GPTModel

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a gptkit run directory (no config.json)")
    try:
        model_section = json.loads(config_path.read_text(encoding="utf-8"))["model"]
        cfg = ModelConfig.model_validate(model_section)
    except (ValueError, KeyError) as err:
        detail = describe_validation_error(err, "model") if isinstance(err, ValidationError) else str(err)
        raise CheckpointError(f"{config_path} does not describe a model: {detail}") from None
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    # Built for real, not on the meta device: buffers such as RoPE's tables are not
    # in the checkpoint and must be computed by the constructor.
    model = GPTModel(cfg)
    load_model_weights(model, checkpoint / "model.safetensors")
    return model.eval()
