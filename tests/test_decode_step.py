"""The flat one-token decode step: equal to the modules bit for bit, used only where that holds."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_weights
from torch import nn

from gptkit import GPTModel, ModelConfig, accelerate
from gptkit.generation.generate import generate
from gptkit.generation.samplers import Greedy
from gptkit.kernels import quantize_weights
from gptkit.kernels import decode_attention
from gptkit.kernels.decode_attention import FLOAT32_FROM_ROW_KEYS, one_query_attention
from gptkit.kernels.decode_program import DecodeProgram
from gptkit.kernels.decode_step import StockDecoder
from gptkit.layers import TransformerBlock

PROMPT = torch.tensor([[5, 17, 3, 42, 8, 61], [9, 9, 30, 2, 77, 1], [1, 2, 3, 4, 5, 6]])


def build(**options: object) -> GPTModel:
    cfg = ModelConfig(vocab_size=97, emb_dim=32, n_heads=4, n_layers=2, context_length=16, **options)  # type: ignore[arg-type]
    model = randomize_weights(GPTModel(cfg), 3)
    assert accelerate(model)  # the flat step is one of gptkit.kernels: only a switched-over model gets it
    return model  # type: ignore[return-value]


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "options",
    [{}, {"position": "none"}, {"qkv_bias": False, "weight_tying": False}, {"activation": {"name": "gelu", "approximate": "none"}}],
    ids=["gpt2", "no-positions", "no-qkv-bias-untied", "exact-gelu"],
)
def test_decode_steps_equal_the_model_bit_for_bit(options: dict[str, object], dtype: torch.dtype, quantize: str | None) -> None:
    model = build(**options)
    if quantize is not None:
        assert quantize_weights(model, quantize) == 2 * 4 + 1  # four linears per block, and the head
    model = model.to(dtype)
    decoder = StockDecoder.for_model(model)
    assert decoder is not None
    ours, theirs = model.make_kv_cache(3), model.make_kv_cache(3)
    tokens = torch.randint(0, 97, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(PROMPT, kv_cache=ours)
        model(PROMPT, kv_cache=theirs)
        for step in range(10):  # fills the window of 16
            pos = PROMPT.shape[1] + step
            expected = model(tokens[:, step : step + 1], start_pos=pos, kv_cache=theirs, last_only=True)
            got = decoder(tokens[:, step : step + 1], pos, ours)
            assert got.dtype == dtype and torch.equal(got, expected), step
    for a, b in zip(ours.layers, theirs.layers):
        assert a.length == b.length == 16
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_a_step_off_the_end_of_the_cache_or_window_is_refused() -> None:
    model = build()
    decoder = StockDecoder.for_model(model)
    assert decoder is not None
    cache = model.make_kv_cache(1)
    with torch.inference_mode():
        model(PROMPT[:1], kv_cache=cache)
        with pytest.raises(ValueError, match=r"one token per row at the end of a cache .* got shape \(1, 1\) at position 5 \(cache 6, window 16\)"):
            decoder(PROMPT[:1, :1], 5, cache)
        with pytest.raises(ValueError, match=r"got shape \(1, 2\) at position 6"):
            decoder(PROMPT[:1, :2], 6, cache)


class _OwnForward(GPTModel):
    def forward(self, idx: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
        return super().forward(idx, *args, **kwargs)  # type: ignore[arg-type]


def _with_block_hook(model: GPTModel) -> GPTModel:
    model.blocks[1].ff.fc1.register_forward_hook(lambda module, args, out: None)
    return model


def _with_compiled_block(model: GPTModel) -> GPTModel:
    model.blocks[0].compile()  # compiles on first call; the module call must go through it
    return model


def _block_training(model: GPTModel) -> GPTModel:
    model.blocks[0].att.train()  # its dropout would act, were it not 0
    return model


def _subclass(model: GPTModel) -> GPTModel:
    model.__class__ = _OwnForward
    return model


class _PostLNBlock(TransformerBlock):
    """The original Transformer's order: normalise after each residual sum."""

    def forward(self, x: torch.Tensor, position: object = None, start_pos: int = 0, kv_cache: object = None) -> torch.Tensor:  # type: ignore[override]
        x = self.norm1(x + self.att(x, position, start_pos, kv_cache))
        return self.norm2(x + self.ff(x))


def _post_ln(model: GPTModel) -> GPTModel:
    cfg = model.cfg
    # In eval mode like the rest, so that only its kind can keep it off the flat step.
    model.blocks[1] = _PostLNBlock(cfg.emb_dim, cfg.n_heads, cfg.context_length, qkv_bias=cfg.qkv_bias).eval()
    return model


def _swap(model: GPTModel, name: str, module: nn.Module) -> GPTModel:
    """`model` with the submodule at dotted path `name` replaced by `module`."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)
    return model


@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("kernels off", lambda: randomize_weights(GPTModel(build().cfg), 3).eval()),
        ("rope", lambda: build(position="rope")),
        ("rmsnorm", lambda: build(norm="rmsnorm")),
        ("swiglu", lambda: build(ffn="swiglu")),
        ("relu", lambda: build(activation="relu")),
        ("explicit attention", lambda: build(attention={"name": "mha", "use_sdpa": False})),
        ("training mode", lambda: build().train()),
        ("one block in training mode", lambda: _block_training(build())),
        ("a forward hook", lambda: _with_block_hook(build())),
        ("a compiled block", lambda: _with_compiled_block(build())),
        ("a subclass's forward", lambda: _subclass(build())),
        ("a block of another kind", lambda: _post_ln(build())),
        ("a swapped head", lambda: _swap(build(), "out_head", nn.Linear(32, 97, bias=False).eval())),
        ("a block's linear of another kind", lambda: _swap(build(), "blocks.0.ff.fc1", nn.Linear(32, 128).eval())),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_anything_but_the_stock_parts_gets_no_decoder(label: str, make: object) -> None:
    assert StockDecoder.for_model(make()) is None, label  # type: ignore[operator]


def test_a_global_forward_hook_also_keeps_the_modules() -> None:
    model = build()
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        assert StockDecoder.for_model(model) is None
    finally:
        handle.remove()
    assert StockDecoder.for_model(model) is not None


def test_generation_decodes_through_it_and_a_hooked_model_still_runs_its_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build()
    calls: list[int] = []
    decode = StockDecoder.__call__

    def counting(self: StockDecoder, idx: torch.Tensor, start_pos: int, kv_cache: object) -> torch.Tensor:
        calls.append(start_pos)
        return decode(self, idx, start_pos, kv_cache)  # type: ignore[arg-type]

    monkeypatch.setattr(StockDecoder, "__call__", counting)
    flat = generate(model, PROMPT, 8, [Greedy()])
    assert calls == list(range(6, 13))  # 8 tokens: a prefill, then 7 decode steps

    seen: list[int] = []
    model.blocks[0].register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    calls.clear()
    hooked = generate(model, PROMPT, 8, [Greedy()])
    assert calls == [] and seen == [6] + [1] * 7
    assert torch.equal(hooked, flat)
    assert torch.equal(flat, generate(model, PROMPT, 8, [Greedy()], use_cache=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_one_query_attention_equals_a_float64_softmax_and_keeps_each_row_to_its_keys(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(4)
    keys = FLOAT32_FROM_ROW_KEYS + 1  # without the C kernel, bfloat16 with 3 rows of this many keys is attended in float32; of 9 keys (27 < 64), as it comes
    q, k, v = (torch.randn(3, 4, n, 16, generator=generator).to(dtype) for n in (1, keys, keys))
    lengths = torch.tensor([keys, 5, 1])
    key_mask = (torch.arange(keys) < lengths[:, None])[:, None, None, :]
    for mask in (None, key_mask, key_mask[..., :9]):
        if mask is not None and mask.shape[-1] == 9:
            k, v = k[:, :, :9], v[:, :, :9]
        scores = q.double() @ k.double().transpose(-2, -1) / 4.0  # sqrt(head_dim 16)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        expected = torch.softmax(scores, dim=-1) @ v.double()
        got = one_query_attention(q, k, v, mask)
        assert got.dtype == dtype and got.shape == (3, 4, 1, 16)
        # float32 throughout; bfloat16: the result rounded to 8 bits (and at 9 keys bfloat16 probabilities too)
        tolerance = 1e-6 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)
    # The row of length 1 sees only its first key: its output is that value, whatever the others hold.
    torch.testing.assert_close(one_query_attention(q, k, v, key_mask[..., :9])[2, :, 0].double(), v[2, :, 0].double(), rtol=0, atol=0)


def float64_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    scores = q.double() @ k.double().transpose(-2, -1) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.double()


needs_attention_kernel = pytest.mark.skipif(not decode_attention.available(), reason="no C compiler here to build the kernel")


@needs_attention_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 20, 72], ids=["gpt2", "under-a-vector", "past-a-block"])
def test_the_attention_kernel_reads_strided_views_of_any_head_width_and_matches_float64(dtype: torch.dtype, head_dim: int) -> None:
    generator = torch.Generator().manual_seed(head_dim)
    rows, heads, keys = 3, 5, 37  # 37 keys: two whole vectors of scores and a partial one
    # q as the flat step gets it: a view into the fused projection; k and v the first `keys` of a longer cache.
    q = torch.randn(rows, 3, heads, 1, head_dim, generator=generator).to(dtype).unbind(1)[0]
    k, v = (torch.randn(rows, heads, 50, head_dim, generator=generator).to(dtype)[:, :, :keys] for _ in range(2))
    assert not q.is_contiguous() and not k.is_contiguous()
    mask = (torch.arange(keys) < torch.tensor([keys, 17, 2])[:, None])[:, None, None, :]
    for key_mask in (None, mask):
        got = one_query_attention(q, k, v, key_mask)
        assert got.dtype == dtype and got.shape == (rows, heads, 1, head_dim) and got.is_contiguous()
        expected = float64_attention(q, k, v, key_mask)
        # float32 sums: a few ulps; bfloat16: the output rounded once to 8 bits
        tolerance = 2e-6 if dtype == torch.float32 else 8e-3
        torch.testing.assert_close(got.double(), expected, rtol=tolerance, atol=tolerance)


@needs_attention_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_row_attends_the_same_bits_alone_as_in_a_ragged_batch(dtype: torch.dtype) -> None:
    """What continuous batching promises: the other rows, and the keys masked off past this row's, change nothing."""
    generator = torch.Generator().manual_seed(9)
    q = torch.randn(4, 12, 1, 64, generator=generator).to(dtype)
    k, v = (torch.randn(4, 12, 90, 64, generator=generator).to(dtype) for _ in range(2))
    lengths = torch.tensor([90, 23, 64, 1])
    mask = (torch.arange(90) < lengths[:, None])[:, None, None, :]
    batched = one_query_attention(q, k, v, mask)
    for row, length in enumerate(lengths.tolist()):
        alone = one_query_attention(q[row : row + 1], k[row : row + 1, :, :length], v[row : row + 1, :, :length])
        assert torch.equal(alone, batched[row : row + 1]), row


@needs_attention_kernel
def test_the_attention_kernels_softmax_is_exact_at_the_extremes() -> None:
    """Scores far below the largest weigh exactly nothing; a row of one key returns that key's value; equal scores average."""
    v = torch.randn(1, 1, 3, 16, generator=torch.Generator().manual_seed(2))
    k = torch.zeros(1, 1, 3, 16)
    k[0, 0, 0, 0] = 1000.0  # q . k: 4000 for the first key, 0 for the others: exp(-1000) is 0 in float32
    q = torch.zeros(1, 1, 1, 16)
    q[..., 0] = 16.0  # scaled by 1/sqrt(16): 4000
    assert torch.equal(one_query_attention(q, k, v), v[:, :, :1])
    flat = one_query_attention(torch.zeros(1, 1, 1, 16), k, v)  # every score 0: the mean of the values
    torch.testing.assert_close(flat, v.mean(dim=2, keepdim=True), rtol=1e-6, atol=1e-6)


def test_without_the_kernel_sdpa_gives_the_same_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(2, 4, 1, 32, generator=generator)
    k, v = (torch.randn(2, 4, 70, 32, generator=generator) for _ in range(2))
    mask = (torch.arange(70) < torch.tensor([70, 40])[:, None])[:, None, None, :]
    by_kernel = one_query_attention(q, k, v, mask)
    monkeypatch.setattr(decode_attention, "available", lambda: False)  # as where no compiler could build it
    by_sdpa = one_query_attention(q, k, v, mask)
    torch.testing.assert_close(by_sdpa, by_kernel, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(by_sdpa.double(), float64_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)


@needs_attention_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attending_while_appending_equals_update_then_attention_and_fills_the_cache_alike(dtype: torch.dtype) -> None:
    from gptkit.kernels.decode_attention import attend_appending
    from gptkit.layers.kv_cache import LayerKVCache

    generator = torch.Generator().manual_seed(11)
    caches = [LayerKVCache(2, 3, 12, 16, dtype=dtype, device="cpu") for _ in range(2)]
    for step in range(12):
        # q, k and v as the flat step gets them: views into one fused projection
        q, k, v = torch.randn(2, 3, 3, 1, 16, generator=generator).to(dtype).unbind(1)
        both = attend_appending(q, k, v, caches[0])
        keys, values = caches[1].update(k, v)
        apart = one_query_attention(q, keys, values)
        assert torch.equal(both, apart), step
        assert caches[0].length == caches[1].length == step + 1
        filled = slice(0, step + 1)  # the rest of each buffer is torch.empty's
        assert torch.equal(caches[0].keys[:, :, filled], caches[1].keys[:, :, filled])
        assert torch.equal(caches[0].values[:, :, filled], caches[1].values[:, :, filled])
    with pytest.raises(ValueError, match="KV cache holds 12 positions; 13 requested"):
        attend_appending(q, k, v, caches[0])  # a full cache refuses as update does


@needs_attention_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bound_attention_equals_attend_appending_and_falls_back_where_the_call_changes(dtype: torch.dtype) -> None:
    from gptkit.kernels.decode_attention import AppendingAttention, attend_appending
    from gptkit.layers.kv_cache import LayerKVCache

    generator = torch.Generator().manual_seed(12)
    caches = [LayerKVCache(2, 3, 10, 16, dtype=dtype, device="cpu") for _ in range(2)]
    bound: AppendingAttention | None = None
    for step in range(10):
        q, k, v = torch.randn(2, 3, 3, 1, 16, generator=generator).to(dtype).unbind(1)
        if step == 6:  # the same values laid out apart, not as views of one projection: other strides
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if bound is None:
            bound = AppendingAttention(caches[0], q, k, v)
        assert torch.equal(bound(q, k, v), attend_appending(q, k, v, caches[1])), step
        assert caches[0].length == caches[1].length == step + 1
        filled = slice(0, step + 1)
        assert torch.equal(caches[0].keys[:, :, filled], caches[1].keys[:, :, filled])
        assert torch.equal(caches[0].values[:, :, filled], caches[1].values[:, :, filled])
        if step == 3:  # a rebuilt buffer: the bound addresses are stale, so the call must not use them
            for cache in caches:
                cache.keys, cache.values = cache.keys.clone(), cache.values.clone()
    with pytest.raises(ValueError, match="KV cache holds 10 positions; 11 requested"):
        bound(q, k, v)  # a full cache refuses as update does


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float", "int8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_plain_cache_step_is_one_program_call_equal_to_the_python_step(
    dtype: torch.dtype, quantize: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build()
    if quantize is not None:
        quantize_weights(model, quantize)
    model = model.to(dtype)
    calls: list[int] = []
    original = DecodeProgram.step

    def counting(self: DecodeProgram, x: torch.Tensor) -> torch.Tensor | None:
        out = original(self, x)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(DecodeProgram, "step", counting)
    results = []
    for use_program in (True, False):
        decoder = StockDecoder.for_model(model)
        assert decoder is not None
        if not use_program:
            monkeypatch.setattr(DecodeProgram, "for_cache", classmethod(lambda cls, *args: None))
        cache = model.make_kv_cache(3)
        with torch.inference_mode():
            model(PROMPT, kv_cache=cache)
            logits = [decoder(PROMPT[:, step : step + 1], PROMPT.shape[1] + step, cache) for step in range(5)]
        results.append((logits, cache))
    assert calls == [True] * 5  # the first five steps, each one C call; none with the program off
    (programmed, ours), (python, theirs) = results
    assert all(torch.equal(a, b) for a, b in zip(programmed, python))
    for a, b in zip(ours.layers, theirs.layers):
        assert a.length == b.length == PROMPT.shape[1] + 5
        assert torch.equal(a.keys[:, :, : a.length], b.keys[:, :, : b.length])
        assert torch.equal(a.values[:, :, : a.length], b.values[:, :, : b.length])


def test_the_program_steps_aside_for_a_replaced_cache_buffer_and_the_exact_gelu() -> None:
    model = build()
    decoder = StockDecoder.for_model(model)
    assert decoder is not None
    cache, reference = model.make_kv_cache(3), model.make_kv_cache(3)
    with torch.inference_mode():
        model(PROMPT, kv_cache=cache)
        model(PROMPT, kv_cache=reference)
        decoder(PROMPT[:, :1], 6, cache)
        model(PROMPT[:, :1], start_pos=6, kv_cache=reference, last_only=True)
        program = decoder._programs[id(cache)][1]
        assert program is not None
        cache.layers[1].keys = cache.layers[1].keys.clone()  # the program points at the old buffer
        x = torch.zeros(3, 32)
        assert program.step(x) is None and cache.layers[0].length == 7  # refused before touching anything
        got = decoder(PROMPT[:, 1:2], 7, cache)
        expected = model(PROMPT[:, 1:2], start_pos=7, kv_cache=reference, last_only=True)
    assert torch.equal(got, expected)
    exact = build(activation={"name": "gelu", "approximate": "none"})
    decoder = StockDecoder.for_model(exact)
    cache = exact.make_kv_cache(3)
    with torch.inference_mode():
        exact(PROMPT, kv_cache=cache)
        decoder(PROMPT[:, :1], 6, cache)  # type: ignore[misc]
    assert decoder._programs[id(cache)][1] is None  # type: ignore[union-attr]
