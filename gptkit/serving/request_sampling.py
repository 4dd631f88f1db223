"""The samplers a request asks for: its fields over the run's own chain, built through the registry.

A request's sampler fields (`gptkit.serving.openai_schema.SAMPLER_FIELDS`) left out
take the values of the chain the server starts from, `DefaultChain` (the run's
own); `resolve_sampling` builds the chain a request is served with, and
`chain_fields` says which field values a built chain amounts to, for the page
and the replies that echo them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gptkit.errors import GptkitError
from gptkit.generation.samplers import (
    Greedy,
    MinP,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    build_samplers,
    sampler_specs,
)
from gptkit.registry import split_spec
from gptkit.serving.openai_schema import (
    NEUTRAL_SAMPLING,
    ApiError,
    GenerationFields,
)

MIN_TEMPERATURE = 1e-3  # lower temperatures are served as greedy decoding


def spec_name(spec: Any) -> str:
    """How a sampler spec reads in a reply: `top_k(50)`."""
    name, params = split_spec(spec)
    return name + "".join(f"({v:g})" if isinstance(v, int | float) else f"({v})" for v in params.values())


# The samplers a request's fields can express, in the order `sampler_specs` builds them.
_FIELD_ORDER: tuple[tuple[type, str | None, str | None], ...] = (
    (RepetitionPenalty, "repetition_penalty", "penalty"),
    (Temperature, "temperature", "value"),
    (TopK, "top_k", "k"),
    (TopP, "top_p", "p"),
    (MinP, "min_p", "p"),
    (Greedy, None, None),
)


def chain_fields(samplers: Sequence[Any]) -> dict[str, float] | None:
    """The request fields a built chain amounts to, or None if they cannot express it.

    They can when each sampler is one of the built-ins above, at most once, in that
    order (greedy last): then rebuilding the chain from the fields gives the same draws.
    """
    fields = dict(NEUTRAL_SAMPLING)
    last = -1
    for sampler in samplers:
        rank = next((i for i, (cls, _, _) in enumerate(_FIELD_ORDER) if type(sampler) is cls), None)
        if rank is None or rank <= last:
            return None
        last = rank
        _, name, attribute = _FIELD_ORDER[rank]
        if name is None or attribute is None:  # greedy: what temperature 0 means
            fields["temperature"] = 0.0
        else:
            fields[name] = getattr(sampler, attribute)
    return fields


@dataclass(frozen=True)
class DefaultChain:
    """The chain a request with no sampler fields is served with, and its field values.

    `specs` is the run's own chain as its config.json stores it; `fields` what those
    samplers amount to in the request's fields (None when they cannot say it: a
    plugin's sampler, or an order of its own). The default, `DefaultChain()`, is
    OpenAI's: temperature 1 and no filter, a plain draw from the model.
    """

    specs: tuple[Any, ...] = ()
    fields: dict[str, float] | None = field(default_factory=lambda: dict(NEUTRAL_SAMPLING))

    @classmethod
    def of(cls, specs: Sequence[Any] | None) -> DefaultChain:
        """From a run's `sampling.samplers` (None: OpenAI's defaults); a bad spec raises GptkitError."""
        if specs is None:
            return cls()
        # As plain {"name": ..., **params} dicts: /api/info sends them as JSON.
        plain = tuple({"name": name, **params} for name, params in map(split_spec, specs))
        return cls(plain, chain_fields(build_samplers(plain)))


@dataclass(frozen=True)
class Sampling:
    """A request's samplers, how they read in a reply, and the field values they amount to."""

    samplers: list[Any]
    names: list[str]
    fields: dict[str, float] | None  # None: the run's chain as it stands, which the fields cannot express


def resolve_sampling(request: GenerationFields, default: DefaultChain) -> Sampling:
    """The request's samplers, built through the registry.

    With no sampler field given, the default chain as it stands (the run's own,
    repetition penalty included). With some, the chain is rebuilt from the fields,
    each one left out taking its value in the default chain (or, when the fields
    cannot express that chain, OpenAI's: off).
    """
    given = request.sampler_fields()
    if not given:
        return Sampling(build_samplers(default.specs), [spec_name(s) for s in default.specs] or ["multinomial"], default.fields)
    values = {**(default.fields or NEUTRAL_SAMPLING), **given}
    temperature = float(values["temperature"])
    # Below MIN_TEMPERATURE the draw is greedy in all but name, and logits / temperature would overflow.
    specs = sampler_specs(
        temperature=0.0 if temperature < MIN_TEMPERATURE else temperature,
        top_k=int(values["top_k"]) or None,
        top_p=values["top_p"] if values["top_p"] < 1 else None,
        min_p=values["min_p"] or None,
        repetition_penalty=values["repetition_penalty"] if values["repetition_penalty"] != 1 else None,
    ) or []
    # Temperature 1 with no filter is a plain draw from the model's distribution: no sampler needed.
    specs = [s for s in specs if s != {"name": "temperature", "value": 1.0}]
    try:
        samplers = build_samplers(specs)
    except GptkitError as err:  # bounds the request model does not know (a plugin's, say)
        raise ApiError(400, str(err)) from None
    return Sampling(samplers, [spec_name(s) for s in specs] or ["multinomial"], values)
