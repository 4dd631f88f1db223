"""One query per row against a KV cache: a decode step's attention on CPU, as one C loop per row and head.

`F.scaled_dot_product_attention` takes a decode step's one query through its CPU
flash-attention kernel, built for long queries: on this project's 2-core AMD EPYC,
GPT-2 124M shapes (12 heads of 64) at 80 cached keys, it took about 90 µs a layer
for one row and 290 µs for a batch of 8, a tenth of a float32 batch-1 step and a
sixth of a batch-8 one, for arithmetic that takes a few microseconds. So the C loop
below computes softmax(q·kᵀ / sqrt(head_dim))·v for each (row, head) in turn: the
scores key by key, their softmax, then the values weighted, summed in float32 (a
bfloat16 cache is widened as it is read, and the result rounded once). Strided q,
k and v are read where they lie: no copies.

Each (row, head) is computed alone and in the same order whatever else is in the
batch, and a key outside a row's mask adds exactly nothing, so a sequence gets the
same attention, bit for bit, decoded alone or with others (the promise of
continuous batching). `CPUAttention` (one-query decoding) and the flat decode step
both call `one_query_attention`, so those two agree bit for bit too.

Where the C kernel cannot be built (`gptkit.kernels.native`), or the tensors are
not plain CPU float32 / bfloat16 ones, SDPA serves, a bfloat16 query on float32
copies from `FLOAT32_FROM_ROW_KEYS` row-keys (SDPA's bfloat16 kernel is the slower
of the two past that).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from gptkit.kernels import native, thread_pool
from gptkit.layers.kv_cache import LayerKVCache

SOURCE = r"""
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define VECTOR 1
#endif

#define PREFETCH_KEYS 8
#define EXP_FLOOR -87.3f  /* exp of anything below is under float32's smallest normal: taken as 0 */

#if defined(VECTOR)
/* exp(x) for x <= 0, anything below EXP_FLOOR exactly 0. */
INLINE __m512 exp16(__m512 x) {
    __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_FLOOR), _CMP_GE_OQ);
    return _mm512_maskz_mov_ps(kept, exp16_in_range(_mm512_max_ps(x, _mm512_set1_ps(EXP_FLOOR))));
}
#elif defined(AVX2_ONLY)
/* exp(x) for x <= 0, anything below EXP_FLOOR (and -inf, a masked key) exactly 0. */
INLINE __m256 exp8(__m256 x) {
    __m256 kept = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_FLOOR), _CMP_GE_OQ);
    return _mm256_and_ps(kept, exp8_in_range(_mm256_max_ps(x, _mm256_set1_ps(EXP_FLOOR))));
}
#endif

/* q . k over dim, in blocks of 64 (four vectors summed apart, then together). */
INLINE float dot(const float *q, const void *k, int bf16, int64_t dim) {
#if defined(VECTOR)
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t d0 = 0; d0 < dim; d0 += 64)
        for (int c = 0; c < 4; c++) {
            __mmask16 lanes = lanes_from(d0 + 16 * c, dim);
            acc[c] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, q + d0 + 16 * c), load16(k, bf16, d0 + 16 * c, lanes), acc[c]);
        }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
#elif defined(AVX2_ONLY)
    /* Blocks of 32 in four vectors summed apart; past the last block, the whole vectors left and then the
       partial one (zeros past dim) each into the next: the same order for every key of this dim. */
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t d = 0;
    for (; d + 32 <= dim; d += 32)
        for (int c = 0; c < 4; c++) acc[c] = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8 * c), load8(k, bf16, d + 8 * c), acc[c]);
    int c = 0;
    for (; d + 8 <= dim; d += 8, c++) acc[c] = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k, bf16, d), acc[c]);
    if (d < dim) acc[c] = _mm256_fmadd_ps(load8_part(q, 0, d, dim - d), load8_part(k, bf16, d, dim - d), acc[c]);
    return reduce8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
#else
    float total = 0.0f;
    for (int64_t d = 0; d < dim; d++) total += q[d] * vector_at(k, bf16, d);
    return total;
#endif
}

#if defined(AVX2_ONLY)
/* out[d0 ..] = sum_j weights[j] v_j[d0 ..] over `whole` vectors of 8 and `rest` (< 8) numbers past them; with
   constants for whole and rest at a call site the sums stay in registers. */
INLINE void weighted_block8(float *out, const float *weights, const char *v, int64_t key_bytes, int bf16, int64_t keys,
                            int64_t d0, const int whole, const int rest) {
    __m256 acc[8];
    for (int c = 0; c < 8; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t j = 0; j < keys; j++) {
        if (weights[j] == 0.0f) continue;
        __m256 w = _mm256_set1_ps(weights[j]);
        const char *row = v + (size_t)j * key_bytes;
        for (int c = 0; c < whole; c++) acc[c] = _mm256_fmadd_ps(w, load8(row, bf16, d0 + 8 * c), acc[c]);
        if (rest) acc[whole] = _mm256_fmadd_ps(w, load8_part(row, bf16, d0 + 8 * whole, rest), acc[whole]);
    }
    for (int c = 0; c < whole; c++) _mm256_storeu_ps(out + d0 + 8 * c, acc[c]);
    if (rest) {
        float part[8];
        _mm256_storeu_ps(part, acc[whole]);
        memcpy(out + d0 + 8 * whole, part, (size_t)rest * sizeof(float));
    }
}
#endif

/* out[d] = sum_j weights[j] v_j[d] over the keys whose weight is not 0, for each block of 64 of dim held in
   registers across all the keys. */
INLINE void weighted_sum(float *out, const float *weights, const char *v, int64_t key_bytes, int bf16, int64_t keys,
                         int64_t dim) {
#if defined(VECTOR)
    for (int64_t d0 = 0; d0 < dim; d0 += 64) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        __mmask16 lanes[4];
        for (int c = 0; c < 4; c++) lanes[c] = lanes_from(d0 + 16 * c, dim);
        for (int64_t j = 0; j < keys; j++) {
            if (weights[j] == 0.0f) continue;
            __m512 w = _mm512_set1_ps(weights[j]);
            const char *row = v + (size_t)j * key_bytes;
            for (int c = 0; c < 4; c++) acc[c] = _mm512_fmadd_ps(w, load16(row, bf16, d0 + 16 * c, lanes[c]), acc[c]);
        }
        for (int c = 0; c < 4; c++) _mm512_mask_storeu_ps(out + d0 + 16 * c, lanes[c], acc[c]);
    }
#elif defined(AVX2_ONLY)
    /* Blocks of 64 in eight registers (of AVX2's sixteen) across all the keys: one pass over the values for a
       head of 64. The block past the last whole one (a dim not a multiple of 64) takes its whole vectors,
       then its partial one through a zeroed buffer, kept out of `out` past dim. */
    int64_t d0 = 0;
    for (; d0 + 64 <= dim; d0 += 64) weighted_block8(out, weights, v, key_bytes, bf16, keys, d0, 8, 0);
    if (d0 < dim) weighted_block8(out, weights, v, key_bytes, bf16, keys, d0, (int)((dim - d0) / 8), (int)((dim - d0) % 8));
#else
    for (int64_t d = 0; d < dim; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < keys; j++)
        if (weights[j] != 0.0f)
            for (int64_t d = 0; d < dim; d++) out[d] += weights[j] * vector_at(v + (size_t)j * key_bytes, bf16, d);
#endif
}

/* Scores become their exponentials less the largest; returns their sum. A masked score is -inf: it adds 0. */
INLINE float exponentiate(float *scores, int64_t keys, float largest) {
    int64_t j = 0;
#if defined(VECTOR)
    __m512 sums = _mm512_setzero_ps();
    __m512 top = _mm512_set1_ps(largest);
    for (; j < keys; j += 16) {  /* the last, partial vector masked: every key takes the same path */
        __mmask16 lanes = lanes_from(j, keys);
        __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, scores + j), top));
        e = _mm512_maskz_mov_ps(lanes, e);
        _mm512_mask_storeu_ps(scores + j, lanes, e);
        sums = _mm512_add_ps(sums, e);
    }
    return _mm512_reduce_add_ps(sums);
#elif defined(AVX2_ONLY)
    __m256 sums = _mm256_setzero_ps();
    __m256 top = _mm256_set1_ps(largest);
    for (; j + 8 <= keys; j += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), top));
        _mm256_storeu_ps(scores + j, e);
        sums = _mm256_add_ps(sums, e);
    }
    if (j < keys) {  /* the last, partial vector through a buffer, its padding 0: every key takes the same path */
        float part[8];
        __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(load8_part(scores, 0, j, keys - j), top)), lanes8(keys - j));
        _mm256_storeu_ps(part, e);
        memcpy(scores + j, part, (size_t)(keys - j) * sizeof(float));
        sums = _mm256_add_ps(sums, e);
    }
    return reduce8(sums);
#else
    float total = 0.0f;
    for (; j < keys; j++) {
        float x = scores[j] - largest;
        scores[j] = x < EXP_FLOOR ? 0.0f : expf(x);
        total += scores[j];
    }
    return total;
#endif
}

typedef struct {
    int bf16; const void *q, *k, *v; const uint8_t *mask; void *out;
    int64_t heads, keys, dim;
    int64_t q_row, q_head, k_row, k_head, k_key, v_row, v_head, v_key;  /* strides, in elements */
    float scale;
    /* Where not NULL, this step's key and value (rows, heads, dim; strides by row and head), written into
       k and v at the last key's position before it is attended: the cache's update and the attention in one. */
    const void *new_k, *new_v;
    int64_t new_k_row, new_k_head, new_v_row, new_v_head;
} Attention;

/* One (row, head): `scratch` holds keys + 2 x dim floats. */
static void attend(const Attention *a, int64_t row, int64_t head, float *scratch) {
    const size_t es = a->bf16 ? 2 : 4;
    float *scores = scratch, *q = scratch + a->keys, *acc = q + a->dim;
    const char *qp = (const char *)a->q + (size_t)(row * a->q_row + head * a->q_head) * es;
    const char *kp = (const char *)a->k + (size_t)(row * a->k_row + head * a->k_head) * es;
    const char *vp = (const char *)a->v + (size_t)(row * a->v_row + head * a->v_head) * es;
    const uint8_t *mask = a->mask ? a->mask + row * a->keys : NULL;
    const size_t key_bytes = (size_t)a->k_key * es, value_bytes = (size_t)a->v_key * es, row_bytes = (size_t)a->dim * es;
    if (a->new_k) {
        const size_t last = (size_t)(a->keys - 1);
        memcpy((char *)kp + last * key_bytes,
               (const char *)a->new_k + (size_t)(row * a->new_k_row + head * a->new_k_head) * es, row_bytes);
        memcpy((char *)vp + last * value_bytes,
               (const char *)a->new_v + (size_t)(row * a->new_v_row + head * a->new_v_head) * es, row_bytes);
    }
    for (int64_t d = 0; d < a->dim; d++) q[d] = vector_at(qp, a->bf16, d);
    float largest = -INFINITY;
    for (int64_t j = 0; j < a->keys; j++) {
#if defined(VECTOR) || defined(AVX2_ONLY)
        /* The cache streams in from memory (the weights have swept it from every cache): ask for the key
           PREFETCH_KEYS ahead and for this key's value, which the weighted sum reads next. */
        if (j + PREFETCH_KEYS < a->keys)
            for (size_t line = 0; line < row_bytes; line += 64) _mm_prefetch(kp + (j + PREFETCH_KEYS) * key_bytes + line, _MM_HINT_T0);
        for (size_t line = 0; line < row_bytes; line += 64) _mm_prefetch(vp + j * value_bytes + line, _MM_HINT_T0);
#endif
        if (mask && !mask[j]) { scores[j] = -INFINITY; continue; }
        scores[j] = dot(q, kp + j * key_bytes, a->bf16, a->dim) * a->scale;
        if (scores[j] > largest) largest = scores[j];
    }
    float total = 0.0f;  /* a row with no key to attend: every weight 0, and zeros out */
    if (largest == -INFINITY) memset(scores, 0, (size_t)a->keys * sizeof(float));
    else total = exponentiate(scores, a->keys, largest);
    weighted_sum(acc, scores, vp, (int64_t)value_bytes, a->bf16, a->keys, a->dim);
    float inverse = total > 0.0f ? 1.0f / total : 0.0f;
    int64_t o = (row * a->heads + head) * a->dim;
    for (int64_t d = 0; d < a->dim; d++) {
        float value = acc[d] * inverse;
        if (a->bf16) ((uint16_t *)a->out)[o + d] = float_to_bf16(value);
        else ((float *)a->out)[o + d] = value;
    }
}

typedef struct { const Attention *a; int64_t pairs; float *scratch; size_t per_thread; } Share;

/* Thread t's (row, head) pairs: a contiguous share, each pair computed alone whichever thread takes it. */
static void attend_share(void *arg, int t, int threads) {
    const Share *s = (const Share *)arg;
    for (int64_t p = s->pairs * t / threads; p < s->pairs * (t + 1) / threads; p++)
        attend(s->a, p / s->a->heads, p % s->a->heads, s->scratch + (size_t)t * s->per_thread);
}

/* out (rows, heads, dim) contiguous; mask (rows, keys) bytes or NULL. Returns 0, or -1 without scratch memory. */
int attend_one_query(const Attention *a, int64_t rows, int threads) {
    int64_t pairs = rows * a->heads;
    if (threads > pairs) threads = (int)pairs;
    if (threads < 1) threads = 1;
    size_t per_thread = (size_t)(a->keys + 2 * a->dim);
    float *scratch = (float *)malloc((size_t)threads * per_thread * sizeof(float));
    if (!scratch) return -1;
    Share share = {a, pairs, scratch, per_thread};
    parallel(attend_share, &share, threads);
    free(scratch);
    return 0;
}

/* `attend_one_query` over the first `keys` keys, on as many of `threads` as the work is worth: one below
   PARALLEL_WORK. What `_attend` calls, and `decode_program` with an Attention it keeps from step to step. */
int attend_keys(Attention *a, int64_t keys, int64_t rows, int threads) {
    a->keys = keys;
    return attend_one_query(a, rows, rows * a->heads * keys * a->dim >= PARALLEL_WORK ? threads : 1);
}
"""


class _Attention(ctypes.Structure):
    _fields_ = [
        ("bf16", ctypes.c_int), ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
        ("mask", ctypes.c_void_p), ("out", ctypes.c_void_p),
        *((name, ctypes.c_int64) for name in (
            "heads", "keys", "dim", "q_row", "q_head", "k_row", "k_head", "k_key", "v_row", "v_head", "v_key",
        )),
        ("scale", ctypes.c_float),
        ("new_k", ctypes.c_void_p), ("new_v", ctypes.c_void_p),
        *((name, ctypes.c_int64) for name in ("new_k_row", "new_k_head", "new_v_row", "new_v_head")),
    ]


FLOAT32_FROM_ROW_KEYS = 64
PARALLEL_WORK = 1 << 14  # rows x heads x keys x head_dim from which two threads beat one: GPT-2 124M shapes at 80 keys, one row, 40 against 55 us


def _build() -> ctypes.CDLL | None:
    lib = native.build("decode_attention", f"#define PARALLEL_WORK {PARALLEL_WORK}\n" + SOURCE)
    if lib is None:
        return None
    lib.attend_keys.restype = ctypes.c_int
    lib.attend_keys.argtypes = [ctypes.POINTER(_Attention), ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    thread_pool.connect(lib)
    return lib


_LIBRARY = native.Library(_build)


def available() -> bool:
    return _LIBRARY.get() is not None


def _kernel_takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> bool:
    rows, heads, queries, dim = q.shape
    return (
        not torch.compiler.is_compiling()
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)
        and q.dtype == k.dtype == v.dtype
        and queries == 1
        and k.shape == v.shape == (rows, heads, k.shape[2], dim)
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and (key_mask is None or (key_mask.dtype == torch.bool and key_mask.shape == (rows, 1, 1, k.shape[2])))
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        and available()
    )


def _arguments(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor,
    new_k: torch.Tensor | None, new_v: torch.Tensor | None,
) -> _Attention:
    """The C call's arguments for these tensors (`mask` (rows, keys) contiguous or None; new_k and new_v
    appended at the last key where given)."""
    heads, keys, dim = q.shape[1], k.shape[2], q.shape[3]
    args = _Attention(
        q.dtype == torch.bfloat16, q.data_ptr(), k.data_ptr(), v.data_ptr(), None if mask is None else mask.data_ptr(),
        out.data_ptr(), heads, keys, dim, q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), dim**-0.5,
    )
    if new_k is not None and new_v is not None:
        args.new_k, args.new_v = new_k.data_ptr(), new_v.data_ptr()
        args.new_k_row, args.new_k_head, args.new_v_row, args.new_v_head = (*new_k.stride()[:2], *new_v.stride()[:2])
    return args


def _attend(args: _Attention, rows: int) -> None:
    """The C call, on as many threads as its work is worth (`attend_keys` chooses, by `PARALLEL_WORK`)."""
    if _LIBRARY.get().attend_keys(ctypes.byref(args), args.keys, rows, torch.get_num_threads()) != 0:  # type: ignore[union-attr]
        raise MemoryError(f"one_query_attention: no memory for {args.keys} scores")


def _kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
    new_k: torch.Tensor | None = None, new_v: torch.Tensor | None = None,
) -> torch.Tensor:
    rows, heads, _, dim = q.shape
    mask = None if key_mask is None else key_mask.reshape(rows, k.shape[2]).contiguous()
    out = torch.empty(rows, heads, 1, dim, dtype=q.dtype)
    _attend(_arguments(q, k, v, mask, out, new_k, new_v), rows)
    return out


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q·kᵀ / sqrt(head_dim))·v for q (batch, heads, 1, head_dim) and k, v (batch, heads, keys, head_dim).

    `key_mask`, (batch, 1, 1, keys) booleans, keeps each row to its own keys (a ragged batch); without
    it every key is attended, which is the causal mask for a query at the newest position.
    """
    if k.numel() and _kernel_takes(q, k, v, key_mask):
        return _kernel(q, k, v, key_mask)
    if q.dtype == torch.bfloat16 and q.shape[0] * k.shape[-2] >= FLOAT32_FROM_ROW_KEYS:
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=key_mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)


def attend_appending(q: torch.Tensor, new_k: torch.Tensor, new_v: torch.Tensor, cache: LayerKVCache) -> torch.Tensor:
    """`cache.update(new_k, new_v)` then `one_query_attention` over all its keys, in one C call where it serves.

    For the flat decode step on a plain (not ragged) cache: the same cache contents and the same
    attention, bit for bit, as the two calls, without the two slice copies between them (about
    20 µs a layer here, a quarter of a millisecond a token).
    """
    end = cache.length + 1
    keys, values = cache.keys[:, :, :end], cache.values[:, :, :end]
    fits = (
        new_k.shape == new_v.shape == q.shape and new_k.dtype == keys.dtype and new_v.dtype == keys.dtype
        and new_k.stride(-1) == new_v.stride(-1) == 1 and end <= cache.capacity
    )
    if not (fits and _kernel_takes(q, keys, values, None)):
        keys, values = cache.update(new_k, new_v)
        return one_query_attention(q, keys, values)
    out = _kernel(q, keys, values, None, new_k, new_v)
    cache.length = end
    return out


class AppendingAttention:
    """`attend_appending` for one layer's plain cache, with the C call's arguments gathered once.

    A decode step attends 12 times for GPT-2 124M. Checking the tensors and filling the
    argument struct cost about 20 µs a call here with warm caches and 40 µs in a real
    step, where the weights stream through the caches between calls; the C call itself
    took 16-34 µs at 80 keys. Bound once per cache (the flat decode step binds each
    layer's on first use), a call sets only what changes from step to step: the
    tensors' addresses and the number of keys. The arguments are otherwise those
    `attend_appending` passes, so the results and the cache are the same bit for bit.
    Anything unlike the bound call (other shapes or strides, a replaced buffer, a full
    cache) goes through `attend_appending`.
    """

    def __init__(self, cache: LayerKVCache, q: torch.Tensor, new_k: torch.Tensor, new_v: torch.Tensor) -> None:
        self.cache = cache
        self._keys, self._values = cache.keys, cache.values
        keys, values = self._keys[:, :, :1], self._values[:, :, :1]
        self._serves = (
            _kernel_takes(q, keys, values, None)
            and new_k.shape == new_v.shape == q.shape and new_k.dtype == new_v.dtype == keys.dtype
            and new_k.stride(-1) == new_v.stride(-1) == 1
        )
        self._layout = (q.shape, q.stride(), new_k.stride(), new_v.stride(), q.dtype)
        self._rows, self._out_shape = q.shape[0], q.shape
        # Bound with this step's tensors and one key; each call sets its own addresses and key count.
        self._args = _arguments(q, keys, values, None, q, new_k, new_v)

    def __call__(self, q: torch.Tensor, new_k: torch.Tensor, new_v: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        end = cache.length + 1
        same = (
            self._serves and end <= cache.capacity and cache.keys is self._keys and cache.values is self._values
            and (q.shape, q.stride(), new_k.stride(), new_v.stride(), q.dtype) == self._layout
            and not (torch.is_grad_enabled() and q.requires_grad)
        )
        if not same:
            return attend_appending(q, new_k, new_v, cache)
        out = torch.empty(self._out_shape, dtype=q.dtype)
        args = self._args
        args.q, args.out, args.keys = q.data_ptr(), out.data_ptr(), end
        args.new_k, args.new_v = new_k.data_ptr(), new_v.data_ptr()
        _attend(args, self._rows)
        cache.length = end
        return out
