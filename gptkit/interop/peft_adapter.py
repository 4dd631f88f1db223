"""LoRA adapters in Hugging Face PEFT's format, both ways: `adapter_config.json` + `adapter_model.safetensors`.

`peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(BASE), DIR)` loads what
`write_peft_adapter` writes, and `read_peft_adapter` reads an adapter PEFT saved for
a Hugging Face GPT-2. The peft package is needed for neither.

The names map module for module (gptkit fuses q, k and v into one projection in
the same order as GPT-2's `c_attn`):

    blocks.N.att.qkv       transformer.h.N.attn.c_attn
    blocks.N.att.out_proj  transformer.h.N.attn.c_proj
    blocks.N.ff.fc1        transformer.h.N.mlp.c_fc
    blocks.N.ff.fc2        transformer.h.N.mlp.c_proj
    out_head               lm_head

GPT-2's linears are `Conv1D`s, which store their weight transposed (in, out); PEFT
says so with `fan_in_fan_out = true` and transposes the update, not the adapter: its
`lora_A.weight` is (r, in) and `lora_B.weight` (out, r) there too, as gptkit's
`lora_A` and `lora_B` are. So the tensors pass through unchanged, under new names.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptkit.errors import CheckpointError, ConfigError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the wrapped model's own names
_BLOCK_PARTS = {"att.qkv": "attn.c_attn", "att.out_proj": "attn.c_proj", "ff.fc1": "mlp.c_fc", "ff.fc2": "mlp.c_proj"}
_HF_MODULE = re.compile(r"transformer\.h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)|lm_head")
_PEFT_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
# Settings PEFT has that change what an adapter computes and that gptkit's LoRALinear does not do.
_UNSUPPORTED = {"use_dora": False, "use_rslora": False, "bias": "none", "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}


@dataclass(frozen=True)
class PeftAdapter:
    """An adapter under gptkit's names: `blocks.0.att.qkv.lora_A` and so on."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]  # gptkit module names, in the model's order
    tensors: dict[str, torch.Tensor]


def hf_module_name(name: str) -> str:
    """gptkit's name of a linear -> GPT-2's (`blocks.3.att.qkv` -> `transformer.h.3.attn.c_attn`)."""
    if name == "out_head":
        return "lm_head"
    match = re.fullmatch(r"blocks\.(\d+)\.(att\.qkv|att\.out_proj|ff\.fc1|ff\.fc2)", name)
    if match is None:
        raise ConfigError(f"'{name}' has no Hugging Face GPT-2 counterpart; PEFT adapters cover {', '.join(_BLOCK_PARTS)} and out_head")
    return f"transformer.h.{match[1]}.{_BLOCK_PARTS[match[2]]}"


def gptkit_module_name(hf_name: str) -> str | None:
    """GPT-2's name of a linear -> gptkit's; None for a name that is no GPT-2 linear."""
    match = _HF_MODULE.fullmatch(hf_name)
    if match is None:
        return None
    if hf_name == "lm_head":
        return "out_head"
    part = next(ours for ours, theirs in _BLOCK_PARTS.items() if theirs == match[2])
    return f"blocks.{match[1]}.{part}"


def write_peft_adapter(
    directory: Path, tensors: dict[str, torch.Tensor], rank: int, alpha: float, dropout: float, base_model: str | None
) -> Path:
    """Write `tensors` (gptkit's adapter names) as a PEFT LoRA adapter folder; staged beside it and moved in whole."""
    modules = sorted({name.rsplit(".", 1)[0] for name in tensors})
    peft_tensors = {
        f"{PEFT_PREFIX}{hf_module_name(module)}.lora_{part}.weight": tensors[f"{module}.lora_{part}"].contiguous()
        for module in modules
        for part in "AB"
    }
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        # Whole names: an adapter on some layers only must not be matched onto the others.
        "target_modules": [hf_module_name(module) for module in modules],
        "fan_in_fan_out": True,  # GPT-2's Conv1D (PEFT turns it off itself for lm_head, an nn.Linear)
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_file(peft_tensors, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)  # the caller has checked that it is empty or an earlier adapter export
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a PEFT adapter folder (no {CONFIG_FILE})") from None
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a {type(config).__name__}, not an adapter config")
    return config


def _check_config(config: dict[str, Any], path: Path) -> None:
    """What PEFT itself refuses (when it is installed, through its own `LoraConfig`), then what gptkit cannot compute."""
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"{path}: peft_type is {config.get('peft_type')!r}; gptkit reads LoRA adapters only (peft_type 'LORA')")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ConfigError(f"{path}: r must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ConfigError(f"{path}: lora_alpha must be a positive number, got {alpha!r}")
    try:
        from peft import LoraConfig
    except ImportError:
        LoraConfig = None
    if LoraConfig is not None:
        try:
            LoraConfig.from_pretrained(str(path.parent))
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{path}: PEFT refuses this config ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    for key, plain in _UNSUPPORTED.items():
        if config.get(key) and config[key] != plain:
            raise ConfigError(f"{path}: {key} = {config[key]!r} is not supported (gptkit's LoRA computes {key} = {plain!r})")


def read_peft_adapter(directory: Path) -> PeftAdapter:
    """A PEFT LoRA adapter folder for a Hugging Face GPT-2, under gptkit's names."""
    directory = Path(directory)
    config = _read_config(directory)
    _check_config(config, directory / CONFIG_FILE)
    weights = directory / WEIGHTS_FILE
    try:
        peft_tensors = load_file(weights)
    except FileNotFoundError:
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE} (adapters saved as .bin are not read: they are pickles)") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights} is truncated or corrupted ({err})") from None
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in peft_tensors.items():
        match = _PEFT_KEY.fullmatch(key)
        ours = gptkit_module_name(match[1]) if match else None
        if ours is None:
            raise ConfigError(
                f"{directory} is an adapter for another architecture: '{key}' is not a LoRA matrix of a GPT-2 linear "
                "(expected base_model.model.transformer.h.N.attn.c_attn.lora_A.weight and the like)"
            )
        tensors[f"{ours}.lora_{match[2]}"] = tensor  # type: ignore[index]
    modules = sorted({name.rsplit(".", 1)[0] for name in tensors}, key=_model_order)
    lonely = [m for m in modules if f"{m}.lora_A" not in tensors or f"{m}.lora_B" not in tensors]
    if not modules or lonely:
        raise CheckpointError(f"{weights} holds {'no adapter' if not modules else 'lora_A without lora_B or the reverse for ' + lonely[0]}")
    return PeftAdapter(config["r"], float(config["lora_alpha"]), float(config.get("lora_dropout") or 0.0), tuple(modules), tensors)


def _model_order(name: str) -> tuple[int, str]:
    match = re.match(r"blocks\.(\d+)\.", name)
    return (int(match[1]), name) if match else (1 << 30, name)
