"""Typed model configuration: shape, options, component names, GPT-2 presets.

A config is plain data (names and numbers) so it can live in a JSON/TOML file or
a checkpoint; `gptkit.registry` turns the names into modules. Every component
slot accepts a name (``"rmsnorm"``) or a name with that component's own
parameters (``{"name": "rmsnorm", "eps": 1e-6}``), checked against the
parameter model the component registered.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from gptkit.errors import ConfigError, GptkitError, problems_line, validation_problems
from gptkit.registry import Registry, split_spec

# Config field -> registry kind, for every component a model is assembled from.
MODEL_SLOTS: dict[str, str] = {
    "norm": "norm",
    "activation": "activation",
    "attention": "attention",
    "ffn": "ffn",
    "position": "position",
    "block": "block",
    "head": "head",
}


class ComponentSpec(BaseModel):
    """A component name plus its parameters, e.g. ``{"name": "rmsnorm", "eps": 1e-6}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def registry_from(info: ValidationInfo) -> Registry:
    """The registry given as validation context, else the process-wide one."""
    context = info.context or {}
    if "registry" in context:
        return context["registry"]
    from gptkit.plugins import default_registry  # deferred: plugins import gptkit

    return default_registry()


def resolve_component(kind: str, spec: ComponentSpec, registry: Registry, cfg: Any = None) -> ComponentSpec:
    """Validate `spec` against the component's own parameter model, filling defaults."""
    name, values = split_spec(spec)
    try:
        component = registry.get(kind, name)
    except GptkitError as err:
        raise PydanticCustomError("unknown_component", "{message}", {"message": str(err)}) from None
    try:
        params = component.validate(values)
    except ValidationError as err:
        raise PydanticCustomError(
            "component_params", "{message}", {"message": f"{kind} '{name}': {problems_line(err)}", "problems": validation_problems(err)}
        ) from None
    if cfg is not None:
        check = getattr(params, "check_model", None)
        if check is not None:
            check(cfg)  # a ValueError here becomes a normal validation error
    return ComponentSpec(name=name, **params.model_dump())


def fill_default_names(model: type[BaseModel], data: Any, slots: Any) -> Any:
    """`{"eps": 1e-6}` in a component slot means the slot's default component with that parameter."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for field in slots:
        value = data.get(field)
        if isinstance(value, dict) and "name" not in value:
            default = model.model_fields[field].default
            data[field] = {"name": split_spec(default)[0], **value}
    return data


class ModelConfig(BaseModel):
    """Shape, options and component names of a GPT model. Defaults are GPT-2 124M."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)

    vocab_size: int = Field(50257, gt=0, description="Number of token ids (GPT-2 BPE: 50257).")
    context_length: int = Field(1024, gt=0, description="Longest sequence the model attends over.")
    emb_dim: int = Field(768, gt=0, description="Width of the residual stream.")
    n_heads: int = Field(12, gt=0, description="Attention heads per layer; must divide emb_dim.")
    n_layers: int = Field(12, gt=0, description="Number of transformer blocks.")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals.")
    qkv_bias: bool = Field(True, description="Bias in the query/key/value projection (GPT-2 has one).")
    weight_tying: bool = Field(True, description="Share the token embedding with the output head.")
    norm: ComponentSpec = Field("layernorm", description="Normalisation before attention, MLP and head.")
    activation: ComponentSpec = Field("gelu", description="Activation inside the feed-forward network.")
    attention: ComponentSpec = Field("mha", description="Causal self-attention.")
    ffn: ComponentSpec = Field("mlp", description="Position-wise feed-forward network.")
    position: ComponentSpec = Field("learned", description="How token positions are encoded.")
    block: ComponentSpec = Field("pre_ln", description="How attention and FFN are wired into a layer.")
    head: ComponentSpec = Field("lm", description="Output head: lm (next-token logits), or a classifier (last_token, mean_pool).")

    @model_validator(mode="before")
    @classmethod
    def _default_names(cls, data: Any) -> Any:
        return fill_default_names(cls, data, MODEL_SLOTS)

    @field_validator(*MODEL_SLOTS, mode="after")
    @classmethod
    def _known_component(cls, spec: ComponentSpec, info: ValidationInfo) -> ComponentSpec:
        assert info.field_name is not None
        return resolve_component(MODEL_SLOTS[info.field_name], spec, registry_from(info))

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> ModelConfig:
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
        registry = registry_from(info)
        for field, kind in MODEL_SLOTS.items():
            # Second pass with the whole config, for checks such as RoPE's even head size.
            resolve_component(kind, getattr(self, field), registry, cfg=self)
        return self

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic stores an assigned field before the model validators run and keeps
        # it when they fail, which would leave e.g. n_heads not dividing emb_dim behind.
        before, fields_set = dict(self.__dict__), set(self.__pydantic_fields_set__)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            self.__dict__.clear()
            self.__dict__.update(before)
            object.__setattr__(self, "__pydantic_fields_set__", fields_set)
            raise


# GPT-2 sizes as OpenAI released them; "cpu-small" trains on a laptop CPU in minutes.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25),
    "cpu-small": dict(emb_dim=256, n_layers=4, n_heads=4, context_length=128),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        from gptkit.registry import unknown_name_message

        raise ConfigError(unknown_name_message("preset", name, list(PRESETS)))
    return copy.deepcopy(PRESETS[name])


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """`model_preset("gpt2")`, or with changes: `model_preset("gpt2", n_layers=6)`."""
    return ModelConfig(**{**preset_values(name), **overrides})


def describe_validation_error(err: ValidationError, root: str = "") -> str:
    """One line per problem, each starting with the dotted path of the offending key."""
    lines = []
    for e, (where, _) in zip(err.errors(), validation_problems(err)):
        path = ".".join(filter(None, (root, where)))
        problems = (e.get("ctx") or {}).get("problems")
        if problems:  # a component's own parameters, checked by its params model
            lines.extend(f"{path}.{loc}: {explain(msg)}" for loc, msg in problems)
        else:
            lines.append(f"{path or '(top level)'}: {explain(e['msg'])}")
    return "\n".join(lines)


def explain(message: str) -> str:
    """pydantic's wording, with the one phrase users misread made plain."""
    message = message.removeprefix("Value error, ")
    return message.replace("Extra inputs are not permitted", "unknown key (no such setting)")


def config_json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema of `ModelConfig`, each component slot listing the registered choices."""
    if registry is None:
        from gptkit.plugins import default_registry

        registry = default_registry()
    schema = ModelConfig.model_json_schema()
    for field, kind in MODEL_SLOTS.items():
        choices = []
        for component in registry.list(kind):
            sub = component.params.model_json_schema()
            sub.setdefault("properties", {})["name"] = {"const": component.name}
            # No "name" in "required": {"eps": 1e-6} alone means the slot's default component.
            sub["title"] = component.name
            sub["description"] = component.description
            choices.append({"const": component.name})
            choices.append(sub)
        prop = schema["properties"][field]
        schema["properties"][field] = {k: v for k, v in prop.items() if k in ("default", "description")} | {
            "anyOf": choices
        }
    schema.pop("$defs", None)
    return schema
