"""`int8_gemv(x, int8_weight, scales)`: a few rows times an int8 weight, streamed once, in float32.

A decode step multiplies one row per sequence by every weight matrix, so its speed
is the speed at which the weights come in from memory. PyTorch's own kernel for
this layout, `aten._weight_int8pack_mm`, walks the weight in blocks that defeat the
hardware prefetcher: on this project's Sapphire Rapids machine it read GPT-2 124M's
int8 block weights (85 MB) at about 4 GB/s in one thread, slower than float32's
four times as many bytes through MKL (13 GB/s), and in float32 it has no vectorised
path at all. This kernel reads each weight row once, front to back, converts its
int8 values to float32 in registers and multiplies them into every input row, so
that one pass over memory serves the whole batch; the per-channel scale (and the
bias) are applied to each finished sum. It computes in float32 throughout, whatever
the activations' dtype: more exact than the bfloat16 kernel, not less.

The C source below is compiled once per machine with the system's C compiler
(`-O3 -march=native`, AVX-512 where the CPU has it) into gptkit's cache folder and
loaded with ctypes; no PyTorch headers, so it builds in about a second. Where there
is no compiler, or the build fails, `available()` is False and callers use aten's
kernel instead. Single-threaded on purpose: one thread already streams close to
what a core can read, and on a shared machine a parallel region waits for its
slowest thread at every matrix.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))

/* sums[r][c] = x[r] . w[c] for MR input rows and NR weight rows: with MR and NR constants at each
   call site the MR x NR accumulators stay in registers, and NR independent chains hide the FMA's
   latency while NR weight rows stream in side by side. */
INLINE void tile(const float *x, int64_t k, const int8_t *w, const int MR, const int NR, float sums[2][4]) {
    int64_t j = 0;
#if defined(__AVX512F__)
    __m512 acc[2][4];
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) acc[r][c] = _mm512_setzero_ps();
    for (; j + 16 <= k; j += 16) {
        __m512 wv[4];
        for (int c = 0; c < NR; c++)
            wv[c] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + c * k + j))));
        for (int r = 0; r < MR; r++) {
            __m512 xv = _mm512_loadu_ps(x + r * k + j);
            for (int c = 0; c < NR; c++) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) sums[r][c] = _mm512_reduce_add_ps(acc[r][c]);
#else
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) sums[r][c] = 0.0f;
#endif
    for (; j < k; j++)
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++) sums[r][c] += x[r * k + j] * (float)w[c * k + j];
}

INLINE void store(float sums[2][4], const int MR, const int NR, const float *scales, const float *bias,
                  int64_t n, int64_t i, float *out) {
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++) out[r * n + i + c] = sums[r][c] * scales[i + c] + (bias ? bias[i + c] : 0.0f);
}

/* out[m, n] = scales[n] * sum_j x[m, j] * w[n, j] + (bias ? bias[n] : 0); x (m, k), w (n, k), out (m, n), all contiguous.
   The weight rows are the outer loop: each group of four is read from memory once and, while it sits in
   the L1 cache, multiplied into every input row, two at a time. */
void int8_gemv(const float *x, int64_t m, int64_t k, const int8_t *w, int64_t n,
               const float *scales, const float *bias, float *out) {
    float sums[2][4];
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        int64_t r = 0;
        for (; r + 2 <= m; r += 2) {
            tile(x + r * k, k, w + i * k, 2, 4, sums);
            store(sums, 2, 4, scales, bias, n, i, out + r * n);
        }
        if (r < m) {
            tile(x + r * k, k, w + i * k, 1, 4, sums);
            store(sums, 1, 4, scales, bias, n, i, out + r * n);
        }
    }
    for (; i < n; i++)
        for (int64_t r = 0; r < m; r++) {
            tile(x + r * k, k, w + i * k, 1, 1, sums);
            store(sums, 1, 1, scales, bias, n, i, out + r * n);
        }
}
"""

MAX_ROWS = 32  # a prompt of up to this many rows too: 32 rows took 166 ms here against 289 ms dequantizing (gpt2 blocks)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptkit" / "kernels"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            return next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return ""


def _build() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use (keyed by source, compiler and CPU), or None where it cannot be."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None or platform.system() != "Linux":
        return None
    flags = ["-O3", "-march=native", "-shared", "-fPIC"]
    key = hashlib.sha256("\n".join([SOURCE, compiler, *flags, platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    library = _cache_dir() / f"int8_gemv-{key}.so"
    if not library.exists():
        try:
            library.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
                source = Path(tmp) / "int8_gemv.c"
                source.write_text(SOURCE)
                built = Path(tmp) / library.name
                subprocess.run([compiler, *flags, str(source), "-o", str(built)], check=True, capture_output=True, timeout=120)
                os.replace(built, library)  # atomic: another process may be building the same file
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        lib = ctypes.CDLL(str(library))
    except OSError:
        return None
    lib.int8_gemv.restype = None
    lib.int8_gemv.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ]
    return lib


_LIBRARY: ctypes.CDLL | None | bool = False  # False: not tried yet


def _library() -> ctypes.CDLL | None:
    global _LIBRARY
    if _LIBRARY is False:
        _LIBRARY = _build()
    return _LIBRARY  # type: ignore[return-value]


def available() -> bool:
    return _library() is not None


def int8_gemv(
    rows: torch.Tensor, int8_weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`rows @ (int8_weight * scales[:, None]).T + bias` in float32; rows (m, k), weight (n, k) contiguous int8."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the int8 kernel could not be built on this machine (see int8_gemv.available())")
    m, k = rows.shape
    n = int8_weight.shape[0]
    if int8_weight.shape[1] != k or int8_weight.dtype != torch.int8 or not int8_weight.is_contiguous():
        raise ValueError(f"expected a contiguous int8 weight (n, {k}), got {int8_weight.dtype} {tuple(int8_weight.shape)}")
    x = rows.to(torch.float32).contiguous()
    scales32 = scales.to(torch.float32).contiguous()
    bias32 = bias.to(torch.float32).contiguous() if bias is not None else None
    out = torch.empty(m, n, dtype=torch.float32)
    lib.int8_gemv(
        x.data_ptr(), m, k, int8_weight.data_ptr(), n, scales32.data_ptr(),
        bias32.data_ptr() if bias32 is not None else None, out.data_ptr(),
    )
    return out
