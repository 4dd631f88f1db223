"""LoRA runs: which linears get an adapter (`train.lora.targets`), what their checkpoints hold, merging.

`wrap_lora` swaps each linear layer whose module name matches a target glob for a
`LoRALinear` around it and freezes every other parameter. The names are the model's
own, as `python main.py components` builds it (plugins included):
`blocks.N.att.qkv` (the fused query/key/value projection, GPT-2's `c_attn`),
`blocks.N.att.out_proj` (`attn.c_proj`), `blocks.N.ff.fc1` and `blocks.N.ff.fc2`
(`mlp.c_fc`, `mlp.c_proj`) and `out_head`.

A LoRA run's checkpoint holds the adapter alone (`adapter.safetensors`: every
`lora_A` and `lora_B`, a few MB) with its optimizer state; the base weights stay
where `train.init_from` found them, and the adapter file names their SHA-256
(`base_weights_sha256`) so that an adapter is never applied to other weights than
the ones it was trained on. `load_lora_run_model` puts base and adapter together and
merges them for use: `generate`, `chat`, `serve`, `evaluate` and `export` see a
plain model.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from gptkit.errors import CheckpointError, ConfigError
from gptkit.layers.lora import LoRALinear

if TYPE_CHECKING:
    from gptkit.model.gpt import GPTModel

ADAPTER_FILE = "adapter.safetensors"
BASE_HASH_KEY = "base_weights_sha256"  # the adapter file's metadata entry naming its base
LORA_SUFFIXES = (".lora_A", ".lora_B")  # what an adapter's parameter names end in
NAMES_SHOWN = 8  # how many linear names a message about an unmatched pattern lists


@dataclass(frozen=True)
class LoRASettings:
    """`train.lora` as plain values (config.py's `LoRAConfig` checks them)."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    @classmethod
    def from_config(cls, section: Any) -> LoRASettings:
        """From the config section, or its dict as config.json stores it."""
        get = section.get if isinstance(section, Mapping) else lambda key: getattr(section, key)
        return cls(int(get("rank")), float(get("alpha")), float(get("dropout")), tuple(get("targets")))


def linear_names(model: nn.Module) -> list[str]:
    """The module names a target may match: every linear layer (a weight of shape (out, in))."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def target_names(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The linears the patterns match, in model order; a pattern matching none is a `ConfigError`."""
    names = linear_names(model)
    chosen: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            shown = ", ".join(names[:NAMES_SHOWN]) + (", ..." if len(names) > NAMES_SHOWN else "")
            raise ConfigError(
                f"train.lora.targets pattern '{pattern}' matches no linear layer of this model; "
                f"its {len(names)} linears are named like: {shown} (blocks.N.* for layer N)"
            )
        chosen.update(matched)
    return [name for name in names if name in chosen]


def _refuse_tied_head(model: nn.Module, name: str) -> None:
    embedding = getattr(model, "tok_emb", None)
    module = model.get_submodule(name)
    if embedding is not None and module.weight is embedding.weight:
        raise ConfigError(
            f"train.lora.targets: '{name}' shares its weight with the token embedding (model.weight_tying), "
            "so its adapter could not be merged into it alone; leave it out of the targets"
        )
    if hasattr(module, "pool"):
        raise ConfigError(f"train.lora.targets: '{name}' is a classifier head, which LoRA does not adapt; leave it out of the targets")


def wrap_lora(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Freeze `model` and put a `LoRALinear` around each target linear; returns the wrapped names."""
    names = target_names(model, settings.targets)
    for name in names:
        _refuse_tied_head(model, name)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), settings.rank, settings.alpha, settings.dropout))
    return names


def is_lora_model(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter matrix by name (`blocks.0.att.qkv.lora_A`), detached, on the CPU."""
    return {
        name.replace("_orig_mod.", ""): param.detach().contiguous().cpu()
        for name, param in model.named_parameters()
        if name.endswith(LORA_SUFFIXES)
    }


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the weights themselves (names, dtypes, shapes and bytes, in name order).

    Taken over the tensors rather than a file, so a base read from a run's checkpoint,
    a Hugging Face folder or the hub's cache hashes the same when its numbers are the same.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_sha256(model: nn.Module) -> str:
    """The hash of an unwrapped model's weights, a tied tensor counted once (as checkpoints store it)."""
    from gptkit.training.checkpoint import clean_state_dict

    return weights_sha256(clean_state_dict(model))


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """An adapter file's tensors and the base hash its metadata names."""
    from gptkit.training.checkpoint import read_tensors

    tensors = read_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupted ({err})") from None
    if BASE_HASH_KEY not in meta:
        raise CheckpointError(f"{path} names no base weights ({BASE_HASH_KEY} missing from its metadata); it is not a gptkit LoRA adapter")
    return tensors, meta[BASE_HASH_KEY]


def load_adapter(model: nn.Module, path: Path, base_hash: str) -> None:
    """Load `path` into the wrapped `model`, whose base weights hash to `base_hash`."""
    tensors, trained_on = read_adapter(path)
    if trained_on != base_hash:
        raise CheckpointError(
            f"{path} was trained on base weights with SHA-256 {trained_on}, but the base weights loaded "
            f"hash to {base_hash}; load it onto the base it was trained on (train.init_from of its run)"
        )
    expected = adapter_tensors(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or misshapen:
        raise CheckpointError(
            f"{path} does not fit this model's adapters (missing: {', '.join(missing[:3]) or 'none'}; "
            f"unexpected: {', '.join(unexpected[:3]) or 'none'}; wrong shape: {', '.join(misshapen[:3]) or 'none'})"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and unwrap it: the plain model, same outputs."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.merged())
    return model


def load_lora_run_model(run_dir: Path, checkpoint: Path, stored: dict[str, Any], model: GPTModel) -> GPTModel:
    """`model` (built from the run's config) with the run's base weights and `checkpoint`'s adapter, merged."""
    from gptkit.training.init_from import (
        INIT_FROM_KEY,
        load_initial_weights,
        resolve_init_source,
    )

    train = stored.get("train") if isinstance(stored.get("train"), dict) else {}
    recorded = stored.get(INIT_FROM_KEY) if isinstance(stored.get(INIT_FROM_KEY), dict) else {}
    base = recorded.get("folder") or train.get("init_from")
    if not isinstance(train.get("lora"), dict) or not base:
        raise CheckpointError(f"{checkpoint} holds a LoRA adapter, but {run_dir / 'config.json'} names no train.lora and base weights")
    load_initial_weights(model, resolve_init_source(str(base)))
    base_hash = base_sha256(model)
    wrap_lora(model, LoRASettings.from_config(train["lora"]))
    load_adapter(model, checkpoint / ADAPTER_FILE, base_hash)
    return merge_lora(model).eval()  # type: ignore[return-value]


def apply_peft_adapter(model: nn.Module, directory: Path) -> nn.Module:
    """`model` (a Hugging Face GPT-2's weights) wrapped with the PEFT LoRA adapter in `directory`, unmerged."""
    from gptkit.interop.peft_adapter import read_peft_adapter

    adapter = read_peft_adapter(directory)
    absent = [name for name in adapter.targets if name not in linear_names(model)]
    if absent:
        raise CheckpointError(f"{directory} adapts {absent[0]}, which this model does not have (an adapter for a deeper GPT-2?)")
    wrap_lora(model, LoRASettings(adapter.rank, adapter.alpha, adapter.dropout, adapter.targets))
    expected = adapter_tensors(model)
    misshapen = sorted(k for k in expected if expected[k].shape != adapter.tensors[k].shape)
    if misshapen:
        name = misshapen[0]
        raise CheckpointError(
            f"{directory} does not fit this model: {name} is {tuple(adapter.tensors[name].shape)}, "
            f"the model's is {tuple(expected[name].shape)} (an adapter for another size of GPT-2?)"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in adapter.tensors.items():
            params[name].copy_(tensor)
    return model


def export_peft_adapter(checkpoint: Path, stored: dict[str, Any], directory: Path) -> Path:
    """A LoRA run's checkpoint as a PEFT adapter folder (for a Hugging Face GPT-2 of the run's base)."""
    from gptkit.interop.peft_adapter import write_peft_adapter
    from gptkit.training.init_from import INIT_FROM_KEY

    tensors, _ = read_adapter(checkpoint / ADAPTER_FILE)
    settings = LoRASettings.from_config(stored["train"]["lora"])
    recorded = stored.get(INIT_FROM_KEY) if isinstance(stored.get(INIT_FROM_KEY), dict) else {}
    base = recorded.get("source") or stored["train"].get("init_from")
    return write_peft_adapter(directory, tensors, settings.rank, settings.alpha, settings.dropout, base)
