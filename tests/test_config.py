"""Typed model configs: what is refused (with which message), presets, round trips and the JSON schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gptkit import (
    PRESETS,
    ComponentSpec,
    ConfigError,
    GptkitError,
    ModelConfig,
    build_registry,
    config_json_schema,
    default_registry,
    describe_validation_error,
    model_preset,
)
from gptkit.model.config import MODEL_SLOTS, preset_names, preset_values


def problems(data: dict[str, Any], root: str = "model", **context: Any) -> str:
    """The user-facing text for an invalid config (fails the test if it is valid)."""
    with pytest.raises(ValidationError) as err:
        ModelConfig.model_validate(data, context=context or None)
    return describe_validation_error(err.value, root)


@pytest.fixture(scope="module")
def builtin_only():
    """A registry with gptkit's own components only, so listings in messages are fixed."""
    return build_registry(plugin_dirs=[], entry_points=False)


# --- defaults and component specs -------------------------------------------------------


def test_defaults_are_gpt2_124m() -> None:
    cfg = ModelConfig()
    assert (cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_heads, cfg.n_layers) == (50257, 1024, 768, 12, 12)
    assert (cfg.drop_rate, cfg.qkv_bias, cfg.weight_tying) == (0.0, True, True)
    assert cfg.head_dim == 64
    names = {field: getattr(cfg, field).name for field in MODEL_SLOTS}
    assert names == {"norm": "layernorm", "activation": "gelu", "attention": "mha", "ffn": "mlp", "position": "learned", "block": "pre_ln", "head": "lm"}


def test_component_slot_accepts_a_name_and_fills_its_defaults() -> None:
    cfg = ModelConfig(norm="rmsnorm", activation={"name": "gelu", "approximate": "none"})
    assert cfg.norm == ComponentSpec(name="rmsnorm", eps=1e-6)
    assert cfg.norm.params == {"eps": 1e-6}
    assert cfg.activation.params == {"approximate": "none"}
    assert ModelConfig().norm.params == {"eps": 1e-5, "bias": True}


def test_component_params_are_coerced_to_their_types() -> None:
    cfg = ModelConfig(norm={"name": "layernorm", "eps": "1e-3"}, ffn={"name": "mlp", "hidden_dim": "128"})
    assert cfg.norm.params["eps"] == 1e-3 and cfg.ffn.params["hidden_dim"] == 128


# --- what is refused ----------------------------------------------------------------------


def test_unknown_top_level_key_is_refused_with_its_path() -> None:
    assert problems({"n_head": 12}) == "model.n_head: unknown key (no such setting)"


def test_unknown_component_param_is_refused_with_its_dotted_path() -> None:
    assert problems({"norm": {"name": "layernorm", "epz": 1e-5}}) == "model.norm.epz: unknown key (no such setting)"
    assert problems({"position": {"name": "learned", "theta": 5.0}}) == "model.position.theta: unknown key (no such setting)"


def test_unknown_keys_are_reported_at_every_depth_of_an_enclosing_config() -> None:
    class Outer(BaseModel):
        model: ModelConfig

    with pytest.raises(ValidationError) as err:
        Outer.model_validate({"model": {"norm": {"name": "rmsnorm", "epz": 1}, "dropout": 0.1}})
    lines = describe_validation_error(err.value).splitlines()
    assert sorted(lines) == ["model.dropout: unknown key (no such setting)", "model.norm.epz: unknown key (no such setting)"]


def test_component_params_are_typed() -> None:
    assert problems({"norm": {"name": "layernorm", "eps": "abc"}}) == (
        "model.norm.eps: Input should be a valid number, unable to parse string as a number"
    )
    assert problems({"norm": {"name": "layernorm", "eps": 0}}) == "model.norm.eps: Input should be greater than 0"
    assert problems({"activation": {"name": "gelu", "approximate": "erf"}}) == (
        "model.activation.approximate: Input should be 'tanh' or 'none'"
    )


def test_wrong_types_are_refused() -> None:
    text = problems({"vocab_size": "many", "qkv_bias": "maybe", "norm": 5})
    assert text.splitlines() == [
        "model.vocab_size: Input should be a valid integer, unable to parse string as an integer",
        "model.qkv_bias: Input should be a valid boolean, unable to interpret input",
        "model.norm: Input should be a valid dictionary or instance of ComponentSpec",
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"drop_rate": 1.5}, "model.drop_rate: Input should be less than 1"),
        ({"drop_rate": -0.1}, "model.drop_rate: Input should be greater than or equal to 0"),
        ({"n_heads": 0}, "model.n_heads: Input should be greater than 0"),
        ({"n_layers": -1}, "model.n_layers: Input should be greater than 0"),
        ({"vocab_size": 0}, "model.vocab_size: Input should be greater than 0"),
        ({"context_length": 0}, "model.context_length: Input should be greater than 0"),
    ],
)
def test_out_of_range_values_are_refused(data: dict[str, Any], message: str) -> None:
    assert problems(data) == message


def test_emb_dim_must_be_divisible_by_heads() -> None:
    assert problems({"emb_dim": 100, "n_heads": 12}) == "model: emb_dim (100) must be divisible by n_heads (12)"
    assert problems({"emb_dim": 100, "n_heads": 12}, root="") == "(top level): emb_dim (100) must be divisible by n_heads (12)"


def test_rope_needs_an_even_head_size() -> None:
    assert problems({"emb_dim": 12, "n_heads": 4, "position": "rope"}) == (
        "model: position 'rope' needs an even head size, but emb_dim / n_heads = 12 / 4 = 3"
    )
    assert ModelConfig(emb_dim=16, n_heads=4, position="rope").head_dim == 4  # even: fine


def test_unknown_component_names_valid_ones_and_closest(builtin_only) -> None:
    text = problems({"norm": "layernrom"}, registry=builtin_only)
    assert text == "model.norm: unknown norm 'layernrom' (did you mean 'layernorm'?); valid norm names: layernorm"


def test_registry_in_context_decides_what_exists(builtin_only) -> None:
    assert ModelConfig(norm="rmsnorm").norm.name == "rmsnorm"  # the default registry has the plugin
    text = problems({"norm": "rmsnorm"}, registry=builtin_only)
    assert text.startswith("model.norm: unknown norm 'rmsnorm'")


def test_failed_assignment_leaves_the_config_unchanged() -> None:
    cfg = ModelConfig(emb_dim=64, n_heads=4, n_layers=2)
    with pytest.raises(ValidationError):
        cfg.n_heads = 5
    assert cfg.n_heads == 4 and cfg.head_dim == 16
    with pytest.raises(ValidationError):
        cfg.drop_rate = 2.0
    assert cfg.drop_rate == 0.0
    assert cfg == ModelConfig(emb_dim=64, n_heads=4, n_layers=2)
    cfg.n_heads = 8
    assert cfg.head_dim == 8


# --- presets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("gpt2", (768, 12, 12)),
        ("gpt2-medium", (1024, 24, 16)),
        ("gpt2-large", (1280, 36, 20)),
        ("gpt2-xl", (1600, 48, 25)),
    ],
)
def test_gpt2_presets_have_the_released_shapes(name: str, shape: tuple[int, int, int]) -> None:
    cfg = model_preset(name)
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads) == shape
    assert (cfg.vocab_size, cfg.context_length, cfg.head_dim) == (50257, 1024, 64)


def test_cpu_small_preset_and_overrides() -> None:
    cfg = model_preset("cpu-small")
    assert (cfg.emb_dim, cfg.n_layers, cfg.n_heads, cfg.context_length) == (256, 4, 4, 128)
    assert model_preset("gpt2", n_layers=6, norm="rmsnorm").n_layers == 6
    assert preset_names() == ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "cpu-small"]
    assert list(PRESETS) == preset_names()


def test_preset_values_are_a_copy() -> None:
    values = preset_values("gpt2")
    values["n_layers"] = 1
    assert model_preset("gpt2").n_layers == 12


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        model_preset("gpt3")
    assert str(err.value) == (
        "unknown preset 'gpt3' (did you mean 'gpt2'?); valid preset names: gpt2, gpt2-medium, gpt2-large, gpt2-xl, cpu-small"
    )
    assert isinstance(err.value, GptkitError)


def test_preset_override_is_validated() -> None:
    with pytest.raises(ValidationError):
        model_preset("gpt2", n_heads=7)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"norm": {"name": "rmsnorm", "eps": 1e-4}, "position": "rope", "ffn": "swiglu", "activation": "silu"},
        {"emb_dim": 64, "n_heads": 2, "qkv_bias": False, "weight_tying": False, "drop_rate": 0.25},
        {"norm": {"name": "layernorm", "bias": False}, "attention": {"name": "mha", "use_sdpa": False}},
    ],
)
def test_dumped_config_revalidates_to_an_equal_config(data: dict[str, Any]) -> None:
    cfg = ModelConfig(**data)
    assert ModelConfig.model_validate(cfg.model_dump()) == cfg
    assert ModelConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert ModelConfig.model_validate(json.loads(json.dumps(cfg.model_dump()))) == cfg


def test_different_configs_are_not_equal() -> None:
    assert ModelConfig(norm="rmsnorm") != ModelConfig()
    assert ModelConfig(norm={"name": "rmsnorm", "eps": 1e-4}) != ModelConfig(norm="rmsnorm")


# --- JSON schema ----------------------------------------------------------------------------


def walk(node: Any):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(json.dumps(config_json_schema()))  # survives a JSON round trip


def test_schema_covers_every_field_and_refuses_unknown_keys(schema: dict[str, Any]) -> None:
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(ModelConfig.model_fields)
    assert schema["properties"]["n_heads"]["exclusiveMinimum"] == 0
    assert schema["properties"]["drop_rate"]["exclusiveMaximum"] == 1.0
    assert schema["properties"]["norm"]["default"] == "layernorm"


def test_schema_has_no_dangling_references(schema: dict[str, Any]) -> None:
    defs = schema.get("$defs", {})
    for node in walk(schema):
        if isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs, ref


def test_schema_lists_registered_components_for_each_slot(schema: dict[str, Any]) -> None:
    registry = default_registry()
    for field, kind in MODEL_SLOTS.items():
        choices = schema["properties"][field]["anyOf"]
        bare = [c["const"] for c in choices if "const" in c]
        objects = [c for c in choices if c.get("type") == "object"]
        assert bare == registry.names(kind), field
        assert [o["properties"]["name"]["const"] for o in objects] == registry.names(kind)
        for obj in objects:
            # "name" may be left out: {"eps": 1e-6} alone means the slot's default component.
            assert obj["additionalProperties"] is False and "name" not in obj.get("required", [])
    norm_choices = {c["title"]: c for c in schema["properties"]["norm"]["anyOf"] if "title" in c}
    assert {"layernorm", "rmsnorm"} <= set(norm_choices)
    assert norm_choices["rmsnorm"]["properties"]["eps"]["default"] == 1e-6
    assert norm_choices["layernorm"]["description"] == "LayerNorm (GPT-2)"


def test_schema_accepts_dumped_configs_and_rejects_bad_ones(schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = ModelConfig(norm={"name": "rmsnorm", "eps": 1e-4}, position="rope").model_dump()
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({"norm": "rmsnorm", "n_layers": 2})) == []
    for bad in ({"norm": "batchnorm"}, {"norm": {"name": "rmsnorm", "epz": 1}}, {"n_heads": 0}, {"dropout": 0.1}):
        assert list(validator.iter_errors(bad)), bad
