"""LayerNorm and tanh GELU row by row in C: the operations between a block's products.

A GPT-2 124M decode step runs 25 layer norms and 12 GELUs on rows of 768 and
3072 numbers: microseconds of arithmetic each, but every PyTorch call around
them costs 15 µs or so in a real step, where the weights streaming through the
caches leave the interpreter and the dispatcher cold (about 0.6 ms of a 7.5 ms
int8 step on this project's 2-core machine). These C versions serve the modules
(`KernelLayerNorm`, `KernelGELU`, swapped in by `gptkit.kernels.accelerate`) and
`decode_program`, which calls the same functions from C, so the model and the
flat decode step stay equal bit for bit.

Both compute in float32 (a bfloat16 row is widened as it is read and rounded
once, as PyTorch does): the layer norm's mean and biased variance in two passes
over the row, the GELU as x * sigmoid(2u), which is 0.5 x (1 + tanh u), with a
Cephes-style exp. They are not PyTorch's own bits (tests bound the difference).
Anything they do not serve goes to PyTorch: training (grad mode on), autocast, other dtypes or
devices, tracing, the exact-erf GELU, a machine without a compiler.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from gptkit.kernels import native, thread_pool
from gptkit.layers.gelu import GELU
from gptkit.layers.layer_norm import LayerNorm

PARALLEL_ELEMENTS = 1 << 16  # a prompt's rows: split between threads from this many numbers

SOURCE = r"""
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define VECTOR 1
/* float32 to bfloat16 as float_to_bf16 rounds (to nearest even; NaN kept), 16 at a time. */
INLINE void store16(void *p, int bf16, int64_t i, __m512 v, __mmask16 lanes) {
    if (!bf16) { _mm512_mask_storeu_ps((float *)p + i, lanes, v); return; }
    __m512i u = _mm512_castps_si512(v);
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                        _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))), 16);
    __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    _mm256_mask_storeu_epi16((uint16_t *)p + i, lanes, _mm512_cvtepi32_epi16(rounded));
}
#endif

INLINE void put(void *p, int bf16, int64_t i, float v) {
    if (bf16) ((uint16_t *)p)[i] = float_to_bf16(v);
    else ((float *)p)[i] = v;
}

#if defined(AVX2_ONLY)
/* 8 float32 to p + i, a bfloat16 rounded as float_to_bf16 rounds (to nearest even; NaN kept). */
INLINE void store8(void *p, int bf16, int64_t i, __m256 v) {
    if (!bf16) { _mm256_storeu_ps((float *)p + i, v); return; }
    __m256i u = _mm256_castps_si256(v);
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                                        _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))), 16);
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    /* Every lane is below 2^16 by now, so the saturating pack to 16 bits keeps it as it is. */
    _mm_storeu_si128((__m128i *)((uint16_t *)p + i),
                     _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1)));
}
/* The first count (< 8) lanes of v to p + i: through a buffer, as AVX2 has no masked 16-bit store. */
INLINE void store8_part(void *p, int bf16, int64_t i, __m256 v, int64_t count) {
    float part[8];
    _mm256_storeu_ps(part, v);
    for (int64_t c = 0; c < count; c++) put(p, bf16, i + c, part[c]);
}
/* The tanh GELU of 8 numbers, as the AVX-512 loop computes each of its 16. */
INLINE __m256 gelu8(__m256 v) {
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                             _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), v), _mm256_mul_ps(v, v), v));
    __m256 t = _mm256_mul_ps(_mm256_set1_ps(-2.0f), u);
    __m256 e = exp8_in_range(_mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f)));
    return _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
#endif

/* One row of k: (x - mean) / sqrt(var + eps) * weight + bias, weight and bias optional. */
static void norm_row(const void *x, void *y, int64_t k, const void *weight, const void *bias, float eps, int bf16) {
    float mean, var;
#if defined(VECTOR)
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < k; j += 16) sum = _mm512_add_ps(sum, load16(x, bf16, j, lanes_from(j, k)));
    mean = _mm512_reduce_add_ps(sum) / (float)k;
    __m512 m = _mm512_set1_ps(mean), squares = _mm512_setzero_ps();
    for (int64_t j = 0; j < k; j += 16) {
        __mmask16 lanes = lanes_from(j, k);
        __m512 d = _mm512_maskz_sub_ps(lanes, load16(x, bf16, j, lanes), m);
        squares = _mm512_fmadd_ps(d, d, squares);
    }
    var = _mm512_reduce_add_ps(squares) / (float)k;
    __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(var + eps));
    for (int64_t j = 0; j < k; j += 16) {
        __mmask16 lanes = lanes_from(j, k);
        __m512 v = _mm512_mul_ps(_mm512_sub_ps(load16(x, bf16, j, lanes), m), rstd);
        if (weight) v = _mm512_mul_ps(v, load16(weight, bf16, j, lanes));
        if (bias) v = _mm512_add_ps(v, load16(bias, bf16, j, lanes));
        store16(y, bf16, j, v, lanes);
    }
#elif defined(AVX2_ONLY)
    /* Four sums apart, each over every fourth vector (short chains of dependent adds), the leftover whole
       vectors into the first ones and the partial last one (zeros past k) into the fourth: an order fixed by
       k alone, so a row gets the same bits in any batch. */
    const int64_t whole = k / 8 * 8, rest = k - whole;
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t j = 0;
    for (; j + 32 <= whole; j += 32)
        for (int c = 0; c < 4; c++) s[c] = _mm256_add_ps(s[c], load8(x, bf16, j + 8 * c));
    for (int c = 0; j < whole; j += 8, c++) s[c] = _mm256_add_ps(s[c], load8(x, bf16, j));
    if (rest) s[3] = _mm256_add_ps(s[3], load8_part(x, bf16, whole, rest));
    mean = reduce8(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]))) / (float)k;
    __m256 m = _mm256_set1_ps(mean);
    for (int c = 0; c < 4; c++) s[c] = _mm256_setzero_ps();
    for (j = 0; j + 32 <= whole; j += 32)
        for (int c = 0; c < 4; c++) {
            __m256 d = _mm256_sub_ps(load8(x, bf16, j + 8 * c), m);
            s[c] = _mm256_fmadd_ps(d, d, s[c]);
        }
    for (int c = 0; j < whole; j += 8, c++) {
        __m256 d = _mm256_sub_ps(load8(x, bf16, j), m);
        s[c] = _mm256_fmadd_ps(d, d, s[c]);
    }
    if (rest) {  /* the padding's 0 - mean must not count */
        __m256 d = _mm256_and_ps(_mm256_sub_ps(load8_part(x, bf16, whole, rest), m), lanes8(rest));
        s[3] = _mm256_fmadd_ps(d, d, s[3]);
    }
    var = reduce8(_mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]))) / (float)k;
    __m256 rstd = _mm256_set1_ps(1.0f / sqrtf(var + eps));
    for (j = 0; j < whole; j += 8) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(load8(x, bf16, j), m), rstd);
        if (weight) v = _mm256_mul_ps(v, load8(weight, bf16, j));
        if (bias) v = _mm256_add_ps(v, load8(bias, bf16, j));
        store8(y, bf16, j, v);
    }
    if (rest) {
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(load8_part(x, bf16, whole, rest), m), rstd);
        if (weight) v = _mm256_mul_ps(v, load8_part(weight, bf16, whole, rest));
        if (bias) v = _mm256_add_ps(v, load8_part(bias, bf16, whole, rest));
        store8_part(y, bf16, whole, v, rest);
    }
#else
    float sum = 0.0f, squares = 0.0f;
    for (int64_t j = 0; j < k; j++) sum += vector_at(x, bf16, j);
    mean = sum / (float)k;
    for (int64_t j = 0; j < k; j++) { float d = vector_at(x, bf16, j) - mean; squares += d * d; }
    var = squares / (float)k;
    float rstd = 1.0f / sqrtf(var + eps);
    for (int64_t j = 0; j < k; j++) {
        float v = (vector_at(x, bf16, j) - mean) * rstd;
        if (weight) v *= vector_at(weight, bf16, j);
        if (bias) v += vector_at(bias, bf16, j);
        put(y, bf16, j, v);
    }
#endif
}

/* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x / (1 + exp(-2u)). */
static void gelu_span(const void *x, void *y, int64_t begin, int64_t end, int bf16) {
    const float c = 0.7978845608028654f;
    int64_t j = begin;
#if defined(VECTOR)
    for (; j < end; j += 16) {
        __mmask16 lanes = lanes_from(j, end);
        __m512 v = load16(x, bf16, j, lanes);
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(c), _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v), v));
        __m512 t = _mm512_mul_ps(_mm512_set1_ps(-2.0f), u);
        __m512 e = exp16_in_range(_mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f)));
        store16(y, bf16, j, _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), lanes);
    }
#elif defined(AVX2_ONLY)
    (void)c;
    for (; j + 8 <= end; j += 8) store8(y, bf16, j, gelu8(load8(x, bf16, j)));
    if (j < end) store8_part(y, bf16, j, gelu8(load8_part(x, bf16, j, end - j)), end - j);  /* lane by lane: the same bits */
#else
    for (; j < end; j++) {
        float v = vector_at(x, bf16, j);
        float u = c * (0.044715f * v * v * v + v);
        float t = -2.0f * u;
        t = t < -87.3f ? -87.3f : t > 88.3f ? 88.3f : t;
        put(y, bf16, j, v / (1.0f + expf(t)));
    }
#endif
}

typedef struct { const void *x; void *y; int64_t m, k; const void *weight, *bias; float eps; int bf16; } Rows;

static void norm_share(void *arg, int t, int threads) {
    const Rows *r = (const Rows *)arg;
    const size_t row_bytes = (size_t)r->k * (r->bf16 ? 2 : 4);
    for (int64_t i = r->m * t / threads; i < r->m * (t + 1) / threads; i++)
        norm_row((const char *)r->x + i * row_bytes, (char *)r->y + i * row_bytes, r->k, r->weight, r->bias, r->eps, r->bf16);
}

static void gelu_share(void *arg, int t, int threads) {
    const Rows *r = (const Rows *)arg;
    int64_t count = r->m * r->k, begin = count * t / threads / 16 * 16, end = t == threads - 1 ? count : count * (t + 1) / threads / 16 * 16;
    gelu_span(r->x, r->y, begin, end, r->bf16);
}

/* y (m, k) = the layer norm of each row of x (m, k); both contiguous, y may be x. */
void layer_norm_rows(int bf16, const void *x, void *y, int64_t m, int64_t k, const void *weight, const void *bias,
                     float eps, int threads) {
    Rows r = {x, y, m, k, weight, bias, eps, bf16};
    if (threads > m) threads = (int)m;
    parallel(norm_share, &r, threads);
}

/* y = tanh-GELU(x) for m x k contiguous numbers; y may be x. */
void gelu_rows(int bf16, const void *x, void *y, int64_t m, int64_t k, int threads) {
    Rows r = {x, y, m, k, NULL, NULL, 0.0f, bf16};
    parallel(gelu_share, &r, threads);
}
"""


def _build() -> ctypes.CDLL | None:
    lib = native.build("rowwise", SOURCE)
    if lib is None:
        return None
    lib.layer_norm_rows.restype = None
    lib.layer_norm_rows.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_float, ctypes.c_int,
    ]
    lib.gelu_rows.restype = None
    lib.gelu_rows.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    thread_pool.connect(lib)
    return lib


LIBRARY = native.Library(_build)


def available() -> bool:
    return LIBRARY.get() is not None


def _serves(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether the C functions take `x` (and the parameters): plain CPU float32 or bfloat16 tensors, one dtype,
    under no_grad or inference mode, no autocast (which would run PyTorch's layer norm in float32), no tracing."""
    if torch.compiler.is_compiling():  # first: a traced call reads nothing else
        return False
    tensors = [x, *(p for p in params if p is not None)]
    return (
        x.dtype in (torch.float32, torch.bfloat16)
        and all(t.dtype == x.dtype and t.device.type == "cpu" for t in tensors)
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and not torch.is_grad_enabled()  # inference only: a training step's norms stay PyTorch's, bit for bit
        and available()
    )


def threads_for(elements: int) -> int:
    return torch.get_num_threads() if elements >= PARALLEL_ELEMENTS else 1


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`F.layer_norm` over the last dimension, in C where it serves (see the module docstring)."""
    k = x.shape[-1]
    if not (_serves(x, weight, bias) and all(p is None or p.shape == (k,) for p in (weight, bias))):
        return F.layer_norm(x, (k,), weight, bias, eps)
    x = x.contiguous()
    out = torch.empty_like(x)
    m = x.numel() // k
    LIBRARY.get().layer_norm_rows(  # type: ignore[union-attr]
        x.dtype == torch.bfloat16, x.data_ptr(), out.data_ptr(), m, k,
        None if weight is None else weight.contiguous().data_ptr(), None if bias is None else bias.contiguous().data_ptr(),
        eps, threads_for(x.numel()),
    )
    return out


def gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """`F.gelu(x, approximate)`: the tanh form in C where it serves, the exact one always through PyTorch."""
    if approximate != "tanh" or not _serves(x):
        return F.gelu(x, approximate=approximate)
    x = x.contiguous()
    out = torch.empty_like(x)
    LIBRARY.get().gelu_rows(x.dtype == torch.bfloat16, x.data_ptr(), out.data_ptr(), 1, x.numel(), threads_for(x.numel()))  # type: ignore[union-attr]
    return out


class KernelLayerNorm(LayerNorm):
    """`LayerNorm` through `layer_norm` (C where it serves); the same parameters and state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


class KernelGELU(GELU):
    """`GELU` through `gelu` (C for the tanh form where it serves)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, self.approximate)
