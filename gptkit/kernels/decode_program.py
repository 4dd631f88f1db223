"""A whole decode step in one C call, for a plain KV cache: the flat step's operations, none of its Python.

`StockDecoder` runs a GPT-2 124M step as about 150 PyTorch and ctypes calls from
Python. In a real step each of those pays 5-15 µs besides its work, because the
weights streaming through the caches leave the interpreter cold: about 1.5 ms of
a 7.5 ms int8 step on this project's 2-core machine, a fifth of it. A
`DecodeProgram` binds, once per cache, every pointer a step needs: each block's
norms, products (`gemv.BoundProduct`'s arguments), its attention with the new key
and value written into the cache (`decode_attention`), and scratch rows for what
lies between. Then a step is one C call that runs the same C functions, through
their addresses, in the order the modules would: the logits are the modules'
bit for bit, as the flat step's are (`tests/test_decode_step.py`).

It serves what `StockDecoder` serves, on a plain cache (one prompt length), with
tanh GELU and kernel layer norms (`gptkit.kernels.rowwise`), and where every
product goes to `gemv`: up to its row limits. A ragged batch (the server's), or
anything the program does not bind, keeps to `StockDecoder`'s Python step.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from gptkit.kernels import decode_attention, gemv, native, rowwise
from gptkit.kernels.gemv import BoundProduct
from gptkit.layers.kv_cache import KVCache

if TYPE_CHECKING:  # decode_step imports this module
    from gptkit.kernels.decode_step import _Layer as StockLayer
    from gptkit.kernels.decode_step import _Linear as StockLinear
    from gptkit.kernels.decode_step import _Norm as StockNorm

SOURCE = r"""
typedef int (*gemv_fn)(int, const void *, int64_t, int64_t, int, const void *, int64_t, const void *, const void *, void *, int);
typedef int (*attend_fn)(void *, int64_t, int64_t, int);
typedef void (*norm_fn)(int, const void *, void *, int64_t, int64_t, const void *, const void *, float, int);
typedef void (*gelu_fn)(int, const void *, void *, int64_t, int64_t, int);

typedef struct { int kind; const void *w; int64_t n; const void *scales, *bias; int threads; } Linear;
typedef struct { const void *weight, *bias; float eps; } Norm;
typedef struct { Norm norm1; Linear qkv; void *attention; Linear out_proj; Norm norm2; Linear fc1, fc2; } Layer;
typedef struct {
    gemv_fn gemv; attend_fn attend; norm_fn norm; gelu_fn gelu;
    int bf16, threads; int64_t rows, emb, hidden, layers;
    const Layer *layer; Norm final_norm; Linear head;
    void *h, *qkv, *context, *projected, *wide;  /* scratch: (rows, emb), (rows, 3 emb), (rows, emb) x2, (rows, hidden) */
} Program;

INLINE int product(const Program *p, const Linear *l, const void *x, int64_t k, void *out) {
    return p->gemv(p->bf16, x, p->rows, k, l->kind, l->w, l->n, l->scales, l->bias, out, l->threads);
}

/* x += y, both (rows, emb), as PyTorch adds: in float32, rounded once. */
INLINE void add_rows(const Program *p, void *x, const void *y) {
    int64_t count = p->rows * p->emb;
    if (p->bf16)
        for (int64_t i = 0; i < count; i++)
            ((uint16_t *)x)[i] = float_to_bf16(bf16_to_float(((uint16_t *)x)[i]) + bf16_to_float(((const uint16_t *)y)[i]));
    else
        for (int64_t i = 0; i < count; i++) ((float *)x)[i] += ((const float *)y)[i];
}

/* One step: x (rows, emb), each row's hidden state after its embeddings, through every block (each cache
   takes its new key and value at position keys - 1), the final norm and the head into logits. 0, or -1
   where a kernel found no memory for its scratch. */
int decode_step(const Program *p, void *x, int64_t keys, void *logits) {
    for (int64_t i = 0; i < p->layers; i++) {
        const Layer *l = &p->layer[i];
        p->norm(p->bf16, x, p->h, p->rows, p->emb, l->norm1.weight, l->norm1.bias, l->norm1.eps, 1);
        if (product(p, &l->qkv, p->h, p->emb, p->qkv)) return -1;
        if (p->attend(l->attention, keys, p->rows, p->threads)) return -1;
        if (product(p, &l->out_proj, p->context, p->emb, p->projected)) return -1;
        add_rows(p, x, p->projected);
        p->norm(p->bf16, x, p->h, p->rows, p->emb, l->norm2.weight, l->norm2.bias, l->norm2.eps, 1);
        if (product(p, &l->fc1, p->h, p->emb, p->wide)) return -1;
        p->gelu(p->bf16, p->wide, p->wide, p->rows, p->hidden, 1);
        if (product(p, &l->fc2, p->wide, p->hidden, p->projected)) return -1;
        add_rows(p, x, p->projected);
    }
    p->norm(p->bf16, x, p->h, p->rows, p->emb, p->final_norm.weight, p->final_norm.bias, p->final_norm.eps, 1);
    return product(p, &p->head, p->h, p->emb, logits);
}
"""


class _Linear(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("w", ctypes.c_void_p), ("n", ctypes.c_int64), ("scales", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("threads", ctypes.c_int)]


class _Norm(ctypes.Structure):
    _fields_ = [("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("eps", ctypes.c_float)]


class _Layer(ctypes.Structure):
    _fields_ = [("norm1", _Norm), ("qkv", _Linear), ("attention", ctypes.c_void_p), ("out_proj", _Linear),
                ("norm2", _Norm), ("fc1", _Linear), ("fc2", _Linear)]


class _Program(ctypes.Structure):
    _fields_ = [
        ("gemv", ctypes.c_void_p), ("attend", ctypes.c_void_p), ("norm", ctypes.c_void_p), ("gelu", ctypes.c_void_p),
        ("bf16", ctypes.c_int), ("threads", ctypes.c_int),
        *((name, ctypes.c_int64) for name in ("rows", "emb", "hidden", "layers")),
        ("layer", ctypes.POINTER(_Layer)), ("final_norm", _Norm), ("head", _Linear),
        *((name, ctypes.c_void_p) for name in ("h", "qkv", "context", "projected", "wide")),
    ]


def _build() -> ctypes.CDLL | None:
    lib = native.build("decode_program", SOURCE)
    if lib is None:
        return None
    lib.decode_step.restype = ctypes.c_int
    lib.decode_step.argtypes = [ctypes.POINTER(_Program), ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    return lib


_LIBRARY = native.Library(_build)


def _address(lib: ctypes.CDLL | None, name: str) -> int | None:
    return None if lib is None else ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def _linear(bound: BoundProduct | None) -> _Linear | None:
    if bound is None:
        return None
    dtype, kind, weight, n, scales, bias, threads = bound.arguments
    return _Linear(kind, weight, n, scales, bias, threads)


def _norm(norm: StockNorm) -> _Norm:
    return _Norm(norm.weight.data_ptr(), None if norm.bias is None else norm.bias.data_ptr(), norm.eps)


class DecodeProgram:
    """Every pointer of a decode step on one plain cache, for `rows` rows; `step` makes the one C call.

    `layers` are `StockDecoder`'s; `for_cache` returns None where something is not the program's to run
    (see the module docstring), and `step` returns None where a call would not be the bound one.
    """

    def __init__(self, cache: KVCache, rows: int, dtype: torch.dtype, layers: Sequence[StockLayer], final_norm: StockNorm,
                 head: StockLinear, functions: tuple[int, int, int, int]) -> None:
        self.cache, self.rows, self.dtype = cache, rows, dtype
        self._buffers = [(layer.keys, layer.values) for layer in cache.layers]
        first = layers[0]
        emb, hidden = first.heads * first.head_dim, first.fc1.weight.shape[0]
        self.vocab = head.weight.shape[0]
        # Scratch rows, held here: the program points into them.
        self._h = torch.empty(rows, emb, dtype=dtype)
        self._qkv = torch.empty(rows, 3 * emb, dtype=dtype)
        self._context = torch.empty(rows, emb, dtype=dtype)
        self._projected = torch.empty(rows, emb, dtype=dtype)
        self._wide = torch.empty(rows, hidden, dtype=dtype)
        # Each layer's attention reads q, k and v where the fused projection leaves them, and appends k and v.
        q, k, v = self._qkv.view(rows, 3, first.heads, 1, first.head_dim).unbind(1)
        self._attention = [
            decode_attention._arguments(q, layer.keys[:, :, :1], layer.values[:, :, :1], None, self._context, k, v)
            for layer in cache.layers
        ]
        self._layers = (_Layer * len(layers))(*(
            _Layer(_norm(layer.norm1), _linear(layer.qkv.bound), ctypes.addressof(attention), _linear(layer.out_proj.bound),
                   _norm(layer.norm2), _linear(layer.fc1.bound), _linear(layer.fc2.bound))
            for layer, attention in zip(layers, self._attention)
        ))
        self._program = _Program(
            *functions, dtype == torch.bfloat16, torch.get_num_threads(), rows, emb, hidden, len(layers),
            self._layers, _norm(final_norm), _linear(head.bound),
            *(t.data_ptr() for t in (self._h, self._qkv, self._context, self._projected, self._wide)),
        )
        self._call = _LIBRARY.get().decode_step  # type: ignore[union-attr]

    @classmethod
    def for_cache(cls, cache: KVCache, rows: int, dtype: torch.dtype, layers: Sequence[StockLayer], final_norm: StockNorm,
                  head: StockLinear) -> DecodeProgram | None:
        """A program for this cache, or None where the step is not all bindable kernels."""
        lib = _LIBRARY.get()
        functions = (_address(gemv._LIBRARY.get(), "gemv"), _address(decode_attention._LIBRARY.get(), "attend_keys"),
                     _address(rowwise.LIBRARY.get(), "layer_norm_rows"), _address(rowwise.LIBRARY.get(), "gelu_rows"))
        if lib is None or None in functions or dtype not in (torch.float32, torch.bfloat16):
            return None
        products = [head, *(lin for layer in layers for lin in (layer.qkv, layer.out_proj, layer.fc1, layer.fc2))]
        if not all(p.bound is not None and p.bound.dtype == dtype and rows <= p.max_rows for p in products):
            return None
        norms = [final_norm, *(n for layer in layers for n in (layer.norm1, layer.norm2))]
        if not all(n.kernel and n.weight.dtype == dtype and (n.bias is None or n.bias.dtype == dtype) for n in norms):
            return None
        if not all(layer.gelu_approximate == "tanh" and layer.gelu_kernel for layer in layers):
            return None
        if any(c.keys.dtype != dtype or c.keys.shape[0] != rows or not c.keys.is_contiguous() or not c.values.is_contiguous()
               for c in cache.layers):
            return None
        return cls(cache, rows, dtype, layers, final_norm, head, functions)  # type: ignore[arg-type]

    def step(self, x: torch.Tensor) -> torch.Tensor | None:
        """Logits (rows, vocab) after hidden states `x` (rows, emb) at the end of the cache; None where this call
        is not the bound one (the caller then takes the Python step). `x` is overwritten."""
        layers = self.cache.layers
        end = layers[0].length + 1
        if (
            x.dtype != self.dtype or x.shape != self._h.shape or not x.is_contiguous() or end > layers[0].capacity
            or any(c.length + 1 != end or c.keys is not kv[0] or c.values is not kv[1] for c, kv in zip(layers, self._buffers))
        ):
            return None
        logits = torch.empty(self.rows, self.vocab, dtype=self.dtype)
        if self._call(ctypes.byref(self._program), x.data_ptr(), end, logits.data_ptr()) != 0:
            raise MemoryError("decode_step: a kernel found no memory for its scratch")
        for c in layers:
            c.length = end
        return logits
