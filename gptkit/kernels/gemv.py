"""`int8_gemv` and `float_gemv`: a few rows times an int8, bfloat16 or float32 weight, streamed once, summed in float32.

A decode step multiplies one row per sequence by every weight matrix, so its speed
is the speed at which the weights come in from memory. PyTorch's kernels for these
layouts do not stream: `aten._weight_int8pack_mm` walks an int8 weight in blocks
that defeat the hardware prefetcher (on this project's Sapphire Rapids machine it
read GPT-2 124M's int8 block weights at about 4 GB/s, slower than float32's four
times as many bytes through MKL, and in float32 it has no vectorised path at all),
and oneDNN's one-row bfloat16 products read about 8 GB/s where float32 reads 13.
This kernel reads each weight row once, front to back, widens its int8 or bfloat16
values to float32 in registers and multiplies them into every input row, so that
one pass over memory serves the whole batch; an int8 row's scale (and the bias) is
applied to each finished sum, and a bfloat16 result is rounded once, at the end.
For one or two rows the weight is read row after row, one stream front to back (the
pattern the hardware prefetcher follows best: reading four rows side by side, as the
first version did, halved the rate); for more rows the arithmetic counts too, and
groups of three weight rows are multiplied into four input rows at a time in
register tiles while the next group is prefetched.

Each output is summed in one order whatever the number of rows and the tile that
makes it, so a row gets the same bits alone and in a batch: a sequence decoded with
others gets the logits it gets alone, bit for bit, the promise of continuous
batching. An earlier version kept four partial sums for one row, two for two rows
and one in the many-row tiles, which moved a GPT-2 row's sums by up to 2e-5 with
the batch. Two partial sums for every row cost one row in float32 2-5% (all 49
products of a GPT-2 124M step, interleaved: 18.6-19.3 ms against 18.2-18.3) and
made eight rows as fast or faster: float32 23.1 against 23.1 ms, int8 12.4-12.8
against 12.9-13.3, bfloat16 17.4-17.8 against 18.6.

On a CPU with AVX2 and FMA but not AVX-512 (AMD's Zen 1-3, most laptops) the same
loops run on 8-wide vectors, in 3 x 2 tiles for many rows (16 vector registers, not
32). Before that path, such a CPU ran the plain C loop, one multiply-add at a time:
on a 2-core Zen 3, GPT-2 124M decoded at 10.5 tokens/s in float32, half of Hugging
Face's 20.5, and int8 no faster; the 49 products of a step took 180 ms on one thread
against 46 ms now.

The C source below is compiled once per machine (`gptkit.kernels.native`); where
it cannot be, `available()` is False and callers use PyTorch's kernels instead. A weight of 256 KiB or more is split between
`torch.get_num_threads()` threads, each streaming its own contiguous part: one core
alone does not draw all of the memory bandwidth.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from gptkit.kernels import native, thread_pool

SOURCE = r"""
#if defined(AVX2_ONLY)
/* 16 vector registers, not 32: 3 x 2 tiles of two chains keep 12 sums, 2 weight vectors and an input in them. */
#define MR_MAX 3  /* input rows in a register tile */
#define NR_MAX 2  /* weight rows in a register tile */
#else
#define MR_MAX 4
#define NR_MAX 3
#endif
#define CHAINS 2  /* partial sums per output, interleaved: they hide the FMA's latency for a single row */
#define AHEAD_BYTES 4096  /* the weight is prefetched this far ahead: int8 products 10-18% faster than the hardware prefetcher alone */

/* Vectors (inputs, scales, biases, outputs) are float32 or bfloat16, as the model's dtype; sums are float32. */
/* The weight's element types; one element as a float: int8 (scaled later), bfloat16 (its upper 16 bits), float32.
   BF16_PAIRS is a bfloat16 weight times bfloat16 rows where the CPU multiplies bfloat16 pairs itself. */
enum { INT8 = 0, BF16 = 1, F32 = 2, BF16_PAIRS = 3 };
INLINE float weight_at(const void *w, int kind, int64_t i) {
    if (kind == BF16) return bf16_to_float(((const uint16_t *)w)[i]);
    if (kind == F32) return ((const float *)w)[i];
    return (float)((const int8_t *)w)[i];
}
#if defined(__AVX512F__)
INLINE __m512 weight16(const void *w, int kind, int64_t i) {
    if (kind == BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i))), 16));
    if (kind == F32) return _mm512_loadu_ps((const float *)w + i);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)w + i))));
}
#elif defined(AVX2_ONLY)
INLINE __m256 weight8(const void *w, int kind, int64_t i) {
    if (kind != INT8) return load8(w, kind == BF16, i);
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)w + i))));
}
#endif

INLINE size_t element_size(int kind) { return kind == F32 ? 4 : kind == INT8 ? 1 : 2; }

/* sums[r][c] = x[r] . w[c] for mr input rows and nr weight rows. Every sum is taken in one order whatever mr
   and nr are: CHAINS partial sums over interleaved vectors, what is left in whole vectors on the first, the
   partial sums added first to last, the vector's lanes reduced, then the elements past the last vector, each
   with fmaf (left to itself the compiler fuses a multiply-add at some call sites and not at others). So a row
   gets the same bits alone and in a batch of any size (the promise of continuous batching). With kind, mr and
   nr constants at each call site the accumulators stay in registers. `ahead`, where not NULL, is as many
   weight rows further on: each of their cache lines is prefetched as the same line of these is read. x is
   float32 here. */
INLINE void tile(const float *x, int64_t k, const void *w, const int kind, const int mr, const int nr,
                 const void *ahead, float sums[MR_MAX][NR_MAX]) {
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512 acc[MR_MAX][NR_MAX][CHAINS];
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nr; c++)
            for (int q = 0; q < CHAINS; q++) acc[r][c][q] = _mm512_setzero_ps();
    const size_t es = element_size(kind);
    for (; j + 16 * CHAINS <= k; j += 16 * CHAINS) {
        for (int q = 0; ahead && q < CHAINS; q++)  /* each cache line of the rows ahead, once */
            if (((j + 16 * q) * es) % 64 == 0)
                for (int c = 0; c < nr; c++) _mm_prefetch((const char *)ahead + (c * k + j + 16 * q) * es, WEIGHT_PREFETCH);
        for (int q = 0; q < CHAINS; q++) {
            __m512 wv[NR_MAX];
            for (int c = 0; c < nr; c++) wv[c] = weight16(w, kind, c * k + j + 16 * q);
            for (int r = 0; r < mr; r++) {
                __m512 xv = _mm512_loadu_ps(x + r * k + j + 16 * q);
                for (int c = 0; c < nr; c++) acc[r][c][q] = _mm512_fmadd_ps(xv, wv[c], acc[r][c][q]);
            }
        }
    }
    for (; j + 16 <= k; j += 16) {
        __m512 wv[NR_MAX];
        for (int c = 0; c < nr; c++) wv[c] = weight16(w, kind, c * k + j);
        for (int r = 0; r < mr; r++) {
            __m512 xv = _mm512_loadu_ps(x + r * k + j);
            for (int c = 0; c < nr; c++) acc[r][c][0] = _mm512_fmadd_ps(xv, wv[c], acc[r][c][0]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nr; c++) {
            __m512 total = acc[r][c][0];
            for (int q = 1; q < CHAINS; q++) total = _mm512_add_ps(total, acc[r][c][q]);
            sums[r][c] = _mm512_reduce_add_ps(total);
        }
#elif defined(AVX2_ONLY)
    /* The same order as above, in 8-wide vectors. */
    __m256 acc[MR_MAX][NR_MAX][CHAINS];
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nr; c++)
            for (int q = 0; q < CHAINS; q++) acc[r][c][q] = _mm256_setzero_ps();
    const size_t es = element_size(kind);
    for (; j + 8 * CHAINS <= k; j += 8 * CHAINS) {
        for (int q = 0; ahead && q < CHAINS; q++)
            if (((j + 8 * q) * es) % 64 == 0)
                for (int c = 0; c < nr; c++) _mm_prefetch((const char *)ahead + (c * k + j + 8 * q) * es, WEIGHT_PREFETCH);
        for (int q = 0; q < CHAINS; q++) {
            __m256 wv[NR_MAX];
            for (int c = 0; c < nr; c++) wv[c] = weight8(w, kind, c * k + j + 8 * q);
            for (int r = 0; r < mr; r++) {
                __m256 xv = _mm256_loadu_ps(x + r * k + j + 8 * q);
                for (int c = 0; c < nr; c++) acc[r][c][q] = _mm256_fmadd_ps(xv, wv[c], acc[r][c][q]);
            }
        }
    }
    for (; j + 8 <= k; j += 8) {
        __m256 wv[NR_MAX];
        for (int c = 0; c < nr; c++) wv[c] = weight8(w, kind, c * k + j);
        for (int r = 0; r < mr; r++) {
            __m256 xv = _mm256_loadu_ps(x + r * k + j);
            for (int c = 0; c < nr; c++) acc[r][c][0] = _mm256_fmadd_ps(xv, wv[c], acc[r][c][0]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nr; c++) {
            __m256 total = acc[r][c][0];
            for (int q = 1; q < CHAINS; q++) total = _mm256_add_ps(total, acc[r][c][q]);
            sums[r][c] = reduce8(total);
        }
#else
    (void)ahead;
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nr; c++) sums[r][c] = 0.0f;
#endif
    for (; j < k; j++)
        for (int r = 0; r < mr; r++)
            for (int c = 0; c < nr; c++) sums[r][c] = fmaf(x[r * k + j], weight_at(w, kind, c * k + j), sums[r][c]);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
/* sums[r] = x[r] . w as `tile` computes them (one order whatever mr is), for bfloat16 x and w as they lie in
   memory: vdpbf16ps multiplies 32 pairs of bfloat16 (exactly, in float32) and adds them into 16 float32 sums,
   one instruction where widening 32 weights and multiplying them in float32 takes six, and x needs no float32
   copy. */
INLINE void tile_pairs(const uint16_t *x, int64_t k, const uint16_t *w, const int mr, const int nr, const void *ahead,
                       float sums[MR_MAX][NR_MAX]) {
    __m512 acc[MR_MAX][NR_MAX][CHAINS];
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nr; c++)
            for (int q = 0; q < CHAINS; q++) acc[r][c][q] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 * CHAINS <= k; j += 32 * CHAINS) {
        for (int q = 0; ahead && q < CHAINS; q++)  /* 32 bfloat16 are one cache line */
            for (int c = 0; c < nr; c++) _mm_prefetch((const char *)ahead + (c * k + j + 32 * q) * 2, WEIGHT_PREFETCH);
        for (int q = 0; q < CHAINS; q++) {
            __m512bh wv[NR_MAX];
            for (int c = 0; c < nr; c++) wv[c] = (__m512bh)_mm512_loadu_si512(w + c * k + j + 32 * q);
            for (int r = 0; r < mr; r++) {
                __m512bh xv = (__m512bh)_mm512_loadu_si512(x + r * k + j + 32 * q);
                for (int c = 0; c < nr; c++) acc[r][c][q] = _mm512_dpbf16_ps(acc[r][c][q], xv, wv[c]);
            }
        }
    }
    for (; j < k; j += 32) {  /* what is left, masked (zeros add nothing), on the first chain */
        __mmask32 lanes = k - j >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (k - j)) - 1);
        __m512bh wv[NR_MAX];
        for (int c = 0; c < nr; c++) wv[c] = (__m512bh)_mm512_maskz_loadu_epi16(lanes, w + c * k + j);
        for (int r = 0; r < mr; r++) {
            __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(lanes, x + r * k + j);
            for (int c = 0; c < nr; c++) acc[r][c][0] = _mm512_dpbf16_ps(acc[r][c][0], xv, wv[c]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int c = 0; c < nr; c++) {
            __m512 total = acc[r][c][0];
            for (int q = 1; q < CHAINS; q++) total = _mm512_add_ps(total, acc[r][c][q]);
            sums[r][c] = _mm512_reduce_add_ps(total);
        }
}
#define HAS_PAIRS 1
#else
#define HAS_PAIRS 0
INLINE void tile_pairs(const uint16_t *x, int64_t k, const uint16_t *w, const int mr, const int nr, const void *ahead,
                       float sums[MR_MAX][NR_MAX]) {
    (void)x; (void)k; (void)w; (void)mr; (void)nr; (void)ahead; (void)sums;  /* never called: see gemv */
}
#endif

typedef struct {
    const void *x; int64_t m, k; const void *w; int kind; int64_t n;
    const void *scales, *bias; void *out; int bf16_vectors;
} Product;

/* Input row r: float32, or for BF16_PAIRS the bfloat16 rows as given. */
INLINE const void *row(const Product *p, int kind, int64_t r) {
    return (const char *)p->x + (size_t)(r * p->k) * (kind == BF16_PAIRS ? 2 : 4);
}

/* Rows r .. r + mr - 1 times weight rows i .. i + nr - 1 (at w), scaled, biased and stored. */
INLINE void product_tile(const Product *p, const int kind, int64_t r, int64_t i, const void *w, const int mr,
                         const int nr, const void *ahead) {
    float sums[MR_MAX][NR_MAX];
    if (kind == BF16_PAIRS) tile_pairs((const uint16_t *)row(p, kind, r), p->k, (const uint16_t *)w, mr, nr, ahead, sums);
    else tile((const float *)row(p, kind, r), p->k, w, kind, mr, nr, ahead, sums);
    for (int t = 0; t < mr; t++)
        for (int c = 0; c < nr; c++) {
            /* An explicit fmaf, as in the tile: the same bits at every call site. */
            float v = sums[t][c];
            float scale = p->scales ? vector_at(p->scales, p->bf16_vectors, i + c) : 1.0f;
            if (p->bias) v = fmaf(v, scale, vector_at(p->bias, p->bf16_vectors, i + c));
            else if (p->scales) v *= scale;
            int64_t at = (r + t) * p->n + i + c;
            if (p->bf16_vectors) ((uint16_t *)p->out)[at] = float_to_bf16(v);
            else ((float *)p->out)[at] = v;
        }
}

/* Output channels [begin, end) for one or two input rows: the weight is read one row after another, a single
   stream front to back, which is what the hardware prefetcher follows best (reading four rows side by side,
   as a first version did, halved the rate), with the rows AHEAD_BYTES on asked for in software as well. */
INLINE void channels_few(const Product *p, const int kind, int64_t begin, int64_t end) {
    const size_t row_bytes = (size_t)p->k * element_size(kind);
    const int64_t ahead_rows = row_bytes >= AHEAD_BYTES ? 1 : (int64_t)(AHEAD_BYTES / row_bytes);
    for (int64_t i = begin; i < end; i++) {
        const void *w = (const char *)p->w + (size_t)i * row_bytes;
        const void *ahead = i + ahead_rows < end ? (const char *)w + ahead_rows * row_bytes : NULL;
        if (p->m == 1) product_tile(p, kind, 0, i, w, 1, 1, ahead);
        else product_tile(p, kind, 0, i, w, 2, 1, ahead);
    }
}

/* Output channels [begin, end) for three rows or more, where the arithmetic and the loads from L1 count too:
   each group of NR_MAX weight rows is multiplied into the input rows MR_MAX at a time while it sits in the L1
   cache, and the first pass over a group prefetches the next one. With AVX2 a float32 group is prefetched by
   every pass: the lines asked for again are already on their way or in L1, and the memory is kept busy for the
   whole group, not its first third. On the 2-core Zen 3, eight rows through all 49 float32 products of a
   GPT-2 124M step took 25.0-27.0 ms against 29.4-31.8 (interleaved); int8 (four times the arithmetic per
   byte) was 10% slower that way and bfloat16 no faster, so they keep one prefetching pass. */
#if defined(AVX2_ONLY)
#define PREFETCH_EVERY_PASS(kind) ((kind) == F32)
#else
#define PREFETCH_EVERY_PASS(kind) 0
#endif
INLINE void channels_many(const Product *p, const int kind, int64_t begin, int64_t end) {
    const size_t row_bytes = (size_t)p->k * element_size(kind);
    const int every_pass = PREFETCH_EVERY_PASS(kind);
    int64_t i = begin;
    for (; i + NR_MAX <= end; i += NR_MAX) {
        const char *w = (const char *)p->w + (size_t)i * row_bytes;
        const void *next = i + 2 * NR_MAX <= end ? w + NR_MAX * row_bytes : NULL;
        const void *ahead = next;
        int64_t r = 0;
        for (; r + MR_MAX <= p->m; r += MR_MAX, ahead = every_pass ? next : NULL) product_tile(p, kind, r, i, w, MR_MAX, NR_MAX, ahead);
        for (; r + 2 <= p->m; r += 2, ahead = every_pass ? next : NULL) product_tile(p, kind, r, i, w, 2, NR_MAX, ahead);
        if (r < p->m) product_tile(p, kind, r, i, w, 1, NR_MAX, ahead);
    }
    for (; i < end; i++) {
        const void *w = (const char *)p->w + (size_t)i * row_bytes;
        int64_t r = 0;
        for (; r + MR_MAX <= p->m; r += MR_MAX) product_tile(p, kind, r, i, w, MR_MAX, 1, NULL);
        for (; r + 2 <= p->m; r += 2) product_tile(p, kind, r, i, w, 2, 1, NULL);
        if (r < p->m) product_tile(p, kind, r, i, w, 1, 1, NULL);
    }
}

/* One function per weight type, so that the type is a constant inside the loops. */
#define CHANNELS(KIND) \
    static void channels_##KIND(const Product *p, int64_t begin, int64_t end) { \
        if (p->m <= 2) channels_few(p, KIND, begin, end); else channels_many(p, KIND, begin, end); \
    }
CHANNELS(INT8)
CHANNELS(BF16)
CHANNELS(F32)
CHANNELS(BF16_PAIRS)

static void channels(const Product *p, int64_t begin, int64_t end) {
    if (p->kind == INT8) channels_INT8(p, begin, end);
    else if (p->kind == BF16) channels_BF16(p, begin, end);
    else if (p->kind == BF16_PAIRS) channels_BF16_PAIRS(p, begin, end);
    else channels_F32(p, begin, end);
}

/* Thread t's share of the output channels, contiguous, so that each thread streams its own part of the
   weight; each channel's sum is the same whichever thread makes it. */
static void channels_share(void *arg, int t, int threads) {
    const Product *p = (const Product *)arg;
    channels(p, p->n * t / threads, p->n * (t + 1) / threads);
}

/* Whether bfloat16 weights times bfloat16 rows multiply bfloat16 pairs (BF16_PAIRS) on this build. */
int bf16_pairs(void) { return HAS_PAIRS; }

/* float32 lanes in this build's vectors: 16 (AVX-512), 8 (AVX2), 1 (plain C). */
int vector_lanes(void) {
#if defined(__AVX512F__)
    return 16;
#elif defined(AVX2_ONLY)
    return 8;
#else
    return 1;
#endif
}

/* out[m, n] = (scales ? scales[n] : 1) * sum_j x[m, j] * w[n, j] + (bias ? bias[n] : 0); x (m, k), w (n, k),
   out (m, n), all contiguous. threads > 1 splits the output channels into that many contiguous ranges
   (`channels_share`), one per thread. Returns 0, or -1
   where the float32 copy of a bfloat16 x could not be allocated. */
int gemv(int bf16_vectors, const void *x, int64_t m, int64_t k, int kind, const void *w, int64_t n,
         const void *scales, const void *bias, void *out, int threads) {
    const int pairs = HAS_PAIRS && kind == BF16 && bf16_vectors;
    if (pairs) kind = BF16_PAIRS;
    float *x32 = (float *)x;
    if (bf16_vectors && !pairs) {
        x32 = (float *)malloc((size_t)(m * k) * sizeof(float));
        if (!x32) return -1;
        for (int64_t j = 0; j < m * k; j++) x32[j] = bf16_to_float(((const uint16_t *)x)[j]);
    }
    Product p = {pairs ? x : (const void *)x32, m, k, w, kind, n, scales, bias, out, bf16_vectors};
    if (threads > n) threads = (int)n;
    parallel(channels_share, &p, threads);
    if (bf16_vectors && !pairs) free(x32);
    return 0;
}
"""

PARALLEL_BYTES = 1 << 18  # a 256 KiB weight streams in ~15 us: a parallel region's cost is then small
MAX_ROWS = 32  # a prompt of up to this many rows too: 32 rows took 166 ms here against 289 ms dequantizing (gpt2 blocks)


# Which cache the weight rows ahead are prefetched into. On an Intel Xeon (Sapphire Rapids VM), into L2
# (`_MM_HINT_T1`) rather than L1: all 49 one-row products of a GPT-2 124M step in bfloat16 took 8.9-9.7 ms
# against 9.8-12.5 ms (interleaved, 25-31 rounds each; the wider gap while the VM's memory was slow), int8
# 4.80 against 4.98, float32 17.9 against 18.1 and 8 rows 21.4 against 22.3: an L1 prefetch holds one of
# the core's few L1 miss buffers until its line arrives, an L2 one lets more lines be on their way. On the
# AMD EPYC the kernel was tuned on, an L2 prefetch was no faster, so L1 stays there.
def weight_prefetch_hint(vendor: str) -> str:
    return "_MM_HINT_T1" if vendor == "GenuineIntel" else "_MM_HINT_T0"


def _build() -> ctypes.CDLL | None:
    """The compiled kernel (see `gptkit.kernels.native`), or None where it cannot be built."""
    lib = native.build("gemv", f"#define WEIGHT_PREFETCH {weight_prefetch_hint(native.cpu_vendor())}\n" + SOURCE)
    if lib is None:
        return None
    lib.gemv.restype = ctypes.c_int
    lib.gemv.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
    ]
    lib.bf16_pairs.restype = ctypes.c_int
    lib.bf16_pairs.argtypes = []
    lib.vector_lanes.restype = ctypes.c_int
    lib.vector_lanes.argtypes = []
    thread_pool.connect(lib)
    return lib


_LIBRARY = native.Library(_build)


def available() -> bool:
    return _LIBRARY.get() is not None


def bf16_pairs() -> bool:
    """Whether the kernel multiplies bfloat16 weights into bfloat16 rows as bfloat16 pairs (AVX-512 BF16)."""
    lib = _LIBRARY.get()
    return lib is not None and bool(lib.bf16_pairs())


def vector_lanes() -> int:
    """float32 lanes in the built kernel's vectors: 16 with AVX-512, 8 with AVX2, 1 in plain C (0: not built)."""
    lib = _LIBRARY.get()
    return 0 if lib is None else int(lib.vector_lanes())


def serves(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, max_rows: int) -> bool:
    """Whether this kernel can take `x @ weight.T + bias`: 1 to `max_rows` rows of float32 or bfloat16 on
    the CPU, a contiguous weight, and nothing to differentiate or trace (a ctypes call is neither
    differentiable nor traceable: under autograd or torch.compile, PyTorch's ops serve)."""
    return (
        not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and 0 < x.numel() <= max_rows * x.shape[-1]
        and not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)))
        and weight.is_contiguous()
        and available()
    )


def _threads(weight: torch.Tensor) -> int:
    # A parallel region costs a few microseconds: worth it only for a weight that takes longer to stream.
    return torch.get_num_threads() if weight.numel() * weight.element_size() >= PARALLEL_BYTES else 1


def _vector(v: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if v is None else v.to(dtype).contiguous()


WEIGHT_KINDS = {torch.int8: 0, torch.bfloat16: 1, torch.float32: 2}  # the C source's enum


def _gemv(rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    lib = _LIBRARY.get()
    if lib is None:
        raise RuntimeError("gptkit's gemv kernel could not be built on this machine (see gemv.available())")
    k = rows.shape[1]
    n = weight.shape[0]
    if weight.shape[1] != k or not weight.is_contiguous() or weight.dtype not in WEIGHT_KINDS:
        raise ValueError(f"expected a contiguous int8, bfloat16 or float32 weight (n, {k}), got {weight.dtype} {tuple(weight.shape)}")
    if rows.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"expected float32 or bfloat16 rows, got {rows.dtype}")
    scales, bias = _vector(scales, rows.dtype), _vector(bias, rows.dtype)
    return _run(
        lib.gemv, rows.contiguous(), rows.dtype, WEIGHT_KINDS[weight.dtype], weight.data_ptr(), n,
        None if scales is None else scales.data_ptr(), None if bias is None else bias.data_ptr(), _threads(weight),
    )


def _run(
    call: Callable[..., int], rows: torch.Tensor, dtype: torch.dtype, kind: int, weight: int, n: int,
    scales: int | None, bias: int | None, threads: int,
) -> torch.Tensor:
    """The C call: contiguous `rows` (m, k) in `dtype` times the weight at those addresses, into a new (m, n)."""
    m, k = rows.shape
    out = torch.empty(m, n, dtype=dtype)
    if call(dtype == torch.bfloat16, rows.data_ptr(), m, k, kind, weight, n, scales, bias, out.data_ptr(), threads) != 0:
        raise MemoryError(f"gemv: no memory for a float32 copy of {m} x {k} rows")
    return out


def int8_gemv(
    rows: torch.Tensor, int8_weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`rows @ (int8_weight * scales[:, None]).T + bias` in rows' dtype; rows (m, k), weight (n, k) contiguous int8."""
    if int8_weight.dtype != torch.int8:
        raise ValueError(f"expected an int8 weight, got {int8_weight.dtype}")
    return _gemv(rows, int8_weight, scales, bias)


def float_gemv(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`rows @ weight.T + bias` summed in float32, in rows' dtype; rows (m, k), weight (n, k) contiguous
    bfloat16 or float32."""
    if weight.dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"expected a bfloat16 or float32 weight, got {weight.dtype}")
    return _gemv(rows, weight, None, bias)


class BoundProduct:
    """`int8_gemv` or `float_gemv` for one weight, with its pointers, sizes and vectors gathered once.

    A decode step makes 49 products. The checks and conversions each of those calls
    makes before reaching C cost about 12 µs a call here, the C call itself 3: half a
    millisecond a token, a tenth of an int8 GPT-2 124M step. The flat decode step binds
    each linear once per generation; the sums are those of the unbound call, bit for
    bit (the same C function, the same arguments).
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        lib = _LIBRARY.get()
        if lib is None or weight.dtype not in WEIGHT_KINDS or not weight.is_contiguous() or weight.device.type != "cpu":
            raise ValueError("BoundProduct needs the built kernel and a contiguous CPU int8, bfloat16 or float32 weight")
        if (scales is None) == (weight.dtype == torch.int8):
            raise ValueError("an int8 weight takes scales, and only an int8 weight")
        self.dtype = dtype
        self.n, self.k = weight.shape
        self._held = (weight, _vector(scales, dtype), _vector(bias, dtype))  # the pointers below point into these
        weight_at, scales_at, bias_at = (None if t is None else t.data_ptr() for t in self._held)
        self._arguments = (self.dtype, WEIGHT_KINDS[weight.dtype], weight_at, self.n, scales_at, bias_at, _threads(weight))
        self._call = lib.gemv

    @property
    def arguments(self) -> tuple:
        """The C call's arguments after the rows: dtype, weight kind, weight, n, scales, bias (addresses), threads."""
        return self._arguments

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (m, k), contiguous and in the bound dtype, times the weight: (m, n)."""
        return _run(self._call, rows, *self._arguments)
