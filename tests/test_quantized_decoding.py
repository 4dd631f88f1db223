"""bfloat16 and int8 weights for decoding: the int8 products by hand, the KV cache, held-out perplexity, the flags."""

from __future__ import annotations

import copy
import json
import platform
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_cli_generate import MODEL, greedy_text, random_model, run_main, write_run

from gptkit import GPTModel, ModelConfig, accelerate
from gptkit.data.tokenizer import Tokenizer
from gptkit.errors import GptkitError
from gptkit.evaluation.perplexity import sliding_window_loss
from gptkit.generation.generate import generate
from gptkit.generation.loading import prepare_for_use
from gptkit.generation.samplers import Greedy
from gptkit.kernels import Int8Linear, flat_decoder, int8_linear, quantize_weights
from gptkit.kernels import gemv, native

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def hand_quantized(weight: torch.Tensor) -> torch.Tensor:
    """Each row rounded to 255 levels of its own scale, largest magnitude / 127, back in float32 (a zero row stays zero)."""
    scale = weight.abs().amax(dim=1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, 1.0)
    return torch.round(weight / scale).clamp(-127, 127) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("in_features", [48, 7], ids=["kernel-width", "odd-width"])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_int8_linear_equals_dequantize_then_matmul(dtype: torch.dtype, in_features: int, rows: int) -> None:
    generator = torch.Generator().manual_seed(in_features + rows)
    plain = torch.nn.Linear(in_features, 97)
    with torch.no_grad():
        plain.weight.normal_(0, 0.5, generator=generator)
        plain.weight[3] = 0  # a row of zeros must not divide by zero
    quantized = Int8Linear.from_linear(plain).to(dtype)
    assert quantized.int8_weight.dtype == torch.int8 and quantized.int8_weight.abs().max() == 127
    expected_weight = hand_quantized(plain.weight.detach())
    dequantized = quantized.int8_weight.float() * quantized.scales.float()[:, None]
    # Each weight sits within half a step of the original, and the scale is rounded to the layer's
    # dtype: bfloat16's 8 bits move every dequantized weight by up to 2^-9 of itself more.
    scale_rounding = 1e-6 if dtype == torch.float32 else 2**-8
    torch.testing.assert_close(dequantized, expected_weight, rtol=scale_rounding, atol=0)
    error = (dequantized - plain.weight.detach()).abs()
    assert (error <= quantized.scales.float()[:, None] * 0.5 * (1 + 1e-6) + plain.weight.detach().abs() * scale_rounding).all()
    x = torch.randn(2, rows, in_features, generator=generator).to(dtype)
    with torch.inference_mode():
        got = quantized(x)
    expected = F.linear(x.double(), dequantized.double(), plain.bias.double())
    assert got.dtype == dtype and got.shape == (2, rows, 97)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=(1e-5 if dtype == torch.float32 else 2e-2) * scale)


needs_gemv = pytest.mark.skipif(not gemv.available(), reason="no C compiler here to build gptkit's int8 kernel")


@needs_gemv
@pytest.mark.parametrize(("m", "k", "n"), [(1, 768, 2304), (2, 7, 5), (3, 48, 97), (8, 770, 13), (5, 16, 4), (1, 3072, 6)])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_int8_gemv_equals_the_dequantized_product_in_float64(m: int, k: int, n: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(1000 * m + k + n)
    x = torch.randn(m, k, generator=generator)
    int8 = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8)
    scales = torch.rand(n, generator=generator) * 0.01 + 1e-4
    bias = torch.randn(n, generator=generator) if with_bias else None
    got = gemv.int8_gemv(x, int8, scales, bias)
    weight = int8.double() * scales.double()[:, None]  # exact: both factors are float32 values
    bias64 = bias.double() if bias is not None else torch.zeros(n, dtype=torch.float64)
    expected = x.double() @ weight.T + bias64
    # A float32 sum of k products, scaled, plus a bias: k + 3 roundings at most, each of at most 2^-24 of the
    # running magnitude, so every result lies within (k + 3) 2^-24 of the sum of its terms' magnitudes.
    bound = (k + 3) * 2**-24 * (x.double().abs() @ weight.abs().T + bias64.abs())
    assert got.dtype == torch.float32 and got.shape == (m, n)
    assert ((got.double() - expected).abs() <= bound).all(), ((got.double() - expected).abs() / bound).max()
    assert not torch.equal(got, gemv.int8_gemv(x, int8, scales.flip(0), bias))  # the scales reach each output


@needs_gemv
@pytest.mark.parametrize(("m", "k", "n"), [(1, 768, 2304), (2, 7, 5), (5, 48, 97), (8, 770, 13), (1, 3072, 6), (16, 33, 9)])
@pytest.mark.parametrize("rows_dtype", [torch.float32, torch.bfloat16], ids=["fp32-rows", "bf16-rows"])
def test_float_gemv_equals_the_float64_product_then_one_rounding(m: int, k: int, n: int, rows_dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(7 * m + k + n)
    x = torch.randn(m, k, generator=generator).to(rows_dtype)
    weight = torch.randn(n, k, generator=generator).bfloat16()
    bias = torch.randn(n, generator=generator).to(rows_dtype)
    got = gemv.float_gemv(x, weight, bias)
    expected = x.double() @ weight.double().T + bias.double()  # exact inputs: bfloat16 and float32 values
    bound = (k + 3) * 2**-24 * (x.double().abs() @ weight.double().abs().T + bias.double().abs())
    if rows_dtype == torch.bfloat16:  # the float32 sum rounded once to bfloat16's 8 significant bits: 2^-8 of it
        bound = bound + 2**-8 * (expected.abs() + bound)
    assert got.dtype == rows_dtype and got.shape == (m, n)
    assert ((got.double() - expected).abs() <= bound).all(), ((got.double() - expected).abs() / bound).max()
    assert not torch.equal(got, gemv.float_gemv(x, weight.flip(0), bias))


@needs_gemv
@pytest.mark.parametrize(
    ("weight_dtype", "rows_dtype"),
    [(torch.int8, torch.float32), (torch.int8, torch.bfloat16), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float32, torch.float32)],
    ids=["int8-fp32", "int8-bf16", "bf16-bf16", "bf16-fp32", "fp32-fp32"],
)
@pytest.mark.parametrize("k", [768, 3072, 100, 17])
def test_a_row_gets_the_same_bits_alone_and_in_a_batch_of_any_size(weight_dtype: torch.dtype, rows_dtype: torch.dtype, k: int) -> None:
    # Continuous batching promises each sequence its tokens alone: every row of a product summed in one order,
    # whichever tile of rows it falls in (1, 2, or 4 + 2 + 1 of them beside 3 weight rows, and the leftovers).
    generator = torch.Generator().manual_seed(k)
    n = 40
    x = torch.randn(gemv.MAX_ROWS, k, generator=generator).to(rows_dtype)
    bias = torch.randn(n, generator=generator)
    if weight_dtype == torch.int8:
        weight = torch.randint(-127, 128, (n, k), generator=generator, dtype=torch.int8)
        scales = torch.rand(n, generator=generator) + 0.5
        product = lambda rows: gemv.int8_gemv(rows, weight, scales, bias)  # noqa: E731
    else:
        weight = torch.randn(n, k, generator=generator).to(weight_dtype)
        product = lambda rows: gemv.float_gemv(rows, weight, bias)  # noqa: E731
    alone = torch.cat([product(x[r : r + 1]) for r in range(len(x))])
    for m in range(2, len(x) + 1):
        together = product(x[:m])
        assert torch.equal(together, alone[:m]), (m, (together - alone[:m]).abs().max())


@needs_gemv
@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_a_large_weight_split_between_threads_gives_the_single_thread_result(kind: str) -> None:
    generator = torch.Generator().manual_seed(11)
    n = 3 * 401 + 2  # neither half a whole number of 3-row groups, and a tail of 2 rows
    x = torch.randn(3, 512, generator=generator)
    scales = torch.rand(n, generator=generator) + 0.5
    if kind == "int8":
        weight = torch.randint(-127, 128, (n, 512), generator=generator, dtype=torch.int8)
        product = lambda: gemv.int8_gemv(x, weight, scales)  # noqa: E731
    else:
        weight = torch.randn(n, 512, generator=generator).bfloat16()
        product = lambda: gemv.float_gemv(x, weight)  # noqa: E731
    assert weight.numel() * weight.element_size() >= gemv.PARALLEL_BYTES
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = product()
        torch.set_num_threads(2)
        split = product()
    finally:
        torch.set_num_threads(before)
    assert torch.equal(split, alone)  # each output is one thread's sum, in the same order


@needs_gemv
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_a_few_rows_without_gradients_take_the_streaming_kernel_in_linear(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    from gptkit.kernels import onednn_linear

    monkeypatch.setattr(onednn_linear, "PREFER_ONEDNN", True)  # float32 takes it where MKL is not preferred
    most = onednn_linear.gemv_rows(dtype)
    expected = onednn_linear.BF16_GEMV_ROWS[onednn_linear.bf16_gemv_kind()] if dtype == torch.bfloat16 else onednn_linear.GEMV_ROWS[dtype]
    assert most == expected
    weight = torch.randn(40, 64).to(dtype)
    calls: list[int] = []
    kernel = gemv.float_gemv
    monkeypatch.setattr(gemv, "float_gemv", lambda rows, *rest: calls.append(rows.shape[0]) or kernel(rows, *rest))
    with torch.no_grad():
        x = torch.randn(most + 1, 64).to(dtype)
        for rows in (1, most, most + 1):  # past the limit: the library's matmul
            torch.testing.assert_close(onednn_linear.linear(x[:rows], weight), F.linear(x[:rows], weight), rtol=2e-2, atol=2e-2)
    onednn_linear.linear(x[:1], weight.requires_grad_())  # a gradient to take: autograd's path
    assert calls == [1, most]
    monkeypatch.setattr(onednn_linear, "PREFER_ONEDNN", False)  # an Intel CPU: MKL takes float32's many rows,
    with torch.no_grad():  # the kernel still its few
        onednn_linear.linear(x[:1], weight)
        onednn_linear.linear(x, weight)
    assert calls == [1, most, 1]


@needs_gemv
def test_bf16_row_limit_follows_how_the_cpu_multiplies_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptkit.kernels import onednn_linear

    cases = [
        (True, {"avx512_bf16"}, 16, "pairs"), (True, {"avx512_bf16", "amx_bf16"}, 16, "pairs+amx"),
        (False, {"amx_bf16"}, 16, "widened"), (False, {"avx2"}, 8, "widened-avx2"),
    ]
    assert onednn_linear.BF16_GEMV_ROWS["widened-avx2"] == gemv.MAX_ROWS  # AVX2's oneDNN has no bfloat16 to use
    try:
        for pairs, flags, lanes, kind in cases:
            monkeypatch.setattr(gemv, "bf16_pairs", lambda pairs=pairs: pairs)
            monkeypatch.setattr(gemv, "vector_lanes", lambda lanes=lanes: lanes)
            monkeypatch.setattr(onednn_linear, "cpu_flags", lambda flags=flags: frozenset(flags))
            onednn_linear.bf16_gemv_kind.cache_clear()
            assert onednn_linear.bf16_gemv_kind() == kind
            assert onednn_linear.gemv_rows(torch.bfloat16) == onednn_linear.BF16_GEMV_ROWS[kind]
    finally:
        onednn_linear.bf16_gemv_kind.cache_clear()  # the next caller asks this machine again


@needs_gemv
def test_many_bf16_rows_are_multiplied_in_float32_where_the_cpu_has_no_bf16_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    from gptkit.kernels import onednn_linear

    x, weight, bias = (torch.randn(*shape).bfloat16() for shape in [(gemv.MAX_ROWS + 8, 96), (40, 96), (40,)])
    exact = (x.double() @ weight.double().T + bias.double()).bfloat16()  # one rounding of the exact sums
    monkeypatch.setattr(onednn_linear, "bf16_gemv_kind", lambda: "widened-avx2")
    with torch.no_grad():
        widened = onednn_linear.linear(x, weight, bias)
    assert widened.dtype == torch.bfloat16
    assert torch.equal(widened, onednn_linear.linear(x.float(), weight.float(), bias.float()).bfloat16())
    assert ((widened.double() - exact.double()).abs() <= exact.double().abs() / 128 + 1e-6).all()  # a bf16 ulp
    monkeypatch.setattr(onednn_linear, "bf16_gemv_kind", lambda: "pairs")  # bfloat16 instructions: the library's
    with torch.no_grad():
        assert torch.equal(onednn_linear.linear(x, weight, bias), F.linear(x, weight, bias))
    monkeypatch.setattr(onednn_linear, "bf16_gemv_kind", lambda: "widened-avx2")
    with_grad = onednn_linear.linear(x, weight.requires_grad_(), bias)  # a gradient to take: autograd's path
    assert with_grad.grad_fn is not None and torch.equal(with_grad.detach(), F.linear(x, weight, bias).detach())


@needs_gemv
def test_int8_linear_sends_up_to_32_rows_to_the_kernel_and_aten_serves_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(3)
    layer = Int8Linear.from_linear(torch.nn.Linear(48, 32))
    x = torch.randn(33, 48)
    rows_seen: list[int] = []
    kernel = gemv.int8_gemv
    monkeypatch.setattr(gemv, "int8_gemv", lambda rows, *rest: rows_seen.append(rows.shape[0]) or kernel(rows, *rest))
    with torch.inference_mode():
        by_kernel = {rows: layer(x[:rows]) for rows in (1, 8, 32, 33)}
        assert rows_seen == [1, 8, 32]  # 33 rows: dequantized, one matmul
        monkeypatch.setattr(gemv, "available", lambda: False)  # as where no compiler could build it
        for rows in (1, 8):
            torch.testing.assert_close(layer(x[:rows]), by_kernel[rows], rtol=1e-5, atol=1e-5)
        layer_bf16 = copy.deepcopy(layer).to(torch.bfloat16)
        by_aten = layer_bf16(x[:1].bfloat16())
        monkeypatch.setattr(gemv, "available", lambda: True)
        torch.testing.assert_close(layer_bf16(x[:1].bfloat16()), by_aten, rtol=2e-2, atol=2e-2)
    assert rows_seen == [1, 8, 32, 1]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here")
def test_where_there_is_a_compiler_every_c_kernel_builds() -> None:
    """A kernel whose source no longer compiles would otherwise just skip its tests and fall back silently."""
    from gptkit.kernels import decode_attention, thread_pool

    assert gemv.available() and decode_attention.available() and thread_pool.available()


@needs_gemv
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the vector paths are x86's")
def test_the_kernel_is_built_with_the_widest_vectors_the_cpu_has() -> None:
    """A CPU with AVX2 but not AVX-512 once ran the plain C loop, at a quarter of the vector path's speed."""
    flags = native.cpu_flags()
    expected = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 1
    assert gemv.vector_lanes() == expected


@needs_gemv
def test_each_vendors_prefetch_hint_builds_and_gives_the_same_sums(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The hint is chosen by CPU vendor (`weight_prefetch_hint`), so CI builds only one of them otherwise."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    torch.manual_seed(5)
    weights = [torch.randn(300, 200), torch.randn(300, 200).to(torch.bfloat16), torch.randint(-127, 128, (300, 200), dtype=torch.int8)]
    scales = torch.rand(300)
    inputs = [torch.randn(rows, 200) for rows in (1, 2, 5)]
    sums = {}
    for vendor in ("GenuineIntel", "AuthenticAMD"):
        monkeypatch.setattr(native, "cpu_vendor", lambda vendor=vendor: vendor)
        monkeypatch.setattr(gemv, "_LIBRARY", native.Library(gemv._build))
        assert gemv.available()
        outs = []
        for x in inputs:
            outs += [gemv.float_gemv(x, weights[0]), gemv.float_gemv(x.to(torch.bfloat16), weights[1]), gemv.int8_gemv(x, weights[2], scales)]
        sums[vendor] = outs
    assert len(list((tmp_path / "gptkit" / "kernels").glob("gemv-*.so"))) == 2  # two sources, two builds
    assert gemv.weight_prefetch_hint("GenuineIntel") != gemv.weight_prefetch_hint("AuthenticAMD")
    for intel, amd in zip(*sums.values()):
        assert torch.equal(intel, amd)  # where a line is prefetched to changes no arithmetic


def test_the_kernel_is_built_once_into_the_cache_and_not_at_all_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if gemv.available():
        assert gemv._build() is not None
        built = list((tmp_path / "gptkit" / "kernels").glob("gemv-*.so"))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        assert gemv._build() is not None and built[0].stat().st_mtime_ns == stamp  # loaded, not compiled again
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert gemv._build() is None


def tiny_model(dtype: torch.dtype = torch.float32) -> GPTModel:
    cfg = ModelConfig(vocab_size=97, emb_dim=64, n_heads=4, n_layers=2, context_length=32)
    generator = torch.Generator().manual_seed(1)
    model = GPTModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(("norm1.weight", "norm2.weight", "final_norm.weight")):
                p.normal_(0, 0.3, generator=generator)
    return model.eval()


def test_int8_generation_with_the_kv_cache_equals_recomputation_through_the_flat_step() -> None:
    model = tiny_model()
    prepare_for_use(model, torch.float32, quantize="int8")
    assert all(type(m) is not torch.nn.Linear for m in model.modules())
    assert sum(type(m) is Int8Linear for m in model.modules()) == 2 * 4 + 1  # four per block, and the head
    assert flat_decoder(model) is not None  # its products are the modules' int8 products
    prompt = torch.tensor([[5, 17, 3, 42, 8, 61], [9, 9, 30, 2, 77, 1]])
    with torch.inference_mode():
        cached = generate(model, prompt, 20, [Greedy()])
        recomputed = generate(model, prompt, 20, [Greedy()], use_cache=False)
        assert torch.equal(cached, recomputed)
        # The logits too: each cached step against the whole sequence run again.
        cache = model.make_kv_cache(2)
        model(cached[:, :6], kv_cache=cache)
        full = model(cached)
        for pos in range(6, cached.shape[1]):
            step = model(cached[:, pos : pos + 1], start_pos=pos, kv_cache=cache, last_only=True)
            torch.testing.assert_close(step[:, 0], full[:, pos], rtol=0, atol=1e-4)
    # bf16, with int8 weights or without, keeps the flat step too.
    plain_bf16 = tiny_model()
    prepare_for_use(plain_bf16, torch.bfloat16)
    assert flat_decoder(plain_bf16) is not None
    int8_bf16 = tiny_model()
    prepare_for_use(int8_bf16, torch.bfloat16, quantize="int8")
    assert flat_decoder(int8_bf16) is not None
    with torch.inference_mode():
        assert torch.equal(generate(int8_bf16, prompt, 8, [Greedy()]), generate(int8_bf16, prompt, 8, [Greedy()], use_cache=False))


def markov_text(steps: int, seed: int) -> torch.Tensor:
    """Tokens from a fixed random chain over 97 ids with three likely successors each: learnable, not trivial."""
    table = torch.randint(0, 97, (97, 3), generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([0.6, 0.3, 0.1])
    draw = torch.Generator().manual_seed(seed)
    ids = [0]
    for _ in range(steps - 1):
        ids.append(int(table[ids[-1], torch.multinomial(weights, 1, generator=draw)]))
    return torch.tensor(ids)


@pytest.fixture(scope="module")
def trained() -> GPTModel:
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(vocab_size=97, emb_dim=64, n_heads=4, n_layers=2, context_length=32))
    text = markov_text(4000, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batches = torch.Generator().manual_seed(2)
    for _ in range(80):
        starts = torch.randint(0, len(text) - 33, (16,), generator=batches)
        chunk = torch.stack([text[s : s + 33] for s in starts.tolist()])
        _, loss = model(chunk[:, :-1], chunk[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def held_out_perplexity(model: GPTModel) -> float:
    with torch.inference_mode():
        return sliding_window_loss(model, markov_text(1500, seed=7), stride=16).perplexity


def test_held_out_perplexity_of_bf16_and_int8_stays_near_float32(trained: GPTModel) -> None:
    reference = held_out_perplexity(trained)
    # The chain's own entropy is ln(0.6, 0.3, 0.1 mix) ~ 0.90 nats (perplexity ~2.46): well below the
    # 97 of an untrained model, so the model has learnt something quantization could spoil.
    assert reference < 4.0
    figures = {}
    for name, dtype, quantize, bound in (
        ("bf16", torch.bfloat16, None, 0.005), ("int8", torch.float32, "int8", 0.02), ("int8+bf16", torch.bfloat16, "int8", 0.02),
    ):
        model = copy.deepcopy(trained)
        prepare_for_use(model, dtype, quantize=quantize)
        figures[name] = held_out_perplexity(model)
        assert abs(figures[name] / reference - 1) < bound, (name, figures[name], reference)
    # A coarser rounding of the same weights (7 levels a row, -3..3 steps) is well outside the int8 bound
    # (about +6%; 15 levels still gave +0.3%): the check can fail.
    coarse = copy.deepcopy(trained)
    with torch.no_grad():
        for module in coarse.modules():
            if type(module) is torch.nn.Linear:
                scale = module.weight.abs().amax(1, keepdim=True) / 3
                module.weight.copy_(torch.round(module.weight / scale) * scale)
    assert abs(held_out_perplexity(coarse) / reference - 1) > 0.02


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "r", random_model(0), MODEL)


def test_generate_and_evaluate_take_quantize_int8(monkeypatch: pytest.MonkeyPatch, run_dir: Path, tmp_path: Path) -> None:
    expected_model = random_model(0)
    with torch.no_grad():
        for module in expected_model.modules():
            if type(module) is torch.nn.Linear:
                module.weight.copy_(hand_quantized(module.weight))
    code, text, err = run_main(monkeypatch, ["generate", "--run", str(run_dir), "--prompt", "Once", "--max-new-tokens", "10", "--quantize", "int8"])
    assert code == 0, err
    assert text == "Once" + greedy_text(expected_model, "Once", 10) + "\n"
    data = tmp_path / "held_out.txt"
    data.write_text("".join(f"Line {i} of a text nobody trained on, with words {i * 7 % 13}.\n" for i in range(12)))
    losses = {}
    for extra in ([], ["--quantize", "int8"], ["--dtype", "bfloat16", "--quantize", "int8"]):
        out = tmp_path / f"{len(extra)}.json"
        code, _, err = run_main(monkeypatch, ["evaluate", "--run", str(run_dir), "--task", "perplexity", "--data", str(data), "--out", str(out), *extra])
        assert code == 0, err
        losses[len(extra)] = json.loads(out.read_text())["loss"]
    with torch.inference_mode():
        by_hand = sliding_window_loss(expected_model.eval(), torch.tensor(Tokenizer().encode(data.read_text()))).loss
    assert losses[2] == pytest.approx(by_hand, rel=1e-4)
    assert losses[4] == pytest.approx(by_hand, rel=0.02) and losses[0] != losses[2]


def test_unknown_scheme_float16_on_cpu_and_int8_without_its_kernel_are_refused(
    monkeypatch: pytest.MonkeyPatch, run_dir: Path, tmp_path: Path
) -> None:
    source = ["--run", str(run_dir)]
    code, _, err = run_main(monkeypatch, ["generate", *source, "--quantize", "int4"])
    assert code == 2 and "error: argument --quantize: invalid choice: 'int4' (choose from 'int8')" in err, err
    for verb in ("generate", "evaluate", "serve"):
        extra = ["--task", "perplexity", "--data", str(tmp_path)] if verb == "evaluate" else []
        code, _, err = run_main(monkeypatch, [verb, *source, *extra, "--dtype", "float16"])
        assert code == 2 and "error: --dtype float16 needs a CUDA device; on CPU use --dtype bfloat16 or float32" in err, (verb, err)
    code, _, err = run_main(monkeypatch, ["serve", *source, "--device", "cuda", "--quantize", "int8"])
    assert code == 2 and "error: --quantize int8 runs on the CPU only, got device cuda; on a GPU use --dtype bfloat16" in err, err
    monkeypatch.setattr(int8_linear, "INT8_KERNEL", False)  # as in a build without aten's int8 kernel
    code, _, err = run_main(monkeypatch, ["generate", *source, "--quantize", "int8"])
    assert code == 2 and "error: --quantize int8 needs torch.ops.aten._weight_int8pack_mm, which this PyTorch build" in err, err
    with pytest.raises(GptkitError, match="unknown quantization scheme 'int4'; valid schemes: int8"):
        quantize_weights(tiny_model(), "int4")


def test_quantize_leaves_other_linears_and_the_embedding_alone() -> None:
    model = tiny_model()
    accelerate(model)  # OneDNNLinear is a stock linear too
    model.blocks[0].ff.add_module("extra", type("PluginLinear", (torch.nn.Linear,), {})(4, 4))
    embedding = model.tok_emb.weight.detach().clone()
    assert quantize_weights(model, "int8") == 9
    assert type(model.blocks[0].ff.extra).__name__ == "PluginLinear"
    assert torch.equal(model.tok_emb.weight, embedding) and model.tok_emb.weight.dtype == torch.float32
