"""bench/generate.py --quick: the decode matrix runs on a tiny model and writes what its readers expect.

The weight bytes a decode step reads are checked against a count by hand from
GPT-2's shapes, every ratio against the tokens/s it divides, and the float32
greedy tokens of gptkit and Hugging Face against each other (same weights).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
import weakref
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO_ROOT

pytest.importorskip("transformers")


def load_bench_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_generate", REPO_ROOT / "bench" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def step_bytes_by_hand(d: int, layers: int, vocab: int, weight: int, other: int) -> int:
    """A GPT-2 step's bytes: `weight` bytes per matrix entry, `other` per bias, norm value and scale.

    Per block: qkv (d, 3d), out (d, d), fc1 (d, 4d), fc2 (4d, d): 12 d^2 entries, 9d biases, two
    norms of 2d; the final norm 2d; the head (vocab, d) is the tied token table. Quantized, each
    matrix also has one scale per output (9d per block, vocab for the head).
    """
    matrices = layers * 12 * d * d + vocab * d
    others = layers * (9 * d + 4 * d) + 2 * d
    scales = layers * 9 * d + vocab if weight == 1 else 0
    return matrices * weight + (others + scales) * other


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "matrix.json"
    load_bench_generate().main(["--quick", "--threads", "1", "--out", str(out)])
    return json.loads(out.read_text())


def test_quick_matrix_writes_every_variant_and_batch(result: dict) -> None:
    assert set(result) >= {"settings", "machine", "targets", "bandwidth_gb_s", "bandwidth_probes_gb_s", "runs", "ratios"}
    assert result["settings"]["new_tokens"] == 4 and result["settings"]["threads"] == 1
    assert result["targets"] == {"bfloat16 vs float32": 1.8, "int8 vs float32": 3.0, "batch 8 vs batch 1": 5.0}
    names = ["gptkit float32", "gptkit float32 + int8", "gptkit bfloat16", "gptkit bfloat16 + int8", "hf float32", "hf bfloat16"]
    assert [(r["batch"], r["name"]) for r in result["runs"]] == [(b, n) for b in (1, 8) for n in names]
    assert {r["group"] for r in result["runs"]} == {0}  # a tiny preset: every model held and timed together
    assert len(result["bandwidth_probes_gb_s"]) == 2 and all(b > 0 for b in result["bandwidth_probes_gb_s"])
    for row in result["runs"]:
        assert len(row["runs_s"]) == 1 and row["median_s"] == row["runs_s"][0] > 0
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * 4 / row["median_s"])
        assert row["bandwidth_share"] == pytest.approx(row["weight_bytes_per_step"] * 4 / row["median_s"] / (result["bandwidth_gb_s"] * 1e9))
        assert len(row["tokens"]) == row["batch"] and all(len(t) == 4 for t in row["tokens"])


def test_step_bytes_match_a_count_by_hand(result: dict) -> None:
    d, layers, vocab = 64, 2, 512
    expected = {
        "gptkit float32": step_bytes_by_hand(d, layers, vocab, 4, 4),
        "hf float32": step_bytes_by_hand(d, layers, vocab, 4, 4),
        "gptkit bfloat16": step_bytes_by_hand(d, layers, vocab, 2, 2),
        "hf bfloat16": step_bytes_by_hand(d, layers, vocab, 2, 2),
        "gptkit float32 + int8": step_bytes_by_hand(d, layers, vocab, 1, 4),
        "gptkit bfloat16 + int8": step_bytes_by_hand(d, layers, vocab, 1, 2),
    }
    assert expected["gptkit float32"] == 531456  # 132864 parameters without the position table, 4 bytes each
    for row in result["runs"]:
        assert row["weight_bytes_per_step"] == expected[row["name"]], row["name"]


def test_ratios_divide_the_rows_they_name_and_float32_tokens_agree(result: dict) -> None:
    rate = {(r["batch"], r["name"]): r["tokens_per_s"] for r in result["runs"]}
    for ratio in result["ratios"]:
        batch, name = ratio["batch"], ratio["name"]
        assert ratio["vs_gptkit_float32"] == pytest.approx(rate[batch, name] / rate[batch, "gptkit float32"])
        if "+ int8" in name:
            assert ratio["vs_hf_float32"] == pytest.approx(rate[batch, name] / rate[batch, "hf float32"])
            assert ratio["vs_hf_bfloat16"] == pytest.approx(rate[batch, name] / rate[batch, "hf bfloat16"])
        else:
            dtype = name.split()[1]
            assert {k for k in ratio if k.startswith("vs_hf")} == {f"vs_hf_{dtype}"}
        if batch == 8:
            assert ratio["vs_batch_1"] == pytest.approx(rate[8, name] / rate[1, name])
        else:
            assert "vs_batch_1" not in ratio
    rows = {(r["batch"], r["name"]): r for r in result["runs"]}
    for batch in (1, 8):
        # The same float32 weights through both libraries: the same greedy tokens.
        assert rows[batch, "hf float32"]["tokens"] == rows[batch, "gptkit float32"]["tokens"]
        assert rows[batch, "hf float32"]["tokens_equal_to_gptkit_float32"] == batch * 4


def test_two_at_a_time_makes_the_same_weights_afresh_for_each_pair(
    result: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_bench_generate()
    earlier: list[weakref.ref] = []
    build_pair = bench.build_pair

    def build_after_the_last_pair_is_gone(*args: object) -> dict:
        gc.collect()
        assert all(ref() is None for ref in earlier), "a previous pair's model is still alive"
        models = build_pair(*args)
        earlier.extend(weakref.ref(m) for m in models.values())
        return models

    monkeypatch.setattr(bench, "build_pair", build_after_the_last_pair_is_gone)
    out = tmp_path / "pairs.json"
    bench.main(["--quick", "--hold-two", "--threads", "1", "--batch", "1", "8", "--out", str(out)])
    assert len(earlier) == 8
    pairs = json.loads(out.read_text())
    pairs["runs"] = [r for r in pairs["runs"] if r["batch"] == 1]
    pairs["ratios"] = [r for r in pairs["ratios"] if r["batch"] == 1]
    names = [r["name"] for r in pairs["runs"]]
    assert names == ["gptkit float32", "hf float32", "gptkit float32 + int8", "hf float32", "gptkit bfloat16", "hf bfloat16",
                     "gptkit bfloat16 + int8", "hf bfloat16"]
    assert [r["group"] for r in pairs["runs"]] == [0, 0, 1, 1, 2, 2, 3, 3]
    all_at_once = {r["name"]: r for r in result["runs"] if r["batch"] == 1}
    for row in pairs["runs"]:
        # Fresh weights from the same seed: the tokens of the run that held every model at once.
        assert row["tokens"] == all_at_once[row["name"]]["tokens"], row["name"]
        assert row["weight_bytes_per_step"] == all_at_once[row["name"]]["weight_bytes_per_step"]
    rate = [r["tokens_per_s"] for r in pairs["runs"]]
    ratios = pairs["ratios"]
    # Against Hugging Face: the twin timed in the same pair, not the first row of that name.
    assert ratios[2]["vs_hf_float32"] == pytest.approx(rate[2] / rate[3])
    assert ratios[6]["vs_hf_bfloat16"] == pytest.approx(rate[6] / rate[7])
    assert ratios[4]["vs_gptkit_float32"] == pytest.approx(rate[4] / rate[0])


def test_large_presets_are_timed_two_models_at_a_time() -> None:
    bench = sys.modules.get("bench_generate") or load_bench_generate()
    v = bench.Variant
    variants = [v("gptkit", "float32"), v("gptkit", "float32", "int8"), v("gptkit", "bfloat16"), v("hf", "float32"), v("hf", "bfloat16")]
    assert bench.matrix_groups(variants, hold_all=True) == [variants]
    assert bench.matrix_groups(variants, hold_all=False) == [
        [v("gptkit", "float32"), v("hf", "float32")],
        [v("gptkit", "float32", "int8"), v("hf", "float32")],
        [v("gptkit", "bfloat16"), v("hf", "bfloat16")],
    ]
    assert bench.HOLD_ALL_BYTES < 1_557_611_200 * 4  # gpt2-xl's parameters in float32
    assert bench.HOLD_ALL_BYTES > 124_439_808 * 4  # gpt2's


def test_default_invocation_still_means_the_gpt2_float32_benchmark() -> None:
    bench = sys.modules.get("bench_generate") or load_bench_generate()
    args = bench.parse_args([])
    assert not args.matrix and not args.quick and args.repeats == 5 and args.new_tokens == 128
    assert bench.RESULTS.name == "generate.json" and bench.MATRIX_RESULTS.name == "generate_matrix.json"
