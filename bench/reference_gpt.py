"""A plain GPT-2 written the way nanoGPT writes it: the training benchmark's reference model.

Nothing here is configurable beyond GPT-2's shape: a fused q/k/v projection
(`c_attn`), `F.scaled_dot_product_attention(is_causal=True)`, a tanh-GELU MLP,
pre-LN blocks, learned positions and an output head tied to the token
embedding. It is what a competent hand-written model costs, so that gptkit's
registry-assembled model can be held against it (`bench/train.py`).

`from_gptkit` copies a `GPTModel`'s weights in (the layouts are the same
`nn.Linear` ones; only names differ), so both compute the same logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptkit import GPTModel, ModelConfig
from gptkit.interop.hf_convert import check_exportable


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_model_config(cls, cfg: ModelConfig) -> GPTConfig:
        """GPT-2 shapes of a gptkit config; refuses configs GPT-2 cannot express (RMSNorm, RoPE, ...)."""
        check_exportable(cfg)
        if not cfg.qkv_bias or not cfg.weight_tying or cfg.ffn.params.get("hidden_dim") not in (None, 4 * cfg.emb_dim):
            raise ValueError("the reference model is plain GPT-2: q/k/v bias, tied head, 4x MLP")
        if cfg.activation.params.get("approximate", "tanh") != "tanh":
            raise ValueError("the reference model uses GPT-2's tanh GELU")
        return cls(
            vocab_size=cfg.vocab_size, block_size=cfg.context_length, n_layer=cfg.n_layers,
            n_head=cfg.n_heads, n_embd=cfg.emb_dim, layer_norm_eps=cfg.norm.params.get("eps", 1e-5),
        )


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """nanoGPT's `transformer` ModuleDict as a typed module: the same parameter names."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        _, t = idx.size()
        assert t <= self.config.block_size, f"sequence of {t} exceeds block size {self.config.block_size}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-100)
        return logits, loss


def gptkit_to_reference_names(cfg: ModelConfig) -> dict[str, str]:
    """Reference parameter name for each gptkit parameter name (the tied head is left out)."""
    names = {
        "tok_emb.weight": "transformer.wte.weight",
        "pos_emb.weight": "transformer.wpe.weight",
        "final_norm.weight": "transformer.ln_f.weight",
        "final_norm.bias": "transformer.ln_f.bias",
    }
    parts = {
        "norm1": "ln_1", "att.qkv": "attn.c_attn", "att.out_proj": "attn.c_proj",
        "norm2": "ln_2", "ff.fc1": "mlp.c_fc", "ff.fc2": "mlp.c_proj",
    }
    for i in range(cfg.n_layers):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{kind}"] = f"transformer.h.{i}.{theirs}.{kind}"
    return names


def from_gptkit(model: GPTModel) -> GPT:
    """A reference GPT holding a copy of `model`'s weights (float32, its own memory)."""
    config = GPTConfig.from_model_config(model.cfg)
    with torch.device("meta"):  # every tensor is overwritten below: skip the random init
        reference = GPT(config)
    ours = model.state_dict()
    state = {theirs: ours[name].detach().float().clone() for name, theirs in gptkit_to_reference_names(model.cfg).items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    reference.load_state_dict(state, assign=True)
    reference.transformer.wte.weight = reference.lm_head.weight  # assign=True replaced the shared Parameter
    return reference.train(model.training)
