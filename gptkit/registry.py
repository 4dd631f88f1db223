"""Names -> components, by kind.

Every swappable part of gptkit (a norm, an attention, a scheduler, a sampler ...)
is a *component*: a factory function plus a pydantic model of the parameters a
config may give it. Configs hold only names and plain parameters, so they stay
serialisable data; the registry turns them into objects.

Components are registered by plugins (see `gptkit.plugins`); the built-in GPT-2
parts go through the very same hook as a third-party plugin.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from gptkit.errors import RegistryError, problems_line

# The kinds gptkit itself builds from a config. Plugins may add other kinds; these
# are listed first by `main.py components` and documented in `gptkit.hookspecs`.
CORE_KINDS: tuple[str, ...] = (
    "norm",
    "activation",
    "attention",
    "ffn",
    "position",
    "block",
    "head",
    "scheduler",
    "optimizer",
    "sampler",
    "callback",
    "tokenizer",
    "prompt_style",
)


class ComponentParams(BaseModel):
    """Base for a component's own parameters; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(ComponentParams):
    """For components that take nothing from the config."""


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[ComponentParams]
    description: str
    source: str

    def validate(self, values: dict[str, Any]) -> ComponentParams:
        return self.params.model_validate(values)


class Registry:
    """A table of components keyed by (kind, name)."""

    def __init__(self) -> None:
        self._table: dict[str, dict[str, Component]] = {}
        self._source = "built-in"

    @contextmanager
    def source(self, label: str) -> Iterator[None]:
        """Attribute every registration inside the block to `label` (a plugin)."""
        previous, self._source = self._source, label
        try:
            yield
        finally:
            self._source = previous

    def register(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any] | None = None,
        *,
        params: type[ComponentParams] = NoParams,
        description: str = "",
        override: bool = False,
    ) -> Any:
        """Register `factory` as `kind`/`name`; usable as a decorator without `factory`."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            entries = self._table.setdefault(kind, {})
            taken = entries.get(name)
            if taken is not None and not override:
                raise RegistryError(
                    f"{self._source} registers {kind} '{name}', but that name is already "
                    f"taken by {taken.source}; pass override=True to replace it on purpose"
                )
            text = description or first_line(fn.__doc__)
            entries[name] = Component(kind, name, fn, params, text, self._source)
            return fn

        return add if factory is None else add(factory)

    def kinds(self) -> list[str]:
        extra = sorted(k for k in self._table if k not in CORE_KINDS)
        return [k for k in CORE_KINDS if k in self._table] + extra

    def names(self, kind: str) -> list[str]:
        return sorted(self._table.get(kind, {}))

    def get(self, kind: str, name: str) -> Component:
        entries = self._table.get(kind, {})
        if name in entries:
            return entries[name]
        raise RegistryError(unknown_name_message(kind, name, sorted(entries)))

    def list(self, kind: str | None = None, pattern: str = "*") -> list[Component]:
        """Components of `kind` (all kinds when None) whose name matches a glob `pattern`."""
        kinds = [kind] if kind is not None else self.kinds()
        return [
            self._table[k][n]
            for k in kinds
            for n in sorted(self._table.get(k, {}))
            if fnmatch.fnmatchcase(n, pattern)
        ]

    def create(self, kind: str, spec: str | dict[str, Any] | BaseModel, /, *args: Any, **context: Any) -> Any:
        """Build a component from a name or `{"name": ..., **params}` spec.

        `args`/`context` are what the caller knows at build time (dimensions,
        sub-modules); the spec supplies the component's own parameters.
        """
        name, values = split_spec(spec)
        component = self.get(kind, name)
        try:
            params = component.validate(values)
        except ValidationError as err:
            raise RegistryError(f"{kind} '{name}': {problems_line(err)}") from None
        return component.factory(*args, **context, **params.model_dump())


def split_spec(spec: str | dict[str, Any] | BaseModel) -> tuple[str, dict[str, Any]]:
    """`"rmsnorm"` or `{"name": "rmsnorm", "eps": 1e-6}` -> (name, params)."""
    if isinstance(spec, str):
        return spec, {}
    data = spec.model_dump() if isinstance(spec, BaseModel) else dict(spec)
    name = data.pop("name", None)
    if not isinstance(name, str):
        raise RegistryError(f"a component spec needs a 'name' string, got {spec!r}")
    return name, data


def first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    listing = ", ".join(valid) if valid else "none registered"
    return f"unknown {kind} '{name}'{hint}; valid {kind} names: {listing}"
