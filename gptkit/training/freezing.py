"""Which parameters a run trains: `train.trainable` and `train.freeze`, glob patterns over parameter names.

The names are the model's own (`python main.py components` lists the parts; a run's
names look like `blocks.11.att.qkv.weight`, `final_norm.weight`, `out_head.weight`).
`trainable`, when given, keeps only the matching parameters trainable; `freeze` then
fixes the matching ones. Raschka's classification recipe (chapter 6) is
`trainable = ["blocks.11.*", "final_norm.*", "out_head.*"]` on GPT-2 124M.

`train.lora` freezes differently: every base weight, with adapters to train beside
the chosen linears (`gptkit.training.lora`). A frozen parameter gets no gradient and
no optimizer state, and stays bit for bit what it was loaded as. A tied output head is the token embedding itself (one tensor under
two names): freezing either name freezes both.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from gptkit.errors import ConfigError

NAMES_SHOWN = 6  # how many parameter names a message about an unmatched pattern lists


@dataclass(frozen=True)
class TrainableSummary:
    trainable: int  # parameters (elements) that train
    total: int


def parameter_names(model: nn.Module) -> list[str]:
    """Every name a parameter goes by, a tied tensor's second name included."""
    return [name for name, _ in model.named_parameters(remove_duplicate=False)]


def _matching(names: Sequence[str], pattern: str, setting: str) -> set[str]:
    matched = set(fnmatch.filter(names, pattern))
    if not matched:
        shown = ", ".join(names[:NAMES_SHOWN]) + (", ..." if len(names) > NAMES_SHOWN else "")
        raise ConfigError(
            f"{setting} pattern '{pattern}' matches no parameter of this model; "
            f"its {len(names)} names look like: {shown} (blocks.N.* for layer N)"
        )
    return matched


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """How many elements train, of how many, each tensor counted once (a tied one too)."""
    unique = {id(p): p for p in model.parameters()}.values()
    return TrainableSummary(sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique))


def apply_trainable(model: nn.Module, trainable: Sequence[str] | None, freeze: Sequence[str]) -> TrainableSummary:
    """Set `requires_grad` from the patterns; returns how many elements train."""
    names = parameter_names(model)
    keep = set(names) if trainable is None else set().union(*(_matching(names, p, "train.trainable") for p in trainable))
    fixed = set().union(set(), *(_matching(names, p, "train.freeze") for p in freeze))
    params = dict(model.named_parameters(remove_duplicate=False))
    # A tensor under two names trains only if every one of its names may train.
    frozen_ids = {id(params[name]) for name in names if name not in keep or name in fixed}
    for param in params.values():
        param.requires_grad_(id(param) not in frozen_ids)
    summary = trainable_summary(model)
    if summary.trainable == 0:
        raise ConfigError("train.trainable and train.freeze leave no parameter to train")
    return summary
