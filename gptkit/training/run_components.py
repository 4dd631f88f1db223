"""Which registered components a run was made with, and where each came from.

A run's config.json keeps a `components` map, ``"kind/name"`` -> the registry's source
label (``built-in``, ``plugins/rmsnorm.py``, ``package gptkit-extras (extras)``). When a
plugin is later uninstalled, the error about its missing name can then say which
package registered it when the run was made. Runs made before the map existed have
none; for them the error is the registry's alone.
"""

from __future__ import annotations

from typing import Any

from gptkit.model.config import MODEL_SLOTS
from gptkit.registry import Registry

COMPONENTS_KEY = "components"


def _name(spec: Any) -> str | None:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return spec["name"]
    return None


def used_components(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every component slot a dumped run config fills, in config order."""

    def section(key: str) -> dict[str, Any]:
        value = config.get(key)
        return value if isinstance(value, dict) else {}

    model, data, train, sampling = section("model"), section("data"), section("train"), section("sampling")
    found: list[tuple[str, Any]] = [(kind, model.get(slot)) for slot, kind in MODEL_SLOTS.items()]
    found += [("tokenizer", data.get("tokenizer")), ("prompt_style", data.get("prompt_style")), ("scheduler", train.get("scheduler"))]
    for kind, specs in (("callback", train.get("callbacks")), ("sampler", sampling.get("samplers"))):
        found += [(kind, spec) for spec in specs] if isinstance(specs, list) else []
    return [(kind, name) for kind, spec in found if (name := _name(spec)) is not None]


def component_sources(config: dict[str, Any], registry: Registry) -> dict[str, str]:
    """``"kind/name"`` -> where the registry got it, for every component `config` uses."""
    return {
        f"{kind}/{name}": registry.get(kind, name).source
        for kind, name in used_components(config)
        if name in registry.names(kind)
    }


def missing_components_note(config: dict[str, Any], registry: Registry) -> str:
    """For the components `config` uses that `registry` lacks: who registered them when the run was made.

    "" when nothing is missing, or the run's config.json predates the `components` map.
    """
    sources = config.get(COMPONENTS_KEY)
    if not isinstance(sources, dict):
        return ""
    notes = [
        f"{kind} '{name}' was registered by {sources[key]} when this run was made"
        for kind, name in used_components(config)
        if name not in registry.names(kind) and isinstance(sources.get(key := f"{kind}/{name}"), str)
    ]
    return "; ".join(dict.fromkeys(notes)) + " (is that plugin still installed?)" if notes else ""
