"""Property tests: bad configs, `--set` strings and any text never end in a traceback.

A config either validates or raises `GptkitError` (usually `ConfigError`) with a
message; the GPT-2 tokenizer round-trips any text.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import RunConfig, build_raw_config, validate_run_config
from gptkit.data.tokenizer import Tokenizer
from gptkit.errors import GptkitError

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY_NAMES = [
    "model", "train", "data", "run", "sampling", "preset", "emb_dim", "n_heads", "n_layers", "vocab_size",
    "context_length", "lr", "min_lr", "norm", "name", "eps", "scheduler", "callbacks", "samplers", "batch_size",
    "max_steps", "dtype", "device", "tokenizer", "path", "val_fraction", "warmup_steps", "attention", "ffn",
]
keys = st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=8))
scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["cpu-small", "gpt2", "rmsnorm", "layernorm", "cosine", "console", "float16", "cuda"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
configs = st.dictionaries(keys, values, max_size=5)


def check_outcome(make) -> None:
    """`make()` gives a RunConfig or raises a GptkitError with a message; nothing else."""
    try:
        result = make()
    except GptkitError as err:
        assert str(err).strip(), f"{type(err).__name__} with an empty message"
        return
    assert isinstance(result, RunConfig)


@SETTINGS
@given(configs)
def test_any_nested_dict_validates_or_raises_config_error(base: dict) -> None:
    check_outcome(lambda: validate_run_config(build_raw_config(base=base)))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["model", "train", "data", "run", "sampling"]), values, max_size=5))
def test_sections_with_any_values_validate_or_raise_config_error(base: dict) -> None:
    check_outcome(lambda: validate_run_config(build_raw_config(base=base)))


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=3))
def test_any_set_string_validates_or_raises_config_error(overrides: list[str]) -> None:
    check_outcome(lambda: validate_run_config(build_raw_config(overrides=overrides)))


dotted_keys = st.lists(keys, min_size=1, max_size=4).map(".".join)
raw_values = st.one_of(values.map(lambda v: json.dumps(v, allow_nan=True)), st.text(max_size=12))


@SETTINGS
@given(st.lists(st.tuples(dotted_keys, raw_values).map("=".join), max_size=4))
def test_structured_set_overrides_validate_or_raise_config_error(overrides: list[str]) -> None:
    check_outcome(lambda: validate_run_config(build_raw_config(overrides=overrides)))


text_no_surrogates = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))


@SETTINGS
@given(text_no_surrogates)
def test_tokenizer_round_trips_any_text(text: str) -> None:
    tok = Tokenizer()
    assert tok.decode(tok.encode(text)) == text


@SETTINGS
@given(st.one_of(text_no_surrogates, text_no_surrogates.map(lambda s: s + "<|endoftext|>" + s)))
def test_ordinary_encode_never_raises_and_keeps_special_text(text: str) -> None:
    tok = Tokenizer()
    ids = tok.encode(text, allow_special=False)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == text
