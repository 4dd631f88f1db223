"""Optimizers by name (registry kind `optimizer`), and the rules that sort parameters into groups.

`train.optimizer = {name = "adamw", weight_decay = 0.1, groups = [...]}`: each
optimizer's parameters are its own (betas, momentum, ...), and `groups` is a
list of rules, each picking parameters by name glob and by number of
dimensions and giving them their own weight decay or learning-rate multiple.
The first rule that matches a parameter decides; a parameter no rule matches
takes the optimizer's own settings. A rule that matches no parameter of the
model is a mistake (a typo in a glob) and is refused naming it.

Only parameters that train are handed to the optimizer, so frozen ones get no
state. Each group carries `lr_scale`; the trainer sets a group's lr to the
schedule's lr times it every step.

A factory is called with the model's `(name, parameter)` pairs, the peak `lr`
(`train.lr`), the `device` and whether the parameters are `sharded` (FSDP),
and returns a `torch.optim.Optimizer`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gptkit.errors import GptkitError
from gptkit.hookspecs import hookimpl
from gptkit.registry import ComponentParams
from gptkit.training.muon import Muon

if TYPE_CHECKING:
    from gptkit.registry import Registry

NamedParameters = Sequence[tuple[str, torch.nn.Parameter]]


class ParamRule(BaseModel):
    """Which parameters (name globs and numbers of dimensions, both must match) get which settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    names: list[str] = Field(default_factory=lambda: ["*"], min_length=1, description="Glob patterns over parameter names.")
    ndim: list[int] | None = Field(None, description="Numbers of dimensions matched, e.g. [0, 1] for biases and norm gains; None: any.")
    weight_decay: float | None = Field(None, ge=0, description="This group's weight decay; None: the optimizer's.")
    lr_scale: float | None = Field(None, gt=0, description="This group's lr as a multiple of the schedule's; None: the optimizer's.")
    optimizer: Literal["muon", "adamw"] | None = Field(None, description="muon only: which update these parameters get.")

    def matches(self, name: str, param: torch.Tensor) -> bool:
        shape_ok = self.ndim is None or param.dim() in self.ndim
        return shape_ok and any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names)

    def describe(self) -> str:
        shape = f", ndim {self.ndim}" if self.ndim is not None else ""
        return f"names {self.names}{shape}"


# Decaying norms' gains and biases pulls them towards zero for no regularising benefit.
NO_DECAY_FOR_VECTORS = ParamRule(ndim=[0, 1], weight_decay=0.0)


class AdamWParams(ComponentParams):
    betas: tuple[float, float] = Field((0.9, 0.95), description="Decay rates of the gradient's running mean and square.")
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="Decoupled decay of the parameters no group rule exempts.")
    groups: list[ParamRule] = Field(default_factory=lambda: [NO_DECAY_FOR_VECTORS], description="Parameter-group rules, first match wins.")

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, betas: tuple[float, float]) -> tuple[float, float]:
        return check_betas(betas)


class SGDParams(ComponentParams):
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0).")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty added to the gradient (torch's SGD).")
    groups: list[ParamRule] = Field(default_factory=lambda: [NO_DECAY_FOR_VECTORS], description="Parameter-group rules, first match wins.")

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, nesterov: bool, info: ValidationInfo) -> bool:
        if nesterov and info.data.get("momentum") == 0:
            raise ValueError("nesterov needs momentum > 0")
        return nesterov


class MuonParams(ComponentParams):
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, le=20, description="Newton-Schulz iterations per update.")
    lr_scale: float = Field(10.0, gt=0, description="Muon's lr as a multiple of train.lr (0.02 at the default 2e-3, nanochat's).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's betas, for the parameters Muon leaves out.")
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="Decoupled decay of the AdamW parameters no rule exempts.")
    groups: list[ParamRule] = Field(
        default_factory=lambda: [
            ParamRule(names=["blocks.*"], ndim=[2], weight_decay=0.0, optimizer="muon"),
            NO_DECAY_FOR_VECTORS,
        ],
        description="Parameter-group rules, first match wins; optimizer='muon' picks Muon's (2-D hidden matrices).",
    )

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, betas: tuple[float, float]) -> tuple[float, float]:
        return check_betas(betas)


def check_betas(betas: tuple[float, float]) -> tuple[float, float]:
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must each be in [0, 1), got {list(betas)}")
    return betas


def param_groups(
    named: NamedParameters, rules: Sequence[ParamRule | dict[str, Any]], lr: float, defaults: dict[str, Any]
) -> list[dict[str, Any]]:
    """One group for the parameters no rule matches (first), then one per rule, in order; each
    group's `lr` is `lr` times its `lr_scale`.

    Empty groups stay, so a run's group layout does not depend on which
    parameters are frozen, and resuming it finds the groups it saved.
    """
    rules = [r if isinstance(r, ParamRule) else ParamRule.model_validate(r) for r in rules]
    for index, rule in enumerate(rules):
        if not any(rule.matches(name, p) for name, p in named):
            sample = ", ".join(name for name, _ in named[:6])
            raise GptkitError(
                f"train.optimizer.groups[{index}] ({rule.describe()}) matches no parameter; "
                f"parameter names look like: {sample}, ..."
            )
    chosen: list[list[torch.nn.Parameter]] = [[] for _ in range(len(rules) + 1)]
    for name, p in named:
        if not p.requires_grad:
            continue
        index = next((i + 1 for i, rule in enumerate(rules) if rule.matches(name, p)), 0)
        chosen[index].append(p)
    groups = [{"params": chosen[0], "lr": lr, "lr_scale": 1.0, **defaults}]
    for rule, params in zip(rules, chosen[1:], strict=True):
        scale = 1.0 if rule.lr_scale is None else rule.lr_scale
        decay = {} if rule.weight_decay is None else {"weight_decay": rule.weight_decay}
        groups.append({"params": params, **defaults, "lr": lr * scale, "lr_scale": scale, **decay})
    return groups


def refuse_optimizer_field(name: str, rules: Sequence[ParamRule | dict[str, Any]]) -> None:
    for index, rule in enumerate(rules):
        if (rule.optimizer if isinstance(rule, ParamRule) else rule.get("optimizer")) is not None:
            raise GptkitError(f"train.optimizer.groups[{index}].optimizer chooses between Muon and AdamW; optimizer '{name}' has one update")


def adamw(named: NamedParameters, lr: float, device: torch.device, sharded: bool, *, betas: tuple[float, float], eps: float,
          weight_decay: float, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only by default (GPT-2's, nanoGPT's)."""
    refuse_optimizer_field("adamw", groups)
    # The fused kernel does the whole update in one pass over each tensor: on CPU about
    # 3.5x faster than the multi-tensor (foreach) path, which makes a pass per operation.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        param_groups(named, groups, lr, {"weight_decay": weight_decay}), lr=lr, betas=tuple(betas), eps=eps,
        fused=fused, foreach=None if fused else True,
    )


def sgd(named: NamedParameters, lr: float, device: torch.device, sharded: bool, *, momentum: float, nesterov: bool,
        weight_decay: float, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD with (optionally Nesterov) momentum."""
    refuse_optimizer_field("sgd", groups)
    return torch.optim.SGD(param_groups(named, groups, lr, {"weight_decay": weight_decay}), lr=lr, momentum=momentum, nesterov=nesterov)


def muon(named: NamedParameters, lr: float, device: torch.device, sharded: bool, *, momentum: float, nesterov: bool, ns_steps: int,
         lr_scale: float, betas: tuple[float, float], eps: float, weight_decay: float, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Muon on the 2-D hidden matrices, AdamW on embeddings, head, norms and biases."""
    if sharded:
        raise GptkitError(
            "train.optimizer 'muon' orthogonalises whole weight matrices, and run.parallel=fsdp gives each process "
            "a shard of them; use run.parallel=ddp, or adamw or sgd under fsdp"
        )
    rules = [r if isinstance(r, ParamRule) else ParamRule.model_validate(r) for r in groups]
    built = param_groups(named, rules, lr, {"weight_decay": weight_decay})
    built[0]["use_muon"] = False
    for index, (rule, group) in enumerate(zip(rules, built[1:], strict=True)):
        group["use_muon"] = rule.optimizer == "muon"
        if group["use_muon"] and rule.lr_scale is None:
            group["lr_scale"], group["lr"] = lr_scale, lr * lr_scale
        if group["use_muon"] and any(p.dim() != 2 for p in group["params"]):
            raise GptkitError(f"train.optimizer.groups[{index}] gives Muon parameters that are not 2-D matrices; add ndim = [2] to it")
    return Muon(built, lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=tuple(betas), eps=eps)


def build_optimizer(registry: Registry, spec: Any, model: torch.nn.Module, lr: float, device: torch.device, sharded: bool) -> torch.optim.Optimizer:
    """`train.optimizer` over `model`'s parameters (frozen ones are left out, by each factory)."""
    return registry.create("optimizer", spec, list(model.named_parameters()), lr, device, sharded)


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("optimizer", "adamw", adamw, params=AdamWParams, description="AdamW, no decay on biases and norm gains (the default)")
    registry.register("optimizer", "sgd", sgd, params=SGDParams, description="SGD with momentum, optionally Nesterov")
    registry.register("optimizer", "muon", muon, params=MuonParams, description="Muon (orthogonalised momentum) on hidden matrices, AdamW on the rest")
