"""Samplers: how the next token is picked from the model's logits.

A sampler is any callable ``sampler(logits, tokens) -> logits``: `logits` of
shape (batch, vocab) for the next position and `tokens` of shape (batch, seq),
everything each row holds so far (prompt and generated), which a repetition
penalty needs and the others ignore. A chain applies samplers in order and
draws from the softmax of the result.

Filters mask with -inf rather than renormalising probabilities, so they compose
in any order and greedy decoding is a special case: one finite logit is a
certain draw. Each sampler's parameters are a pydantic model with bounds, used
both by the registry (config files, command line) and by the constructors, so
a bad value reads the same wherever it came from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from pydantic import Field, ValidationError

from gptkit.errors import ConfigError, problems_line
from gptkit.hookspecs import hookimpl
from gptkit.plugins import default_registry
from gptkit.registry import ComponentParams, Registry

if TYPE_CHECKING:
    from gptkit.registry import Registry

Sampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NEG_INF = float("-inf")

# top_p treats a cumulative mass this close to p as reaching it, so that a
# hand-written 0.5 + 0.3 meets p = 0.8 whichever way float32 rounds the sum.
TOP_P_ROUNDING = 1e-6


# --- parameters --------------------------------------------------------------


class TemperatureParams(ComponentParams):
    value: float = Field(1.0, gt=0, description="Divide logits by this; 0 is spelt 'greedy'.")


class TopKParams(ComponentParams):
    k: int = Field(50, ge=1, description="Keep this many most likely tokens.")


class TopPParams(ComponentParams):
    p: float = Field(0.9, gt=0, le=1, description="Keep the fewest most likely tokens whose probabilities sum to p.")


class MinPParams(ComponentParams):
    p: float = Field(0.05, ge=0, le=1, description="Keep tokens at least this fraction as likely as the most likely one.")


class RepetitionPenaltyParams(ComponentParams):
    penalty: float = Field(1.1, gt=0, description="Above 1 discourages tokens already seen; 1 changes nothing.")


P = TypeVar("P", bound=ComponentParams)


def validated(name: str, params: type[P], **values: Any) -> P:
    """`params(**values)`, or a ConfigError naming the sampler and each bad parameter."""
    try:
        return params(**values)
    except ValidationError as err:
        raise ConfigError(f"sampler '{name}': {problems_line(err)}") from None


# --- samplers ----------------------------------------------------------------


class Greedy:
    """Keep only the most likely token."""

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        # argmax returns the first maximum, so ties are broken the same way every time.
        best = logits.argmax(dim=-1, keepdim=True)
        return torch.full_like(logits, NEG_INF).scatter(-1, best, logits.gather(-1, best))


class Temperature:
    """Divide logits by `value`: below 1 sharpens the distribution, above 1 flattens it."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = validated("temperature", TemperatureParams, value=value).value

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.value < 1e-3:
            # Small enough for the quotient to overflow to inf, whose softmax is NaN and whose draw
            # lands past the vocabulary. Softmax does not change under a shift, so shift the top
            # logit to 0 first and keep it there (a value below float32's range divides as 0): the
            # rest go to -inf or far below, which is the greedy limit this value means.
            shifted = logits - logits.amax(dim=-1, keepdim=True)
            return torch.where(shifted == 0, shifted, shifted / self.value)
        return logits / self.value


class TopK:
    """Keep the `k` most likely tokens (and any tied with the k-th)."""

    def __init__(self, k: int = 50) -> None:
        self.k = validated("top_k", TopKParams, k=k).k

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, NEG_INF)


class TopP:
    """Nucleus sampling: keep the fewest most likely tokens whose probabilities sum to at least `p`."""

    def __init__(self, p: float = 0.9) -> None:
        self.p = validated("top_p", TopPParams, p=p).p

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.p >= 1:
            return logits
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop = before >= self.p - TOP_P_ROUNDING
        drop[..., 0] = False  # the most likely token always stays, however small p is
        return logits.masked_fill(drop.scatter(-1, order, drop), NEG_INF)


class MinP:
    """Keep tokens whose probability is at least `p` times the most likely token's."""

    def __init__(self, p: float = 0.05) -> None:
        self.p = validated("min_p", MinPParams, p=p).p

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * self.p
        return logits.masked_fill(probs < threshold, NEG_INF)


class RepetitionPenalty:
    """CTRL's penalty (Keskar et al., 2019) on every token already in the row.

    Dividing a positive logit and multiplying a negative one both move it towards
    "less likely"; dividing a negative logit would make it *more* likely.
    """

    def __init__(self, penalty: float = 1.1) -> None:
        self.penalty = validated("repetition_penalty", RepetitionPenaltyParams, penalty=penalty).penalty

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] == 0:
            return logits
        seen = logits.gather(-1, tokens)
        penalised = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        # A token seen twice is penalised once: its duplicates all write the same value.
        return logits.scatter(-1, tokens, penalised)


# --- chains ------------------------------------------------------------------


def apply_samplers(logits: torch.Tensor, tokens: torch.Tensor, samplers: Sequence[Sampler]) -> torch.Tensor:
    for sampler in samplers:
        logits = sampler(logits, tokens)
    return logits


def draw(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    samplers: Sequence[Sampler],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row, shape (batch, 1), from the softmax of the filtered logits."""
    if samplers and isinstance(samplers[-1], Greedy):
        # What Greedy leaves has one token per row, which the draw below would pick: skip the
        # softmax and the cumulative sum (0.25 ms of a 30 ms GPT-2 decode step here).
        return apply_samplers(logits, tokens, samplers[:-1]).argmax(dim=-1, keepdim=True)
    # float32 at least: bf16 softmax over 50k entries loses the tail's probabilities.
    probs = torch.softmax(apply_samplers(logits.float(), tokens, samplers), dim=-1)
    # Inverse transform sampling: one uniform number per row, looked up in the cumulative
    # distribution. (torch.multinomial draws one exponential per vocabulary entry: a
    # millisecond per token for GPT-2, a few percent of a decode step.)
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=total.device) * total
    # Strictly below the total, so the first cdf entry above u is a token of non-zero probability.
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)


def sampler_specs(
    *,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
) -> list[dict[str, Any]] | None:
    """A sampler chain from command-line style options; None when none is given.

    The order is the usual one (as in Hugging Face): penalise repeats, then
    temperature, then the filters. Temperature 0 means greedy, placed last so the
    filters before it cannot change which token wins.
    """
    specs: list[dict[str, Any]] = []
    if repetition_penalty is not None:
        specs.append({"name": "repetition_penalty", "penalty": repetition_penalty})
    if temperature is not None and temperature != 0:
        specs.append({"name": "temperature", "value": temperature})
    if top_k is not None:
        specs.append({"name": "top_k", "k": top_k})
    if top_p is not None:
        specs.append({"name": "top_p", "p": top_p})
    if min_p is not None:
        specs.append({"name": "min_p", "p": min_p})
    if temperature == 0:
        specs.append({"name": "greedy"})
    return specs or None


def build_samplers(specs: Sequence[Any], registry: Registry | None = None) -> list[Sampler]:
    """Samplers from `{"name": ..., **params}` specs (or names) through the registry."""
    registry = registry if registry is not None else default_registry()
    return [registry.create("sampler", spec) for spec in specs]


# --- registration: `sampling.samplers = ["top_k", ...]`; called with their parameters only


@hookimpl
def gptkit_register_components(registry: Registry) -> None:
    registry.register("sampler", "greedy", Greedy, description="Always the most likely token")
    registry.register("sampler", "temperature", Temperature, params=TemperatureParams, description="Scale logits by 1/temperature")
    registry.register("sampler", "top_k", TopK, params=TopKParams, description="Keep the k most likely tokens")
    registry.register("sampler", "top_p", TopP, params=TopPParams, description="Nucleus: keep the most likely tokens up to probability mass p")
    registry.register("sampler", "min_p", MinP, params=MinPParams, description="Keep tokens at least p times as likely as the top one")
    registry.register(
        "sampler", "repetition_penalty", RepetitionPenalty, params=RepetitionPenaltyParams,
        description="CTRL penalty on tokens already seen: positive logits / penalty, negative * penalty",
    )
