"""Hugging Face interop: export a GPTModel as a `transformers` GPT-2 checkpoint and import one back.

This file reads and writes checkpoint folders (config.json, safetensors, sharded
or pickled weights, tokenizer files), atomically on export. The conversions it
relies on — which configs can cross over, and the weights' layout on each side —
are `gptkit.interop.hf_convert`.

`transformers` is imported nowhere here: the export is plain JSON and
safetensors, and `import_hf` only duck-types a model object it is handed.
Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gptkit.atomic import write_json
from gptkit.dtypes import dtype_name
from gptkit.errors import CheckpointError, GptkitError
from gptkit.interop.hf_convert import (
    GPTKIT_KEY,
    check_exportable,
    from_hf_state_dict,
    hf_config_dict,
    model_config_from_hf,
    to_hf_state_dict,
)
from gptkit.interop.hf_tokenizer import write_hf_tokenizer_files
from gptkit.model.config import ModelConfig
from gptkit.model.gpt import GPTModel

__all__ = [
    "check_exportable", "export_hf", "from_hf_state_dict", "hf_config_dict", "import_hf", "is_gptkit_export",
    "model_config_from_hf", "to_hf_state_dict",
]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
EXPORT_FILES = frozenset({CONFIG_FILE, SAFETENSORS_FILE, GENERATION_CONFIG_FILE, *TOKENIZER_FILES})

# --- export ------------------------------------------------------------------


def export_hf(model: GPTModel, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write `model` as a transformers GPT-2 checkpoint with tokenizer files; return the directory.

    The weights are saved in the model's own dtype, which config.json's `torch_dtype`
    records. Files are written into a hidden staging folder beside `directory` and
    moved into place only once all of them are complete, so a failed export leaves
    the disk as it was: no directory that looks loadable, nor the parent folders
    made for it. An existing non-empty `directory` is replaced only when it is an
    earlier gptkit export or `overwrite` is true.
    """
    config = hf_config_dict(model.cfg)  # refuses unexportable models before touching the disk
    directory = Path(directory).absolute()
    _check_destination(directory, overwrite)
    made = _missing_folders(directory.parent)
    staging = directory.parent / f".{directory.name}.partial-{secrets.token_hex(4)}"
    try:
        staging.mkdir(parents=True)
        _write_export(model, config, staging)
        _move_into_place(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # innermost first: each is empty again once the one inside it is gone
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return directory


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _check_destination(directory: Path, overwrite: bool) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise GptkitError(f"cannot export to {directory}: it exists and is not a directory")
    if overwrite or not any(directory.iterdir()) or is_gptkit_export(directory):
        return
    raise GptkitError(
        f"cannot export to {directory}: the directory is not empty and is not an earlier gptkit export; "
        "choose another directory or pass overwrite=True to replace it"
    )


def is_gptkit_export(directory: str | os.PathLike[str]) -> bool:
    """True when every file in `directory` is one an export writes and config.json carries our entry."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    names = {entry.name for entry in directory.iterdir()}
    if not names <= EXPORT_FILES or CONFIG_FILE not in names:
        return False  # replacing the folder would delete something we did not write
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get(GPTKIT_KEY), dict)


def _write_export(model: GPTModel, config: dict[str, Any], directory: Path) -> None:
    from safetensors.torch import save_file

    state = {name: tensor.cpu() for name, tensor in to_hf_state_dict(model).items()}
    save_file(state, str(directory / SAFETENSORS_FILE), metadata={"format": "pt"})
    write_hf_tokenizer_files(directory, model_max_length=model.cfg.context_length)
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    write_json(directory / GENERATION_CONFIG_FILE, generation)
    # What transformers' own save_pretrained records; from_pretrained(dtype="auto") loads the weights as saved.
    dtype = dtype_name(model.tok_emb.weight.dtype)
    write_json(directory / CONFIG_FILE, {**config, "torch_dtype": dtype})


def _move_into_place(staging: Path, directory: Path) -> None:
    # rename() cannot replace a non-empty directory, so the old one steps aside first
    # and comes back if the new one cannot be moved in.
    if not directory.exists():
        os.rename(staging, directory)
        return
    old = directory.parent / f".{directory.name}.old-{secrets.token_hex(4)}"
    os.rename(directory, old)
    try:
        os.rename(staging, directory)
    except BaseException:
        os.rename(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- import ------------------------------------------------------------------


def import_hf(source: Any) -> GPTModel:
    """A GPTModel (in eval mode, float32) from a transformers GPT-2 model object or a local checkpoint folder.

    A folder needs `config.json` and `model.safetensors` (or a sharded
    `model.safetensors.index.json`, or `pytorch_model.bin`). Nothing is downloaded.
    """
    if isinstance(source, (str, os.PathLike)):
        directory = Path(source)
        config = read_hf_config(directory)
        try:
            cfg = model_config_from_hf(config)
        except GptkitError as err:
            raise type(err)(f"{directory / CONFIG_FILE}: {err}") from None
        state = read_hf_weights(directory)
        where = f"in {directory}"
    elif hasattr(source, "config") and hasattr(source, "state_dict"):
        cfg = model_config_from_hf(source.config.to_dict())
        state = source.state_dict()
        where = f"of the given {type(source).__name__}"
    else:
        raise GptkitError(
            f"import_hf takes a transformers GPT-2 model or a checkpoint directory, not {type(source).__name__}"
        )
    cfg = _keep_trained_qkv_bias(cfg, state)
    try:
        weights = from_hf_state_dict(state, cfg)
    except CheckpointError as err:
        raise CheckpointError(f"weights {where} do not match their config: {err}") from None
    return _build(cfg, weights)


def _keep_trained_qkv_bias(cfg: ModelConfig, state: Mapping[str, torch.Tensor]) -> ModelConfig:
    """`cfg`, with qkv_bias turned back on if the weights have a non-zero q/k/v bias.

    qkv_bias=False comes from our entry in an exported config.json; a model trained
    further in transformers keeps that entry but has learnt a bias since.
    """
    if cfg.qkv_bias:
        return cfg
    if not any(key.endswith("attn.c_attn.bias") and torch.count_nonzero(t) for key, t in state.items()):
        return cfg
    return ModelConfig(**{**cfg.model_dump(), "qkv_bias": True})


def _build(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> GPTModel:
    # Built on the meta device and then given uninitialised memory: every parameter is
    # overwritten below, so GPT-2's random initialisation would be seconds of wasted work.
    # GPT-2's components hold no buffers that to_empty() would leave uninitialised.
    with torch.device("meta"):
        model = GPTModel(cfg)
    model.to_empty(device="cpu")
    model.float()
    if cfg.weight_tying:
        model.out_head.weight = model.tok_emb.weight  # to_empty() gave each name its own tensor
    model.load_state_dict(weights)
    return model.eval()


def read_hf_config(directory: Path) -> dict[str, Any]:
    """A Hugging Face checkpoint folder's config.json, checked to be a JSON object."""
    if not directory.is_dir():
        hint = ""
        if not directory.exists() and not directory.is_absolute() and len(directory.parts) <= 2:
            hint = (
                "; gptkit never downloads: fetch the model first, e.g. "
                f"`huggingface-cli download {directory.as_posix()} --local-dir DIR`, and import DIR"
            )
        raise CheckpointError(f"Hugging Face checkpoint directory {directory} does not exist{hint}")
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: a Hugging Face checkpoint needs a GPT-2 config.json") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} should hold a JSON object, found {type(config).__name__}")
    return config


def weight_files(directory: Path) -> list[Path]:
    """The files `read_hf_weights` reads from `directory`, in order (an index, then its shards)."""
    if (directory / SAFETENSORS_FILE).exists():
        return [directory / SAFETENSORS_FILE]
    if (directory / SAFETENSORS_INDEX_FILE).exists():
        index = directory / SAFETENSORS_INDEX_FILE
        try:
            shards = shard_names(index)
        except CheckpointError:
            shards = []  # read_hf_weights names what is wrong with the index
        return [index, *(directory / shard for shard in shards)]
    return [directory / PICKLE_FILE] if (directory / PICKLE_FILE).exists() else []


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face checkpoint folder under its own (transformers') names."""
    if (directory / SAFETENSORS_FILE).exists():
        return _load_safetensors(directory / SAFETENSORS_FILE)
    if (directory / SAFETENSORS_INDEX_FILE).exists():
        return _load_sharded(directory / SAFETENSORS_INDEX_FILE)
    if (directory / PICKLE_FILE).exists():
        return _load_pickle(directory / PICKLE_FILE)
    raise CheckpointError(
        f"no weights in {directory}: expected {SAFETENSORS_FILE} "
        f"(or {SAFETENSORS_INDEX_FILE} with its shards, or {PICKLE_FILE})"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); expected the weights of a GPT-2 model"
        ) from None


def shard_names(index_path: Path) -> list[str]:
    """The shard files a `model.safetensors.index.json` names, sorted, each once."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index_path} is not a safetensors index with a 'weight_map' ({exc!r})") from None


def _load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in shard_names(index_path):
        path = index_path.parent / shard
        if not path.is_file():
            raise CheckpointError(f"shard {path} named in {index_path.name} is missing")
        state.update(_load_safetensors(path))
    return state


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling fails with many exception types
        # torch's own message suggests weights_only=False, i.e. running the file's code; keep only the cause.
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().split("\n", 1)[0].split(". ", 1)[0].strip()
        detail = detail or text or "empty or truncated file"
        raise CheckpointError(
            f"{path} cannot be loaded safely as plain PyTorch weights: only tensors are accepted "
            f"({type(exc).__name__}: {detail[:200]})"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(state)
