"""One-token decode steps as flat tensor code, for models built from the stock GPT-2 parts.

A cached decode step of GPT-2 124M reads all 497 MB of its weights in 49 one-row
matrix products. That stream sweeps the CPU's caches, so the Python that runs
between the products — module calls, attribute lookups, dispatch checks — runs
cold, several times slower than a micro-benchmark shows: about 2 ms of a 20 ms
step on this project's 2-core machine (`bench/generate.py`). `StockDecoder`
does what the modules do for one new token, the same operations in the same
order (so the logits are equal bit for bit), with the parameters gathered once
and no module in between.

It applies only where that is safe to assume: a `GPTModel` that
`gptkit.kernels.accelerate` switched over, whose blocks are exactly gptkit's
`TransformerBlock`, `LayerNorm`, `MultiHeadAttention` (SDPA), `FeedForward` with
`GELU` and linears (float or `Int8Linear`), learned or no position embeddings,
every module in eval mode, no forward hooks and no compiled module. Anything
else (RoPE, RMSNorm, a plugin block, a hook a researcher put on a layer) gets
`None` from `StockDecoder.for_model`, and generation calls the model as usual.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as nn_module

from gptkit.kernels import gemv
from gptkit.kernels import rowwise
from gptkit.kernels.bf16_attention import CPUAttention
from gptkit.kernels.decode_attention import AppendingAttention, one_query_attention
from gptkit.kernels.decode_program import DecodeProgram
from gptkit.kernels.fused_loss import FusedLossGPTModel
from gptkit.kernels.gemv import BoundProduct
from gptkit.kernels.int8_linear import Int8Linear, int8_linear
from gptkit.kernels.onednn_linear import OneDNNLinear, gemv_rows, linear
from gptkit.kernels.rowwise import KernelGELU, KernelLayerNorm
from gptkit.layers.block import TransformerBlock
from gptkit.layers.embeddings import LearnedPositionEmbedding, PositionEncoding
from gptkit.layers.feed_forward import FeedForward
from gptkit.layers.gelu import GELU
from gptkit.layers.kv_cache import KVCache, RaggedKVCache
from gptkit.layers.layer_norm import LayerNorm


class _Norm(NamedTuple):
    """A layer norm's parameters; `kernel`: a `KernelLayerNorm`, normalising through `rowwise` as it does."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    kernel: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel:
            return rowwise.layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class _Linear(NamedTuple):
    """A linear's tensors: a float weight (scales None), or an `Int8Linear`'s int8 weight and scales; and the
    streaming kernel bound to them, for as many rows as the module's path sends there (`max_rows`)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    scales: torch.Tensor | None
    bound: BoundProduct | None
    max_rows: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # What the module's forward computes, without the module call; through the bound kernel where the
        # module's path would reach the same C call.
        # The step keeps its rows 2-D, (batch, features): no reshape in and no view out.
        if self.bound is not None and x.dim() == 2 and x.shape[0] <= self.max_rows and x.dtype == self.bound.dtype and x.is_contiguous():
            return self.bound(x)
        if self.scales is None:
            return linear(x, self.weight, self.bias)
        return int8_linear(x, self.weight, self.scales, self.bias)


def _bound_linear(weight: torch.Tensor, bias: torch.Tensor | None, scales: torch.Tensor | None) -> _Linear:
    dtype = weight.dtype if scales is None else scales.dtype  # the model's dtype: an int8 weight's scales are cast with it
    max_rows = gemv.MAX_ROWS if scales is not None else gemv_rows(dtype)
    serves = max_rows > 0 and gemv.available() and weight.device.type == "cpu" and weight.is_contiguous()
    bound = BoundProduct(weight, scales, bias, dtype) if serves else None
    return _Linear(weight, bias, scales, bound, max_rows)


class _Layer(NamedTuple):
    """The tensors of one stock block, in the order a decode step uses them."""

    norm1: _Norm
    heads: int
    head_dim: int
    qkv: _Linear
    out_proj: _Linear
    norm2: _Norm
    fc1: _Linear
    gelu_approximate: str
    gelu_kernel: bool  # a `KernelGELU`: through `rowwise.gelu`, as the module computes it
    fc2: _Linear

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        if self.gelu_kernel:
            return rowwise.gelu(x, self.gelu_approximate)
        return F.gelu(x, approximate=self.gelu_approximate)


def _norm(norm: nn.Module) -> _Norm | None:
    return _Norm(norm.weight, norm.bias, norm.eps, type(norm) is KernelLayerNorm) if type(norm) in (LayerNorm, KernelLayerNorm) else None


def _linear(module: nn.Module) -> _Linear | None:
    if type(module) is OneDNNLinear:
        return _bound_linear(module.weight, module.bias, None)
    if type(module) is Int8Linear:
        return _bound_linear(module.int8_weight, module.bias, module.scales)
    return None


def _layer(block: nn.Module) -> _Layer | None:
    if type(block) is not TransformerBlock or type(block.att) is not CPUAttention or type(block.ff) is not FeedForward:
        return None
    att, ff = block.att, block.ff
    norm1, norm2 = _norm(block.norm1), _norm(block.norm2)
    qkv, out_proj, fc1, fc2 = (_linear(lin) for lin in (att.qkv, att.out_proj, ff.fc1, ff.fc2))
    gelu = type(ff.activation)
    if not (att.use_sdpa and gelu in (GELU, KernelGELU) and norm1 and norm2 and qkv and out_proj and fc1 and fc2):
        return None
    return _Layer(norm1, att.num_heads, att.head_dim, qkv, out_proj, norm2, fc1, ff.activation.approximate, gelu is KernelGELU, fc2)


def _calls_do_more(model: nn.Module) -> bool:
    """Whether a module call would do anything a flat step skips: hooks, a compiled forward, dropout."""
    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._compiled_call_impl is not None or m.training for m in model.modules())


class StockDecoder:
    """`model(idx, start_pos=..., kv_cache=..., last_only=True)` for one new token, without module calls.

    Built per generation (`for_model`): it holds the parameters as they are then.
    """

    def __init__(self, model: FusedLossGPTModel, layers: list[_Layer]) -> None:
        self.context_length = model.cfg.context_length
        self.token_table = model.tok_emb.weight
        self.position_table = model.pos_emb.weight if isinstance(model.pos_emb, LearnedPositionEmbedding) else None
        self.layers = layers
        self.final_norm = _norm(model.final_norm)
        self.head = _linear(model.out_head)
        # Each plain cache's attention calls, bound on first use (`AppendingAttention`): by the cache's id,
        # with the cache held so that the id stays its own. A generation has a cache per prompt length.
        self._attention: dict[int, tuple[KVCache, list[AppendingAttention | None]]] = {}
        # Each plain cache's whole step in C (`DecodeProgram`), or None where it is not the program's: the same way.
        self._programs: dict[int, tuple[KVCache, DecodeProgram | None]] = {}

    def _attention_of(self, kv_cache: KVCache) -> list[AppendingAttention | None]:
        held = self._attention.get(id(kv_cache))
        if held is None:
            held = self._attention[id(kv_cache)] = (kv_cache, [None] * len(self.layers))
        return held[1]

    def _program_of(self, kv_cache: KVCache, rows: int, dtype: torch.dtype) -> DecodeProgram | None:
        held = self._programs.get(id(kv_cache))
        if held is None or (held[1] is not None and held[1].rows != rows):
            program = DecodeProgram.for_cache(kv_cache, rows, dtype, self.layers, self.final_norm, self.head)
            held = self._programs[id(kv_cache)] = (kv_cache, program)
        return held[1]

    @classmethod
    def for_model(cls, model: nn.Module) -> StockDecoder | None:
        """A decoder for `model`, or None where its parts are not all the stock ones (see the module docstring)."""
        if type(model) is not FusedLossGPTModel or _calls_do_more(model):
            return None
        if type(model.pos_emb) not in (LearnedPositionEmbedding, PositionEncoding) or _norm(model.final_norm) is None:
            return None
        if type(model.tok_emb) is not nn.Embedding or _linear(model.out_head) is None or model.out_head.bias is not None:
            return None
        layers = [_layer(block) for block in model.blocks]
        if None in layers:
            return None
        return cls(model, layers)  # type: ignore[arg-type]

    def __call__(self, idx: torch.Tensor, start_pos: int | torch.Tensor, kv_cache: KVCache | RaggedKVCache) -> torch.Tensor:
        """Logits (batch, 1, vocab) after the tokens `idx` (batch, 1) at position `start_pos`.

        With a `RaggedKVCache`, `start_pos` is each row's position, (batch,), its cache's lengths.
        """
        ragged = isinstance(kv_cache, RaggedKVCache)
        if ragged:
            fits = isinstance(start_pos, torch.Tensor) and torch.equal(start_pos, kv_cache.length) and (
                not len(start_pos) or int(start_pos.max()) < self.context_length
            )
        else:
            fits = not isinstance(start_pos, torch.Tensor) and start_pos == kv_cache.length and start_pos < self.context_length
        if idx.shape[1] != 1 or not fits:
            shown = start_pos.tolist() if isinstance(start_pos, torch.Tensor) else start_pos
            held = kv_cache.length.tolist() if ragged else kv_cache.length
            raise ValueError(
                f"a decode step takes one token per row at the end of a cache with room in the context window, "
                f"got shape {tuple(idx.shape)} at position {shown} (cache {held}, window {self.context_length})"
            )
        batch = idx.shape[0]
        # Each row's hidden state as a row of a 2-D tensor (batch, emb_dim): the modules' (batch, 1, emb_dim)
        # without its length-1 axis, the same values through the same operations, fewer reshapes.
        x = F.embedding(idx[:, 0], self.token_table)
        if self.position_table is not None:
            if isinstance(start_pos, torch.Tensor):
                x = x + self.position_table[start_pos]
            else:
                x = x + self.position_table[start_pos : start_pos + 1]
        if not ragged and not torch.is_grad_enabled():
            program = self._program_of(kv_cache, batch, x.dtype)  # type: ignore[arg-type]
            logits = None if program is None else program.step(x)
            if logits is not None:
                return logits[:, None]
        mask: torch.Tensor | None = None
        bound = None if ragged else self._attention_of(kv_cache)  # type: ignore[arg-type]
        for index, (layer, cache) in enumerate(zip(self.layers, kv_cache.layers)):
            h = layer.norm1(x)
            # The fused projection's layout per row is (3, heads, head_dim); one token adds a length-1 axis.
            q, k, v = layer.qkv(h).view(batch, 3, layer.heads, 1, layer.head_dim).unbind(1)
            if ragged:
                keys, values = cache.update(k, v)
                if index == 0:  # every layer's cache holds the same positions per row: one mask serves them all
                    mask = cache.key_mask()
                context = one_query_attention(q, keys, values, mask)
            else:
                attention = bound[index]  # type: ignore[index]
                if attention is None or attention.cache is not cache:
                    attention = bound[index] = AppendingAttention(cache, q, k, v)  # type: ignore[index]
                context = attention(q, k, v)
            x = x + layer.out_proj(context.reshape(batch, -1))
            h = layer.norm2(x)
            h = layer.gelu(layer.fc1(h))
            x = x + layer.fc2(h)
        x = self.final_norm(x)  # type: ignore[misc]
        return self.head(x)[:, None]
