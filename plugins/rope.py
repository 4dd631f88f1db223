"""Rotary position embeddings (RoPE; Su et al., 2021), as in LLaMA and GPT-NeoX.

Select with ``model.position=rope``. Instead of adding a position vector to each
token, RoPE rotates each pair of query/key channels by an angle proportional to
the position, so the query-key dot product depends only on their distance. The
learned absolute table is then not built at all.
"""

from __future__ import annotations

import torch
from pydantic import Field

from gptkit import ComponentParams, ModelConfig, PositionEncoding, Registry, hookimpl
from gptkit.layers.embeddings import position_ids


class RotaryPositionEncoding(PositionEncoding):
    """Rotates channel i with channel i + head_dim/2 (the "rotate half" layout)."""

    def __init__(self, head_dim: int, context_length: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head size, got {head_dim}")
        # Channel pair i turns at frequency theta^(-2i/d): fast pairs resolve nearby
        # tokens, slow pairs far ones.
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(context_length, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        # Not saved in checkpoints: they are a function of the config.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start_pos: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(start_pos, torch.Tensor):
            # Each row from its own position: (batch, seq, head_dim) angles, broadcast over the heads.
            positions = position_ids(start_pos, q.shape[-2])
            cos = self.cos[positions].to(q.dtype)[:, None]
            sin = self.sin[positions].to(q.dtype)[:, None]
        else:
            end = start_pos + q.shape[-2]
            cos = self.cos[start_pos:end].to(q.dtype)
            sin = self.sin[start_pos:end].to(q.dtype)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90 degree turn per pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class RopeParams(ComponentParams):
    theta: float = Field(10000.0, gt=0, description="Base of the rotation frequencies.")

    def check_model(self, cfg: ModelConfig) -> None:
        if cfg.head_dim % 2:
            raise ValueError(
                f"position 'rope' needs an even head size, but emb_dim / n_heads = "
                f"{cfg.emb_dim} / {cfg.n_heads} = {cfg.head_dim}"
            )


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register(
        "position", "rope",
        lambda cfg, theta: RotaryPositionEncoding(cfg.head_dim, cfg.context_length, theta),
        params=RopeParams, description="Rotary position embeddings applied to queries and keys (LLaMA)",
    )
