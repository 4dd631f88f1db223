"""Training checkpoints: safetensors for tensors, JSON for everything else.

Layout of a run directory::

    run_dir/config.json              the resolved run config
    run_dir/checkpoints/step_000500/ model.safetensors, optimizer.safetensors, trainer.json
    run_dir/checkpoints/latest       the name of the newest complete checkpoint

A LoRA run's checkpoint holds `adapter.safetensors` (the adapters alone, naming the
SHA-256 of the base weights they were trained on) in place of `model.safetensors`;
see `gptkit.training.lora`.

Each checkpoint is written into a temporary directory, every file fsynced, and
then renamed into place in one step, so a kill at any moment leaves either the
old set of checkpoints or the old set plus one complete new one; a write the
system refuses (disk full, no permission) leaves the old set too and raises
`CheckpointError`. Nothing is pickled: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gptkit.atomic import fsync_dir, fsync_file, write_text_atomic
from gptkit.errors import CheckpointError
from gptkit.training.lora import (
    ADAPTER_FILE,
    BASE_HASH_KEY,
    LORA_SUFFIXES,
    load_lora_run_model,
)
from gptkit.training.train_state import TrainState

if TYPE_CHECKING:
    from gptkit.model.gpt import GPTModel

CHECKPOINTS = "checkpoints"
LATEST = "latest"
FORMAT_VERSION = 1
COMPILE_PREFIX = "_orig_mod."  # what torch.compile puts before every parameter name
CHECKPOINT_NAME = re.compile(r"step_\d+")
# Working folders beside the checkpoints; their leading dot keeps them out of `step_*`.
TMP_PREFIX = ".tmp-"  # being written
OLD_PREFIX = ".old-"  # an earlier copy of a step being saved again, set aside
DEL_PREFIX = ".del-"  # being deleted


def clean_state_dict(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights by name, without torch.compile's prefix and with tied tensors stored once.

    `model` may also be a state dict already gathered (from a sharded model).
    """
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in (model.state_dict() if isinstance(model, nn.Module) else model).items():
        name = name.replace(COMPILE_PREFIX, "")
        if tensor.data_ptr() in seen:
            continue  # the tied output head: restored by the model's own tying
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().contiguous().cpu()
    return state


def optimizer_tensors(
    optimizer: torch.optim.Optimizer | dict[str, Any],
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split an optimizer's state (or its state dict) into tensors (for safetensors) and hyper-parameters (for JSON)."""
    sd = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
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
    # Only the GPU this process uses, and only if it used one: asking every visible GPU
    # would open a CUDA context on each (memory on all of them, under torchrun from every
    # process), and a machine with fewer GPUs could not take the states back.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        tensors[f"rng.cuda.{device}"] = torch.cuda.get_rng_state(device)
    return tensors


def restore_cuda_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Each saved GPU generator state back to the GPU of that index, where this machine has it."""
    if not torch.cuda.is_available():
        return
    for key, state in tensors.items():
        if key.startswith("rng.cuda."):
            device = int(key.removeprefix("rng.cuda."))
            if device < torch.cuda.device_count():
                torch.cuda.set_rng_state(state, device)


def save_checkpoint(
    run_dir: Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
    state: TrainState,
    extra: dict[str, Any] | None = None,
    base_sha256: str | None = None,
) -> Path:
    """Write checkpoint `step_<step>` atomically and point `latest` at it.

    `base_sha256` (a LoRA run): save the model's adapters alone, naming the base weights' hash.

    A write the system refuses (disk full, no permission) raises `CheckpointError`
    naming the path and the reason; the earlier checkpoints and `latest` stay as they were.
    """
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    final = root / f"step_{state.step:06d}"
    previous = pointed_checkpoint(run_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        clear_debris(root)
        write_checkpoint_dir(root, final, model, optimizer, state, extra, base_sha256)
        try:
            write_text_atomic(root / LATEST, final.name + "\n")
        except BaseException:
            discard(final)  # `latest` still names the previous one: so must the folder's contents
            raise
    except (OSError, SafetensorError) as err:
        kept = f"the latest complete checkpoint is still {previous}" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"cannot write checkpoint {final}: {io_reason(err)}; {kept}. Free some space or make "
            f"{root} writable, then continue with --resume {run_dir}"
        ) from None
    return final


def write_checkpoint_dir(
    root: Path,
    final: Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any],
    state: TrainState,
    extra: dict[str, Any] | None,
    base_sha256: str | None = None,
) -> None:
    """Fill a temporary folder, sync it, and rename it to `final` in one step."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=root))
    try:
        opt_tensors, groups = optimizer_tensors(optimizer)
        weights = clean_state_dict(model)
        if base_sha256 is None:
            save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
        else:
            adapters = {name: t for name, t in weights.items() if name.endswith(LORA_SUFFIXES)}
            save_file(adapters, tmp / ADAPTER_FILE, metadata={"format": "pt", BASE_HASH_KEY: base_sha256})
        save_file({**opt_tensors, **rng_tensors()}, tmp / "optimizer.safetensors")
        meta = {"format_version": FORMAT_VERSION, "state": asdict(state), "param_groups": groups, **(extra or {})}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
        if final.exists():
            # The same step saved again (a resumed run retraining past a save whose `latest`
            # never got written). The old folder steps aside first: renaming onto a non-empty
            # folder fails, and deleting it in place could leave a half-deleted checkpoint.
            aside = root / f"{OLD_PREFIX}{final.name}-{os.getpid()}"
            os.rename(final, aside)
            os.rename(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def io_reason(err: OSError | SafetensorError) -> str:
    """What the system said, and about which file: "No space left on device (<path>)"."""
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or err}{where}"
    return str(err).removeprefix("Error while serializing: ")


def discard(checkpoint: Path) -> None:
    """Delete a checkpoint folder; renamed away first, so a kill never leaves a half-deleted `step_*`."""
    doomed = checkpoint.with_name(f"{DEL_PREFIX}{checkpoint.name}-{os.getpid()}")
    try:
        os.rename(checkpoint, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def clear_debris(root: Path) -> None:
    """Remove what killed saves left behind: temporary folders, pointer files, half-deleted folders.

    A folder set aside by an interrupted same-step save is put back if its
    checkpoint never reappeared, so the checkpoint it held is not lost.
    """
    for path in root.glob(f"{OLD_PREFIX}step_*"):
        name = path.name.removeprefix(OLD_PREFIX).rsplit("-", 1)[0]
        if not (root / name).exists():
            os.rename(path, root / name)
        else:
            shutil.rmtree(path, ignore_errors=True)
    for path in [*root.glob(f"{TMP_PREFIX}step_*"), *root.glob(f"{DEL_PREFIX}step_*")]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(f".{LATEST}.*.tmp"):
        path.unlink(missing_ok=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are named apart and never listed)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if p.is_dir())


def pointed_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `latest` names, if that is a checkpoint folder that exists."""
    root = Path(run_dir) / CHECKPOINTS
    try:
        name = (root / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not CHECKPOINT_NAME.fullmatch(name):
        return None  # a damaged pointer; never follow it outside the checkpoints folder
    if (root / name).is_dir():
        return root / name
    # A same-step save killed between its two renames: the old folder is still whole, aside.
    aside = sorted(root.glob(f"{OLD_PREFIX}{name}-*"))
    return aside[-1] if aside else None


def latest_checkpoint(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    pointed = pointed_checkpoint(run_dir)
    if pointed is not None:
        return pointed
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoint (expected {run_dir / CHECKPOINTS}/step_*/)")
    return found[-1]


def named_checkpoint(run_dir: Path, name: str) -> Path:
    """The checkpoint `step_N` of a run: the folder of that name, or the one of step N (`step_100` is `step_000100`)."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if CHECKPOINT_NAME.fullmatch(name):
        exact = [path for path in found if path.name == name]
        same_step = [path for path in found if int(path.name.removeprefix("step_")) == int(name.removeprefix("step_"))]
        if exact or same_step:
            return (exact or same_step)[0]
    holds = f"it holds {', '.join(path.name for path in found)}" if found else "it holds none"
    raise CheckpointError(
        f"no checkpoint '{name}' in {run_dir / CHECKPOINTS} ({holds}); expected a name such as step_000100 or step_100"
    )


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns what was deleted."""
    found = list_checkpoints(run_dir)
    doomed = found[: max(0, len(found) - keep_last)]
    for path in doomed:
        discard(path)
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
    load_state_into(model, read_tensors(path), str(path))


def load_state_into(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Load `tensors` (saved as checkpoints save them: a tied head once) into `model`; `where` names them in errors."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: the model inside holds the weights
    tensors = {k.replace(COMPILE_PREFIX, ""): v for k, v in tensors.items()}
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
        raise CheckpointError(f"{where} does not fit this model ({'; '.join(problems)})")
    model.load_state_dict(tensors, strict=False)


def restore_optimizer_and_rng(
    checkpoint: Path,
    meta: dict[str, Any],
    load_optimizer: Callable[[dict[str, Any]], None] | None,
    restore_rng: bool = True,
) -> None:
    """Restore from `optimizer.safetensors`: the optimizer (through `load_optimizer`) and the RNG.

    `load_optimizer` gets the index-keyed state dict a one-process `optimizer.state_dict()`
    has, so the caller decides how it loads (a sharded model's optimizer takes it
    through `gptkit.training.distributed`). `meta` is the checkpoint's trainer.json.
    """
    path = checkpoint / "optimizer.safetensors"
    tensors = read_tensors(path)
    try:
        if load_optimizer is not None:
            opt = {k: v for k, v in tensors.items() if k.startswith("state.")}
            load_optimizer(optimizer_state_from(opt, meta["param_groups"]))
        if restore_rng:
            torch.set_rng_state(tensors["rng.cpu"])
            restore_cuda_rng(tensors)
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not fit this model's optimizer ({type(err).__name__}: {err})") from None


def read_train_state(checkpoint: Path) -> tuple[TrainState, dict[str, Any]]:
    """A checkpoint's progress and its whole trainer.json, checked, without touching the tensors."""
    meta_path = checkpoint / "trainer.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = meta.get("format_version")
        state = TrainState(**meta["state"])
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {checkpoint} has no trainer.json") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{meta_path} is corrupted ({type(err).__name__}: {err})") from None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path} is checkpoint format {version!r}; this gptkit reads format {FORMAT_VERSION} "
            "(was it written by another version of gptkit?)"
        )
    return state, meta


def load_checkpoint(
    checkpoint: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> tuple[TrainState, dict[str, Any]]:
    """Restore weights (and optimizer and RNG); return the train state and trainer.json."""
    state, meta = read_train_state(checkpoint)
    load_model_weights(model, checkpoint / "model.safetensors")
    if optimizer is not None or restore_rng:
        restore_optimizer_and_rng(checkpoint, meta, optimizer.load_state_dict if optimizer is not None else None, restore_rng)
    return state, meta


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """A run directory's config.json as a dict; a `CheckpointError` naming the file when it is not one."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} is not a gptkit run directory (no config.json)")
    try:
        stored = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{config_path} is not valid JSON ({err}); was it cut short?") from None
    if not isinstance(stored, dict):
        raise CheckpointError(f"{config_path} holds a {type(stored).__name__}, not a run config")
    return stored


def load_run_model(run_dir: Path, checkpoint: Path | None = None) -> GPTModel:
    """The model of a run directory with its latest (or the given) checkpoint's weights, in eval mode."""
    from pydantic import ValidationError

    from gptkit.model.config import ModelConfig, describe_validation_error
    from gptkit.model.gpt import GPTModel
    from gptkit.plugins import default_registry
    from gptkit.training.run_components import missing_components_note

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    stored = read_run_config(run_dir)
    if not isinstance(stored.get("model"), dict):
        raise CheckpointError(f"{config_path} does not describe a model: it has no 'model' section")
    try:
        cfg = ModelConfig.model_validate(stored["model"])
    except ValidationError as err:
        note = missing_components_note(stored, default_registry())
        raise CheckpointError(
            f"{config_path} does not describe a model: {describe_validation_error(err, 'model')}" + (f"\n{note}" if note else "")
        ) from None
    checkpoint = checkpoint or latest_checkpoint(run_dir)
    # Built for real, not on the meta device: buffers such as RoPE's tables are not
    # in the checkpoint and must be computed by the constructor.
    model = GPTModel(cfg)
    if (checkpoint / ADAPTER_FILE).is_file():
        return load_lora_run_model(run_dir, checkpoint, stored, model)  # base + adapter, merged
    load_model_weights(model, checkpoint / "model.safetensors")
    return model.eval()
