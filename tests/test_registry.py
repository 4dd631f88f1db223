"""The component registry: register, look up, list, create, and the errors a user sees."""

from __future__ import annotations

import re

import pytest
from conftest import CHECKOUT_COMPONENTS
from pydantic import Field

from gptkit import (
    ComponentParams,
    ComponentSpec,
    NoParams,
    Registry,
    RegistryError,
    default_registry,
)
from gptkit.registry import CORE_KINDS


class ScaleParams(ComponentParams):
    scale: float = Field(1.0, gt=0)


def make_thing(dim: int, scale: float = 1.0) -> tuple[int, float]:
    """A stand-in factory: returns what it was called with."""
    return dim, scale


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    reg.register("norm", "layernorm", make_thing, params=ScaleParams, description="LN")
    reg.register("norm", "rmsnorm", make_thing, params=ScaleParams)
    reg.register("activation", "gelu", lambda: "gelu")
    return reg


def test_register_and_get(registry: Registry) -> None:
    component = registry.get("norm", "layernorm")
    assert (component.kind, component.name, component.factory, component.params) == ("norm", "layernorm", make_thing, ScaleParams)
    assert component.description == "LN"
    assert component.source == "built-in"


def test_description_defaults_to_first_docstring_line(registry: Registry) -> None:
    assert registry.get("norm", "rmsnorm").description == "A stand-in factory: returns what it was called with."
    assert registry.get("activation", "gelu").description == ""
    assert registry.get("activation", "gelu").params is NoParams


def test_names_and_kinds_core_first_then_extra_sorted(registry: Registry) -> None:
    registry.register("zeta", "z", make_thing)
    registry.register("alpha", "a", make_thing)
    registry.register("scheduler", "cosine", make_thing)
    assert registry.names("norm") == ["layernorm", "rmsnorm"]
    assert registry.names("nothing") == []
    assert registry.kinds() == ["norm", "activation", "scheduler", "alpha", "zeta"]
    assert CORE_KINDS.index("norm") < CORE_KINDS.index("activation") < CORE_KINDS.index("scheduler")


def test_list_filters_by_kind_and_glob_pattern(registry: Registry) -> None:
    def names(items: list) -> list[tuple[str, str]]:
        return [(c.kind, c.name) for c in items]

    assert names(registry.list()) == [("norm", "layernorm"), ("norm", "rmsnorm"), ("activation", "gelu")]
    assert names(registry.list("norm")) == [("norm", "layernorm"), ("norm", "rmsnorm")]
    assert names(registry.list(pattern="rms*")) == [("norm", "rmsnorm")]
    assert names(registry.list(pattern="*norm")) == [("norm", "layernorm"), ("norm", "rmsnorm")]
    assert names(registry.list(pattern="?elu")) == [("activation", "gelu")]
    assert names(registry.list("activation", "rms*")) == []
    assert names(registry.list("nothing")) == []


def test_create_from_name_dict_and_spec(registry: Registry) -> None:
    assert registry.create("norm", "layernorm", 8) == (8, 1.0)
    assert registry.create("norm", {"name": "layernorm", "scale": 2.5}, 8) == (8, 2.5)
    assert registry.create("norm", ComponentSpec(name="rmsnorm", scale=3.0), dim=4) == (4, 3.0)
    assert registry.create("activation", "gelu") == "gelu"


def test_create_does_not_mutate_the_spec_dict(registry: Registry) -> None:
    spec = {"name": "layernorm", "scale": 2.0}
    registry.create("norm", spec, 8)
    assert spec == {"name": "layernorm", "scale": 2.0}


def test_unknown_name_lists_valid_names_and_closest_match(registry: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        registry.get("norm", "layernrom")
    assert str(err.value) == "unknown norm 'layernrom' (did you mean 'layernorm'?); valid norm names: layernorm, rmsnorm"


def test_unknown_name_without_close_match_has_no_hint(registry: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        registry.create("norm", "batchnorm", 8)
    assert str(err.value) == "unknown norm 'batchnorm'; valid norm names: layernorm, rmsnorm"


def test_unknown_kind_says_none_registered(registry: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        registry.get("sampler", "top_k")
    assert str(err.value) == "unknown sampler 'top_k'; valid sampler names: none registered"


def test_taken_name_is_refused_naming_both_sources(registry: Registry) -> None:
    with registry.source("plugins/mine.py"):
        with pytest.raises(RegistryError) as err:
            registry.register("norm", "layernorm", make_thing)
    assert str(err.value) == (
        "plugins/mine.py registers norm 'layernorm', but that name is already taken by built-in; "
        "pass override=True to replace it on purpose"
    )
    assert registry.get("norm", "layernorm").factory is make_thing  # untouched


def test_override_replaces_and_records_new_source(registry: Registry) -> None:
    def other(dim: int) -> str:
        return f"other{dim}"

    with registry.source("plugins/mine.py"):
        registry.register("norm", "layernorm", other, override=True)
    component = registry.get("norm", "layernorm")
    assert component.factory is other and component.source == "plugins/mine.py" and component.params is NoParams
    assert registry.create("norm", "layernorm", 3) == "other3"


def test_source_is_restored_after_the_block(registry: Registry) -> None:
    with registry.source("a"):
        registry.register("norm", "x", make_thing)
        with registry.source("b"):
            registry.register("norm", "y", make_thing)
        registry.register("norm", "z", make_thing)
    registry.register("norm", "w", make_thing)
    assert [registry.get("norm", n).source for n in "xyzw"] == ["a", "b", "a", "built-in"]


def test_source_is_restored_after_an_error(registry: Registry) -> None:
    with pytest.raises(RegistryError), registry.source("broken"):
        registry.register("norm", "layernorm", make_thing)
    registry.register("norm", "fresh", make_thing)
    assert registry.get("norm", "fresh").source == "built-in"


def test_decorator_form_registers_and_returns_the_function(registry: Registry) -> None:
    @registry.register("activation", "square", description="x ** 2")
    def square() -> str:
        return "square"

    assert square() == "square"  # still the plain function
    assert registry.get("activation", "square").factory is square
    assert registry.get("activation", "square").description == "x ** 2"
    assert registry.create("activation", "square") == "square"


def test_unknown_param_key_is_refused(registry: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        registry.create("norm", {"name": "layernorm", "scael": 2.0}, 8)
    assert str(err.value) == "norm 'layernorm': scael: Extra inputs are not permitted"


def test_component_without_params_refuses_any_param(registry: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        registry.create("activation", {"name": "gelu", "inplace": True})
    assert str(err.value) == "activation 'gelu': inplace: Extra inputs are not permitted"


def test_param_types_and_ranges_are_checked(registry: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        registry.create("norm", {"name": "layernorm", "scale": "big"}, 8)
    assert str(err.value) == "norm 'layernorm': scale: Input should be a valid number, unable to parse string as a number"
    with pytest.raises(RegistryError) as err:
        registry.create("norm", {"name": "layernorm", "scale": -1, "extra": 1}, 8)
    assert str(err.value) == "norm 'layernorm': scale: Input should be greater than 0; extra: Extra inputs are not permitted"


def test_params_are_frozen_and_validated_by_component() -> None:
    params = ScaleParams(scale=2.0)
    with pytest.raises(Exception):
        params.scale = 3.0  # type: ignore[misc]
    component = Registry()
    component.register("norm", "n", make_thing, params=ScaleParams)
    assert component.get("norm", "n").validate({"scale": "4"}) == ScaleParams(scale=4.0)


def test_default_registry_holds_builtins_and_checkout_plugins() -> None:
    reg = default_registry()
    assert reg is default_registry()  # built once
    expected = CHECKOUT_COMPONENTS
    for (kind, name), source in expected.items():
        assert reg.get(kind, name).source == source, (kind, name)


def test_spec_without_a_name_is_a_registry_error(registry: Registry) -> None:
    with pytest.raises(RegistryError) as err:
        registry.create("norm", {"scale": 2.0}, 8)
    assert str(err.value) == "a component spec needs a 'name' string, got {'scale': 2.0}"
    with pytest.raises(RegistryError, match=re.escape("a component spec needs a 'name' string, got {'name': 5}")):
        registry.create("norm", {"name": 5}, 8)
