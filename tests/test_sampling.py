"""Samplers on hand-made logits, checked against hand computations; chains from config; plugins."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import config as run_config
from gptkit import ConfigError, GPTModel, ModelConfig, RegistryError, build_registry
from gptkit.generation.generate import generate
from gptkit.generation.samplers import (
    Greedy,
    MinP,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    apply_samplers,
    build_samplers,
    draw,
    sampler_specs,
)
from gptkit.plugins import default_registry

INF = float("inf")
NO_TOKENS = torch.zeros(1, 0, dtype=torch.long)


def logits_of(*probs: float) -> torch.Tensor:
    """Logits whose softmax is `probs` (which sum to 1), as one row."""
    return torch.tensor([probs], dtype=torch.float64).log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


# --- each sampler ---------------------------------------------------------------------------


def test_greedy_keeps_the_first_maximum_only() -> None:
    out = Greedy()(torch.tensor([[1.0, 3.0, 3.0, 2.0]]), NO_TOKENS)
    assert out.tolist() == [[-INF, 3.0, -INF, -INF]]


def test_temperature_scales_log_probabilities() -> None:
    # probs (1/3, 2/3) at temperature 0.5 become proportional to (1/9, 4/9): (1/5, 4/5).
    out = Temperature(0.5)(logits_of(1 / 3, 2 / 3), NO_TOKENS)
    torch.testing.assert_close(out.softmax(-1), torch.tensor([[0.2, 0.8]], dtype=torch.float64))
    # and at 2: proportional to (sqrt(1/3), sqrt(2/3)).
    out = Temperature(2.0)(logits_of(1 / 3, 2 / 3), NO_TOKENS)
    expected = torch.tensor([[1.0, math.sqrt(2)]], dtype=torch.float64) / (1 + math.sqrt(2))
    torch.testing.assert_close(out.softmax(-1), expected)


def test_top_k_keeps_the_k_largest() -> None:
    assert kept(TopK(2)(torch.tensor([[1.0, 4.0, 2.0, 3.0]]), NO_TOKENS)) == [1, 3]
    assert kept(TopK(10)(torch.tensor([[1.0, 4.0]]), NO_TOKENS)) == [0, 1]  # k beyond the vocabulary


@pytest.mark.parametrize(
    ("p", "expected"),
    [(0.8, [0, 1]), (0.81, [0, 1, 2]), (0.5, [0]), (0.01, [0]), (0.96, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p: float, expected: list[int]) -> None:
    assert kept(TopP(p)(logits_of(0.5, 0.3, 0.15, 0.05), NO_TOKENS)) == expected


def test_top_p_works_on_unsorted_vocabularies_and_float32() -> None:
    out = TopP(0.8)(logits_of(0.05, 0.3, 0.5, 0.15).float(), NO_TOKENS)
    assert kept(out) == [1, 2]
    # What is left is renormalised by the softmax: 0.3 / 0.8 and 0.5 / 0.8.
    torch.testing.assert_close(out.softmax(-1), torch.tensor([[0.0, 0.375, 0.625, 0.0]]))


@pytest.mark.parametrize(("p", "expected"), [(0.2, [0, 1, 2]), (0.7, [0]), (0.0, [0, 1, 2, 3]), (0.5, [0, 1])])
def test_min_p_keeps_tokens_at_least_p_times_the_top_probability(p: float, expected: list[int]) -> None:
    # threshold = p * 0.5: 0.1 keeps 0.15; 0.35 keeps only 0.5; 0 keeps all; 0.25 keeps 0.3.
    assert kept(MinP(p)(logits_of(0.5, 0.3, 0.15, 0.05), NO_TOKENS)) == expected


def test_min_p_of_one_keeps_only_the_most_likely() -> None:
    assert kept(MinP(1.0)(torch.tensor([[0.1, 2.0, -1.0]]), NO_TOKENS)) == [1]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    tokens = torch.tensor([[0, 1, 1], [3, 3, 3]])  # repeats count once
    out = RepetitionPenalty(2.0)(logits, tokens)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 1.5]]
    assert torch.equal(RepetitionPenalty(2.0)(logits[:1], NO_TOKENS), logits[:1])


def test_samplers_compose_in_order() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, 4.0]])
    tokens = torch.tensor([[3]])
    # Penalty 4 takes token 3 from 4.0 to 1.0, then temperature 0.5 doubles, then top-2 keeps 1 and 2|3.
    out = apply_samplers(logits, tokens, [RepetitionPenalty(4.0), Temperature(0.5), TopK(2)])
    assert out.tolist() == [[-INF, 4.0, 2.0, 2.0]]


# --- parameters -------------------------------------------------------------------------------


BAD_PARAMETERS = [
    ("temperature", {"value": 0}, "value: Input should be greater than 0"),
    ("temperature", {"value": -0.5}, "value: Input should be greater than 0"),
    ("top_p", {"p": 0}, "p: Input should be greater than 0"),
    ("top_p", {"p": 1.5}, "p: Input should be less than or equal to 1"),
    ("min_p", {"p": -0.1}, "p: Input should be greater than or equal to 0"),
    ("min_p", {"p": 1.01}, "p: Input should be less than or equal to 1"),
    ("top_k", {"k": 0}, "k: Input should be greater than or equal to 1"),
    ("repetition_penalty", {"penalty": 0}, "penalty: Input should be greater than 0"),
]
CLASSES = {"temperature": Temperature, "top_p": TopP, "min_p": MinP, "top_k": TopK, "repetition_penalty": RepetitionPenalty}


@pytest.mark.parametrize(("name", "params", "problem"), BAD_PARAMETERS)
def test_bad_parameters_name_the_sampler_and_parameter(name: str, params: dict, problem: str) -> None:
    with pytest.raises(RegistryError) as from_registry:
        default_registry().create("sampler", {"name": name, **params})
    assert str(from_registry.value) == f"sampler '{name}': {problem}"
    with pytest.raises(ConfigError) as from_constructor:
        CLASSES[name](*params.values())
    assert str(from_constructor.value) == f"sampler '{name}': {problem}"


def test_bad_parameters_in_a_run_config_name_the_key() -> None:
    # config.py validates the list as a whole, so the path names the field, not the list index.
    with pytest.raises(ConfigError, match=r"sampling\.samplers\.p: Input should be less than or equal to 1"):
        run_config.load_run_config(overrides=['sampling.samplers=[{"name": "temperature", "value": 0.8}, {"name": "top_p", "p": 2}]'])


# --- chains -----------------------------------------------------------------------------------


def test_chain_from_config() -> None:
    cfg = run_config.load_run_config(
        overrides=['sampling.samplers=[{"name": "temperature", "value": 0.5}, {"name": "top_k", "k": 2}]']
    )
    chain = build_samplers(cfg.sampling.samplers)
    assert [type(s) for s in chain] == [Temperature, TopK]
    assert (chain[0].value, chain[1].k) == (0.5, 2)
    assert apply_samplers(torch.tensor([[1.0, 4.0, 2.0]]), NO_TOKENS, chain).tolist() == [[-INF, 8.0, 4.0]]


def test_sampler_specs_from_command_line_options() -> None:
    assert sampler_specs() is None
    assert sampler_specs(temperature=0, top_k=5, repetition_penalty=1.3) == [
        {"name": "repetition_penalty", "penalty": 1.3}, {"name": "top_k", "k": 5}, {"name": "greedy"},
    ]
    assert sampler_specs(temperature=0.7, top_p=0.9, min_p=0.1) == [
        {"name": "temperature", "value": 0.7}, {"name": "top_p", "p": 0.9}, {"name": "min_p", "p": 0.1},
    ]


def test_draws_follow_the_filtered_distribution_and_are_seeded() -> None:
    logits = logits_of(0.5, 0.3, 0.15, 0.05).float().expand(20000, 4)
    tokens = torch.zeros(20000, 0, dtype=torch.long)
    first = draw(logits, tokens, [TopP(0.8)], torch.Generator().manual_seed(7))
    again = draw(logits, tokens, [TopP(0.8)], torch.Generator().manual_seed(7))
    other = draw(logits, tokens, [TopP(0.8)], torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    counts = torch.bincount(first.flatten(), minlength=4).tolist()
    assert counts[2] == counts[3] == 0
    assert abs(counts[0] / 20000 - 0.625) < 0.015  # 0.5 / 0.8; the standard error is 0.0034


def test_draw_after_greedy_takes_the_first_maximum_of_the_filtered_logits() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 1.0, 0.0, 4.0]])
    tokens = torch.tensor([[1], [0]])
    assert draw(logits, tokens, [Greedy()]).tolist() == [[1], [0]]
    # Penalty 2 first: row 0's token 1 falls to 1.5, row 1's token 0 to 2.5.
    assert draw(logits, tokens, [RepetitionPenalty(2.0), Greedy()]).tolist() == [[2], [3]]
    # Greedy inside a chain (not last) goes through the general draw, with the same result.
    assert draw(logits, tokens, [Greedy(), Temperature(0.5)]).tolist() == [[1], [0]]


def test_seeded_generation_is_reproducible() -> None:
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=64, emb_dim=16, n_heads=2, n_layers=1, context_length=16))
    prompt = torch.tensor([[1, 2, 3]])
    chain = [Temperature(1.5), TopK(20)]
    runs = [generate(model, prompt, 20, chain, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


# --- plugins ----------------------------------------------------------------------------------

BAN_PLUGIN = '''
"""A sampler that never picks one token."""
from __future__ import annotations

import torch
from pydantic import Field

from gptkit import ComponentParams, hookimpl


class BanParams(ComponentParams):
    token: int = Field(ge=0)


class Ban:
    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, torch.tensor([self.token]), float("-inf"))


@hookimpl
def gptkit_register_components(registry):
    registry.register("sampler", "ban", Ban, params=BanParams, description="Never pick `token`")
'''


def test_a_plugin_adds_a_sampler_by_name(tmp_path: Path) -> None:
    (tmp_path / "ban.py").write_text(BAN_PLUGIN)
    registry = build_registry(plugin_dirs=[tmp_path], entry_points=False)
    assert {"ban", "greedy", "top_p"} <= set(registry.names("sampler"))
    assert registry.get("sampler", "ban").source == f"{tmp_path.name}/ban.py"
    logits = torch.tensor([[1.0, 5.0, 3.0]])
    chain = build_samplers([{"name": "ban", "token": 1}, "greedy"], registry)
    assert apply_samplers(logits, NO_TOKENS, chain).tolist() == [[-INF, -INF, 3.0]]
    # And a run config names it like any built-in.
    cfg = run_config.SamplingConfig.model_validate(
        {"samplers": [{"name": "ban", "token": 1}]}, context={"registry": registry}
    )
    assert cfg.samplers[0].name == "ban" and cfg.samplers[0].params == {"token": 1}
    with pytest.raises(RegistryError, match=r"sampler 'ban': token: Input should be greater than or equal to 0"):
        registry.create("sampler", {"name": "ban", "token": -1})


@pytest.mark.parametrize("value", [1e-40, 1e-300, 5e-324])
def test_a_tiny_temperature_draws_the_top_token_not_one_past_the_vocabulary(value: float) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 97) * 30
    tokens = torch.zeros(3, 1, dtype=torch.long)
    drawn = draw(logits, tokens, [Temperature(value)], generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, logits.argmax(dim=-1, keepdim=True))
