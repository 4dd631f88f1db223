"""GPTModel: token embeddings, a stack of transformer blocks, a final norm and the output head.

Read top to bottom, this is GPT-2: `ModelConfig` (in `gptkit.model.config`) names
each part, the registry builds it, and the blocks of `gptkit.layers` do the work.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from gptkit.layers.kv_cache import KVCache, RaggedKVCache
from gptkit.model.config import ModelConfig, model_preset
from gptkit.registry import Registry

CacheT = TypeVar("CacheT", KVCache, RaggedKVCache)

IGNORE_INDEX = -100  # targets with this value (padding) are left out of the loss, as in PyTorch


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (batch, seq, vocab) logits against (batch, seq) next tokens."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def build_block(cfg: ModelConfig, registry: Registry) -> nn.Module:
    """One transformer layer, each of its parts built from the name the config gives."""
    activation = registry.create("activation", cfg.activation)
    return registry.create(
        "block", cfg.block, cfg,
        attention=registry.create("attention", cfg.attention, cfg),
        ffn=registry.create("ffn", cfg.ffn, cfg, activation=activation),
        norm1=registry.create("norm", cfg.norm, cfg.emb_dim),
        norm2=registry.create("norm", cfg.norm, cfg.emb_dim),
    )


class GPTModel(nn.Module):
    """A decoder-only transformer assembled from a `ModelConfig` through the registry."""

    def __init__(self, cfg: ModelConfig, registry: Registry | None = None) -> None:
        super().__init__()
        if registry is None:
            from gptkit.plugins import (
                default_registry,  # deferred: the registry's plugins import this module
            )

            registry = default_registry()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = registry.create("position", cfg.position, cfg)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(build_block(cfg, registry) for _ in range(cfg.n_layers))
        self.final_norm = registry.create("norm", cfg.norm, cfg.emb_dim)
        self.out_head = registry.create("head", cfg.head, cfg)
        self.reset_parameters()
        if cfg.weight_tying and cfg.head.name == "lm":
            # GPT-2 reads and writes tokens with one matrix: a third fewer parameters
            # in the 124M model, and rare tokens' output rows get the input's gradient.
            self.out_head.weight = self.tok_emb.weight

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> GPTModel:
        return cls(model_preset(name, **overrides))

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, scaled residual projections."""
        # Each block adds two outputs to the residual stream, so its variance grows with
        # 2 * n_layers; scaling those projections by (2 * n_layers) ** -0.5 keeps it steady.
        residual_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = residual_std if getattr(module, "is_residual_projection", False) else 0.02
                if getattr(module, "starts_at_zero", False):
                    nn.init.zeros_(module.weight)  # a zero-initialised output head: every logit starts equal
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameters counted once each (a tied head is not counted twice, as in Hugging Face)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            total -= sum(p.numel() for p in self.pos_emb.parameters())
        return total

    def make_kv_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        return self._make_cache(KVCache, batch, max_len)

    def make_ragged_kv_cache(self, max_rows: int, max_len: int | None = None) -> RaggedKVCache:
        """A cache of `max_rows` rows that each hold their own number of positions (continuous batching)."""
        return self._make_cache(RaggedKVCache, max_rows, max_len)

    def _make_cache(self, kind: type[CacheT], rows: int, max_len: int | None) -> CacheT:
        ref = self.tok_emb.weight
        # Grouped-query attention caches fewer key/value heads than it has query heads.
        heads = self.cfg.attention.params.get("n_kv_heads") or self.cfg.n_heads
        return kind(
            self.cfg.n_layers, rows, heads, max_len or self.cfg.context_length, self.cfg.head_dim,
            dtype=ref.dtype, device=ref.device,
        )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        start_pos: int | torch.Tensor = 0,
        kv_cache: KVCache | RaggedKVCache | None = None,
        last_only: bool = False,
        keep_logits: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor]:
        """Logits of shape (batch, seq, vocab); with `targets`, `(logits, mean cross-entropy)`.

        Targets equal to -100 are ignored in the loss (padding), as in PyTorch and Hugging Face.
        `last_only` returns logits for the last position only, (batch, 1, vocab): all
        that generation needs, and the output head is a third of GPT-2 124M's weights.
        `keep_logits=False` (with targets) returns `(None, loss)`: what training asks
        for, so that a faster `head_loss` need not keep the logits at all.
        """
        if last_only and targets is not None:
            raise ValueError("last_only drops the positions the loss needs; pass targets or last_only, not both")
        seq_len = idx.shape[1]
        if isinstance(start_pos, torch.Tensor) or isinstance(kv_cache, RaggedKVCache):
            self._check_row_positions(start_pos, seq_len, kv_cache)
        else:
            if kv_cache is not None and start_pos != kv_cache.length:
                # Positions and the cache's causal alignment would disagree: wrong logits, no error.
                raise ValueError(f"start_pos {start_pos} does not match the KV cache, which holds {kv_cache.length} positions")
            if start_pos + seq_len > self.cfg.context_length:
                raise ValueError(f"{start_pos + seq_len} positions exceed the context length {self.cfg.context_length}")
        x = self.tok_emb(idx)
        absolute = self.pos_emb.absolute(start_pos, seq_len)
        if absolute is not None:
            x = x + absolute
        x = self.drop_emb(x)
        for i, block in enumerate(self.blocks):
            x = block(x, self.pos_emb, start_pos, kv_cache.layers[i] if kv_cache is not None else None)
        if last_only:
            x = x[:, -1:]
        x = self.final_norm(x)
        if targets is not None and not keep_logits:
            return None, self.head_loss(x, targets)
        logits = self.out_head(x)
        if targets is None:
            return logits
        return logits, next_token_loss(logits, targets)

    def _check_row_positions(self, start_pos: int | torch.Tensor, seq_len: int, kv_cache: KVCache | RaggedKVCache | None) -> None:
        """Per-row positions, (batch,): each row's own, matching a ragged cache's lengths."""
        lengths = None if kv_cache is None else kv_cache.length
        if not isinstance(start_pos, torch.Tensor) or start_pos.ndim != 1 or (
            lengths is not None and not (isinstance(lengths, torch.Tensor) and torch.equal(start_pos, lengths))
        ):
            shown = start_pos.tolist() if isinstance(start_pos, torch.Tensor) else start_pos
            found = lengths.tolist() if isinstance(lengths, torch.Tensor) else lengths
            raise ValueError(f"start_pos {shown} does not match the KV cache, which holds {found} positions per row")
        if len(start_pos) and int(start_pos.max()) + seq_len > self.cfg.context_length:
            raise ValueError(f"{int(start_pos.max()) + seq_len} positions exceed the context length {self.cfg.context_length}")

    def head_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the output head on the final hidden states (`gptkit.kernels` has a faster one)."""
        return next_token_loss(self.out_head(hidden), targets)
