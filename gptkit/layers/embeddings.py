"""Position encodings: what tells the model where each token stands.

Two places can carry position: an *absolute* vector added to the token
embedding (GPT-2's learned table), or a *relative* rotation of queries and keys
inside attention (RoPE, in `plugins/`). One interface serves both, so the model
and attention need not know which is in use.

`start_pos` is where the tokens begin: one int for a batch whose rows started
together, or a (batch,) tensor of each row's own position, for rows of different
lengths decoded together (`gptkit.layers.kv_cache.RaggedKVCache`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gptkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from gptkit.hookspecs import ModelShape
    from gptkit.registry import Registry


Positions = int | torch.Tensor  # one start for every row, or a (batch,) LongTensor of each row's


def position_ids(start_pos: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(batch, seq_len) positions of each row's tokens, from each row's start."""
    return start_pos[:, None] + torch.arange(seq_len, device=start_pos.device)


class PositionEncoding(nn.Module):
    """Base class: no absolute embedding, no rotation (NoPE: causal masking alone)."""

    def absolute(self, start_pos: Positions, seq_len: int) -> torch.Tensor | None:
        """(seq_len, emb_dim) vectors added to the token embeddings ((batch, seq_len, emb_dim) per row), or None."""
        return None

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start_pos: Positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys of shape (batch, heads, seq, head_dim), rotated by position."""
        return q, k


class LearnedPositionEmbedding(PositionEncoding):
    """GPT-2's table of one trained vector per position, added to the token embedding."""

    def __init__(self, context_length: int, emb_dim: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.weight = nn.Parameter(torch.empty(context_length, emb_dim))
        nn.init.normal_(self.weight, std=0.02)

    def absolute(self, start_pos: Positions, seq_len: int) -> torch.Tensor:
        if isinstance(start_pos, torch.Tensor):
            positions = position_ids(start_pos, seq_len)
            if positions.numel() and int(positions.max()) >= self.context_length:
                raise ValueError(
                    f"position {int(positions.max())} exceeds the learned table of {self.context_length}; "
                    "crop the input to the context length"
                )
            return self.weight[positions]
        end = start_pos + seq_len
        if end > self.context_length:
            raise ValueError(
                f"positions {start_pos}..{end - 1} exceed the learned table of {self.context_length}; "
                "crop the input to the context length"
            )
        # A slice, not an index lookup: positions are contiguous, so no gather is needed.
        return self.weight[start_pos:end]


# --- registration: `model.position = "learned"` or `"none"` ------------------------


def build_learned(cfg: ModelShape) -> LearnedPositionEmbedding:
    return LearnedPositionEmbedding(cfg.context_length, cfg.emb_dim)


def build_none(cfg: ModelShape) -> PositionEncoding:
    return PositionEncoding()


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("position", "learned", build_learned, description="Learned absolute position table added to token embeddings (GPT-2)")
    registry.register("position", "none", build_none, description="No position encoding (NoPE): causal mask only")
