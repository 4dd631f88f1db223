"""Output heads: what the final hidden states become. `lm` is GPT-2's; the others classify.

`lm` maps every position to logits over the vocabulary (tied to the token embedding
when `model.weight_tying`); untied, `zero_init` starts it at zero, so every token is
equally likely at step 0 and the first updates do not fight a random head (as
modded-nanogpt does). A classifier head (Raschka ch. 6) maps every position to
logits over `num_classes` labels and then pools a sequence's positions into one row:
`last_token` takes the last real token, the only one a causal model lets see the
whole text; `mean_pool` averages the real tokens. Pooling the per-position logits is
pooling the hidden states, since the head is linear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import nn

from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams

if TYPE_CHECKING:
    from gptkit.hookspecs import ModelShape
    from gptkit.registry import Registry

Pooling = Literal["last_token", "mean_pool"]


class ClassificationHead(nn.Linear):
    """Linear(emb_dim -> num_classes) at every position, and how a sequence's positions are pooled."""

    def __init__(self, emb_dim: int, num_classes: int, pooling: Pooling) -> None:
        super().__init__(emb_dim, num_classes)
        self.pooling = pooling

    def pool(self, logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, seq, classes) logits of right-padded rows -> (batch, classes), from each row's first `lengths` positions."""
        if self.pooling == "last_token":
            return logits[torch.arange(len(logits), device=logits.device), lengths - 1]
        real = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
        return (logits * real[..., None]).sum(1) / lengths[:, None].to(logits.dtype)


# --- registration: `model.head = "lm"` or `{"name": "last_token", "num_classes": 2}` ----


class LMHeadParams(ComponentParams):
    zero_init: bool = Field(False, description="Start the (untied) head at zero instead of N(0, 0.02).")

    def check_model(self, cfg: ModelShape) -> None:
        if self.zero_init and getattr(cfg, "weight_tying", False):
            raise ValueError(
                "head 'lm' zero_init needs weight_tying=false: a tied head is the token embedding, "
                "which cannot start at zero"
            )


class ClassifierParams(ComponentParams):
    # None until the labels are known: a classification run fills it in from its data.
    num_classes: int | None = Field(None, ge=2, description="Number of labels; None: counted from the training data.")


def build_lm_head(cfg: ModelShape, zero_init: bool) -> nn.Linear:
    head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
    if zero_init:
        head.starts_at_zero = True  # type: ignore[assignment]  # GPTModel.reset_parameters reads it
    return head


def classifier_builder(pooling: Pooling) -> Callable[..., ClassificationHead]:
    def build(cfg: ModelShape, num_classes: int | None) -> ClassificationHead:
        if num_classes is None:
            raise ValueError(f"head '{pooling}' needs num_classes (a classification run counts it from its labels)")
        return ClassificationHead(cfg.emb_dim, num_classes, pooling)

    return build


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("head", "lm", build_lm_head, params=LMHeadParams, description="next-token logits over the vocabulary (GPT-2)")
    registry.register(
        "head", "last_token", classifier_builder("last_token"), params=ClassifierParams,
        description="a label from the last real token (Raschka ch. 6)",
    )
    registry.register(
        "head", "mean_pool", classifier_builder("mean_pool"), params=ClassifierParams,
        description="a label from the mean over the real tokens",
    )
