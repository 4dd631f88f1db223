"""GPT-2 configs and weights between gptkit's layout and Hugging Face's, both ways.

Only models built from GPT-2's own components can cross over: HF's GPT-2 has one
fixed architecture, so a config naming RMSNorm, RoPE or any plugin component is
refused with a message naming it rather than converted into something that loads
but computes different logits.

Two layout differences matter. HF's `Conv1D` stores weights as (in, out) where
`nn.Linear` stores (out, in), so those are transposed both ways. And HF always
has a query/key/value bias: a gptkit model without one exports zeros, and a
`gptkit` entry in `config.json` records that, so importing our own export gives
back the same config. Reading and writing checkpoint folders is `gptkit.interop.hf_checkpoint`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from gptkit.data.tokenizer import ENDOFTEXT_ID
from gptkit.errors import CheckpointError, GptkitError
from gptkit.model.config import ModelConfig, describe_validation_error
from gptkit.model.gpt import GPTModel

# Our own entry in config.json: transformers keeps unknown keys as plain attributes.
GPTKIT_KEY = "gptkit"

# The one GPT-2 choice per component slot.
GPT2_COMPONENTS: dict[str, str] = {
    "norm": "layernorm",
    "activation": "gelu",
    "attention": "mha",
    "ffn": "mlp",
    "position": "learned",
    "block": "pre_ln",
    "head": "lm",
}

# HF activation names gptkit can run, as GELU's `approximate`; and the name each exports as.
HF_ACTIVATIONS: dict[str, str] = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
EXPORT_ACTIVATION: dict[str, str] = {"tanh": "gelu_new", "none": "gelu"}

# Names other transformers models use for the same fields (GPT2Config.attribute_map).
HF_ALIASES: dict[str, str] = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}

# HF GPT-2 options that change the computation in ways gptkit does not model,
# with the value under which HF computes what gptkit does.
UNSUPPORTED_HF_OPTIONS: dict[str, Any] = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
}

# Per-layer buffers older checkpoints saved next to the weights (a causal mask and
# its fill value); gptkit builds its mask on the fly.
IGNORED_LAYER_BUFFERS = frozenset({"attn.bias", "attn.masked_bias"})


# --- configs -----------------------------------------------------------------


def _refuse_export(slot: str, what: str, expected: str) -> GptkitError:
    return GptkitError(
        f"cannot export to Hugging Face GPT-2: {slot} {what} has no GPT-2 equivalent (GPT-2 uses {expected})"
    )


def check_exportable(cfg: ModelConfig) -> None:
    """Raise `GptkitError` naming the first component HF GPT-2 cannot represent."""
    for slot, expected in GPT2_COMPONENTS.items():
        name = getattr(cfg, slot).name
        if name != expected:
            raise _refuse_export(slot, f"'{name}'", f"'{expected}'")
    if not cfg.norm.params.get("bias", True):
        raise _refuse_export("norm", "'layernorm' without bias", "a LayerNorm with bias")
    if not cfg.ffn.params.get("bias", True):
        raise _refuse_export("ffn", "'mlp' without bias", "an MLP with biases")


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The `config.json` of a transformers `GPT2LMHeadModel` with the shape and options of `cfg`."""
    check_exportable(cfg)
    # Token id 50256 is GPT-2's <|endoftext|>; a smaller vocabulary has no such token.
    special = ENDOFTEXT_ID if cfg.vocab_size > ENDOFTEXT_ID else None
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.ffn.params.get("hidden_dim"),
        "activation_function": EXPORT_ACTIVATION[cfg.activation.params.get("approximate", "tanh")],
        "layer_norm_epsilon": cfg.norm.params.get("eps", 1e-5),
        # gptkit has one dropout rate where GPT-2 has three.
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.weight_tying,
        "bos_token_id": special,
        "eos_token_id": special,
        "use_cache": True,
        GPTKIT_KEY: {"qkv_bias": cfg.qkv_bias},
    }


def model_config_from_hf(hf_config: Mapping[str, Any]) -> ModelConfig:
    """A `ModelConfig` for a transformers GPT-2 config (a `config.json` or `GPT2Config.to_dict()`)."""
    hf = {HF_ALIASES.get(key, key): value for key, value in hf_config.items()}
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise GptkitError(f"cannot import Hugging Face model_type '{model_type}': only 'gpt2' is supported")
    for option, supported in UNSUPPORTED_HF_OPTIONS.items():
        value = hf.get(option, supported)
        if value != supported:
            raise GptkitError(
                f"cannot import Hugging Face GPT-2 config: {option}={json.dumps(value)} is not supported by gptkit "
                f"(only {json.dumps(supported)})"
            )
    activation = hf.get("activation_function", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        raise GptkitError(
            f"cannot import Hugging Face GPT-2 config: activation_function '{activation}' is not supported "
            f"(expected one of {', '.join(HF_ACTIVATIONS)})"
        )
    ffn: dict[str, Any] = {"name": "mlp"}
    if hf.get("n_inner") is not None:
        ffn["hidden_dim"] = hf["n_inner"]
    ours = hf.get(GPTKIT_KEY)
    ours = ours if isinstance(ours, dict) else {}
    values = {
        "vocab_size": hf.get("vocab_size", 50257),
        "context_length": hf.get("n_positions", 1024),
        "emb_dim": hf.get("n_embd", 768),
        "n_layers": hf.get("n_layer", 12),
        "n_heads": hf.get("n_head", 12),
        # Dropout only matters for training; the residual rate is the one applied most often.
        "drop_rate": hf.get("resid_pdrop", 0.1),
        "qkv_bias": ours.get("qkv_bias", True),
        "weight_tying": hf.get("tie_word_embeddings", True),
        "norm": {"name": "layernorm", "eps": hf.get("layer_norm_epsilon", 1e-5)},
        "activation": {"name": "gelu", "approximate": HF_ACTIVATIONS[activation]},
        "ffn": ffn,
    }
    try:
        return ModelConfig(**values)
    except ValidationError as err:
        raise GptkitError(
            "Hugging Face GPT-2 config does not make a valid gptkit config:\n" + describe_validation_error(err)
        ) from None


# --- state dicts -------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    """One HF tensor and where it lives in a GPTModel (`ours` is None: HF-only, kept at zero)."""

    hf: str
    ours: str | None
    hf_shape: tuple[int, ...]
    conv1d: bool = False  # stored (in, out) by HF, so transposed against nn.Linear


def _param_table(cfg: ModelConfig) -> list[_Param]:
    """Every tensor of an HF GPT-2 state dict with these sizes, in HF's order."""
    emb = cfg.emb_dim
    hidden = cfg.ffn.params.get("hidden_dim") or 4 * emb
    table = [
        _Param("transformer.wte.weight", "tok_emb.weight", (cfg.vocab_size, emb)),
        _Param("transformer.wpe.weight", "pos_emb.weight", (cfg.context_length, emb)),
    ]
    for i in range(cfg.n_layers):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        table += [
            _Param(h + "ln_1.weight", b + "norm1.weight", (emb,)),
            _Param(h + "ln_1.bias", b + "norm1.bias", (emb,)),
            _Param(h + "attn.c_attn.weight", b + "att.qkv.weight", (emb, 3 * emb), conv1d=True),
            _Param(h + "attn.c_attn.bias", b + "att.qkv.bias" if cfg.qkv_bias else None, (3 * emb,)),
            _Param(h + "attn.c_proj.weight", b + "att.out_proj.weight", (emb, emb), conv1d=True),
            _Param(h + "attn.c_proj.bias", b + "att.out_proj.bias", (emb,)),
            _Param(h + "ln_2.weight", b + "norm2.weight", (emb,)),
            _Param(h + "ln_2.bias", b + "norm2.bias", (emb,)),
            _Param(h + "mlp.c_fc.weight", b + "ff.fc1.weight", (emb, hidden), conv1d=True),
            _Param(h + "mlp.c_fc.bias", b + "ff.fc1.bias", (hidden,)),
            _Param(h + "mlp.c_proj.weight", b + "ff.fc2.weight", (hidden, emb), conv1d=True),
            _Param(h + "mlp.c_proj.bias", b + "ff.fc2.bias", (emb,)),
        ]
    table += [
        _Param("transformer.ln_f.weight", "final_norm.weight", (emb,)),
        _Param("transformer.ln_f.bias", "final_norm.bias", (emb,)),
    ]
    if not cfg.weight_tying:
        table.append(_Param("lm_head.weight", "out_head.weight", (cfg.vocab_size, emb)))
    return table


def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """The model's weights under HF GPT-2 names and layouts; a tied head is stored once, as HF saves it.

    Tensors are contiguous and detached; those not transposed share memory with the model.
    """
    check_exportable(model.cfg)
    ours = model.state_dict()
    like = model.tok_emb.weight
    state: dict[str, torch.Tensor] = {}
    for p in _param_table(model.cfg):
        if p.ours is None:
            # HF GPT-2 always adds a q/k/v bias; zero is the same as none.
            state[p.hf] = torch.zeros(p.hf_shape, dtype=like.dtype, device=like.device)
            continue
        tensor = ours[p.ours].detach()
        state[p.hf] = (tensor.t() if p.conv1d else tensor).contiguous()
    return state


def _canonical_name(key: str) -> str:
    """`transformer.`-prefixed name for an HF key given with or without the prefix."""
    if key.startswith(("transformer.", "lm_head.")):
        return key
    return "transformer." + key


def _is_ignored_buffer(name: str) -> bool:
    parts = name.split(".", 3)  # transformer, h, index, rest
    return len(parts) == 4 and parts[1] == "h" and parts[3] in IGNORED_LAYER_BUFFERS


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def from_hf_state_dict(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """An HF GPT-2 state dict renamed and transposed into `GPTModel(cfg)`'s names.

    Keys may carry the `transformer.` prefix or not. The result holds views of
    the given tensors; `GPTModel.load_state_dict` copies them in.
    """
    check_exportable(cfg)
    given: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = _canonical_name(key)
        if not _is_ignored_buffer(name):
            given[name] = tensor
    table = _param_table(cfg)
    expected = {p.hf for p in table}
    tied_head = given.pop("lm_head.weight", None) if cfg.weight_tying else None
    missing = [p.hf for p in table if p.hf not in given]
    unexpected = sorted(set(given) - expected)
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {_list_some(missing)}")
        if unexpected:
            problems.append(f"unexpected {_list_some(unexpected)}")
        raise CheckpointError(
            f"Hugging Face GPT-2 weights do not fit a {cfg.n_layers}-layer model: " + "; ".join(problems)
        )
    result: dict[str, torch.Tensor] = {}
    for p in table:
        tensor = given[p.hf]
        if tuple(tensor.shape) != p.hf_shape:
            raise CheckpointError(
                f"Hugging Face weight '{p.hf}' has shape {_shape_text(tuple(tensor.shape))}, "
                f"expected {_shape_text(p.hf_shape)} for this config"
            )
        if p.ours is None:
            if torch.count_nonzero(tensor):
                raise CheckpointError(
                    f"'{p.hf}' is not all zero, but the config has qkv_bias=False, which would drop it; "
                    "use a config with qkv_bias=True"
                )
            continue
        result[p.ours] = tensor.t() if p.conv1d else tensor
    if cfg.weight_tying:
        _check_tied_head(tied_head, given["transformer.wte.weight"])
        result["out_head.weight"] = result["tok_emb.weight"]
    return result


def _check_tied_head(head: torch.Tensor | None, embedding: torch.Tensor) -> None:
    # HF's state_dict() lists a tied lm_head too; only a *different* one is a problem.
    if head is None or head is embedding:
        return
    if head.shape != embedding.shape or not torch.equal(head, embedding):
        raise CheckpointError(
            "'lm_head.weight' differs from 'transformer.wte.weight', but tie_word_embeddings is true; "
            "set tie_word_embeddings to false in config.json to keep a separate output head"
        )


def _list_some(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    more = len(names) - limit
    return shown + (f" and {more} more" if more > 0 else "")
